"""The test suite and the benchmarks (tests/bench), which share its helpers (tests/support)."""

import os
import sys

# grpc's fork handlers off, before grpc is imported: this process starts servers (pg_ctl, redis-server, the
# services) from worker threads while its own gRPC calls run. With the handlers on (grpc core's default in
# grpcio 1.85), a fork from such a thread once waited inside grpc's pre-fork handler for grpc's threads to leave
# their work, holding the GIL one of them needed: the suite hung, and pytest-timeout could not fire (it needs the
# GIL too). Every child here execs at once, which needs no fork support. The services inherit the setting; they
# fork nothing once gRPC is up (the supervisor that starts and restarts their workers, svc_common.workers, runs
# no gRPC).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
assert "grpc" not in sys.modules, "grpc was imported before tests/: its fork handlers are already set up"
