"""What both services share: errors, token verification, settings helpers and gRPC server scaffolding.

`svc_common.dev` holds development-only helpers (local servers, `make run`, token minting) that the services never
import. The generated stubs live in `protos/booking/` and `protos/notify/` (build output of `make gen`).
"""
