"""What both services share: errors, token verification, settings helpers and gRPC server scaffolding.

The generated stubs live beside it, in `protos/booking/` and `protos/notify/` (build output of `make gen`).
"""
