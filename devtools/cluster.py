"""`make cluster`: the topology of docker-compose.yml from local binaries: two booking and two notify instances
behind nginx (deploy/nginx/nginx.conf, the same file compose uses) on 127.0.0.1:50050, with PostgreSQL and
Redis as `make run` finds or starts them. Ctrl-C stops everything.

`Balancer` runs nginx with that configuration in a directory of its own; the test suite uses it too
(tests/system/test_cluster.py), with instances it starts, stops and kills itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from devtools.run import (
    LOCAL,
    PROJECT,
    SPEAKER,
    Refused,
    check_free,
    claim_local,
    database,
    redis,
    say,
    wait_until_serving,
)
from devtools.servers import wait_for_port

NGINX_CONF = PROJECT / "deploy" / "nginx" / "nginx.conf"
LISTEN = ("127.0.0.1", 50050)
BOOKING_PORTS = (50061, 50062)
NOTIFY_PORTS = (50071, 50072)


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
    return found


class Balancer:
    """nginx with deploy/nginx/nginx.conf (linked, not copied) and its two includes written for these
    instances, in `directory`."""

    def __init__(self, directory: Path, listen: tuple[str, int], booking: Sequence[str], notify: Sequence[str]) -> None:
        self.directory = directory
        self.host, self.port = listen
        self.address = f"{self.host}:{self.port}"
        self.log_path = directory / "nginx.log"
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        link = directory / "nginx.conf"
        link.unlink(missing_ok=True)
        link.symlink_to(NGINX_CONF)
        (directory / "listen.conf").write_text(f"listen {self.address} http2;\n")
        (directory / "upstreams.conf").write_text(
            "".join(self._upstream(name, addresses) for name, addresses in (("booking", booking), ("notify", notify)))
        )

    @staticmethod
    def _upstream(name: str, addresses: Sequence[str]) -> str:
        servers = "".join(f"    server {a} max_fails=1 fail_timeout=1s;\n" for a in addresses)
        return f"upstream {name} {{\n{servers}    keepalive 64;\n}}\n"

    def start(self) -> None:
        command = [
            nginx_binary(),
            "-p", str(self.directory), "-c", str(self.directory / "nginx.conf"), "-e", "stderr",
            "-g", f"daemon off; pid {self.directory / 'nginx.pid'};",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(self.port, timeout=15)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"nginx did not start: {self.log_path.read_text()[-2000:]}") from None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # nginx: finish the calls in flight, then exit
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


def main() -> int:
    SPEAKER["name"] = "make cluster"
    env = {**os.environ, "WORKERS": os.environ.get("WORKERS", "1")}
    instances = [("booking_service", port) for port in BOOKING_PORTS] + [
        ("notify_service", port) for port in NOTIFY_PORTS
    ]
    try:
        with claim_local("make cluster"):
            check_free([f"{LISTEN[0]}:{LISTEN[1]}", *(f"127.0.0.1:{port}" for _, port in instances)])
            with database(env), redis(env):
                return serve(instances, env)
    except Refused as refused:
        say(f"refused: {refused}")
        return 1


def serve(instances: list[tuple[str, int]], env: dict[str, str]) -> int:
    processes = []
    for n, (module, port) in enumerate(instances):
        # Metrics of each instance on a port of its own (9101, 9102 booking; 9103, 9104 notify).
        metrics = f"127.0.0.1:{9101 + n}"
        say(f"starting {module} on 127.0.0.1:{port}, metrics on http://{metrics}/metrics")
        instance_env = {**env, "METRICS_LISTEN": metrics}
        command = [sys.executable, "-m", module, "--listen", f"127.0.0.1:{port}"]
        processes.append(subprocess.Popen(command, env=instance_env))
    addresses = {f"{module}-{port}": f"127.0.0.1:{port}" for module, port in instances}
    if not wait_until_serving(addresses, processes, env):
        say("an instance ended before every one was SERVING; stopping")
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        return max(process.wait() for process in processes) or 1
    balancer = Balancer(
        LOCAL / "cluster",
        LISTEN,
        [f"127.0.0.1:{p}" for p in BOOKING_PORTS],
        [f"127.0.0.1:{p}" for p in NOTIFY_PORTS],
    )
    balancer.start()
    say(f"every instance SERVING; nginx balances both services on {balancer.address} (log: {balancer.log_path})")
    say(f"BOOKING_TARGET={balancer.address} serves both to bookingctl (Ctrl-C stops all)")

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        while not stopping and all(p.poll() is None for p in processes) and balancer.process is not None:
            if balancer.process.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        balancer.stop()
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = [process.wait() for process in processes]
    return 0 if stopping else max(codes, default=1) or 1


if __name__ == "__main__":
    sys.exit(main())
