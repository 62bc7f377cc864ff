"""What both services share: errors, token verification, settings, the event stream's and the outbox's shapes,
and the gRPC server scaffolding. The generated code is the client distribution's (`client/booking_api/`, built
from `protos/` by `make gen`); the development tools (`devtools/`) stay outside the services' wheel.
"""
