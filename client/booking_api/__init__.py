"""The contract in protos/ as typed Python: booking_api.booking.v1 and booking_api.notify.v1 (messages, grpc.aio
stubs and servicer bases, with .pyi stubs from mypy-protobuf). Build output of `make gen` (protos/generate.sh);
never edited, never committed."""
