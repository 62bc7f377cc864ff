"""The steady scenario of this project, hop by hop: each hop's p50 and p99 from the services' own histograms
(booking_event_hop_seconds, notify_event_hop_seconds: scraped before and after each measured round, the
quantiles estimated from the bucket counts by linear interpolation, as Prometheus' histogram_quantile does),
and py-spy's hottest functions of every process on the path (booking supervisor and workers, the relay among
them, notify supervisor and workers), taken in a round of their own: py-spy slows what it samples, so that
round's figures are not counted."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from devtools.servers import children
from tests.support.helpers import scrape

HOP_METRICS = {"booking_event_hop_seconds": "booking", "notify_event_hop_seconds": "notify"}
# The hops in the order a change takes them (`notify ... (postgres)` only while notify follows the outbox).
HOP_ORDER = ("booking placed", "booking published", "notify read", "notify first_write", "notify last_write")

Buckets = dict[str, dict[float, float]]  # a hop ("notify read (redis)") -> bucket bound -> cumulative count


def hop_buckets(ports: Iterable[int]) -> Buckets:
    """The hop histograms' cumulative bucket counts, summed over the services at `ports`."""
    counts: Buckets = {}
    for port in ports:
        for key, value in scrape(port).items():
            name, _, labels = key.partition("{")
            service = HOP_METRICS.get(name.removesuffix("_bucket")) if name.endswith("_bucket") else None
            if service is None:
                continue
            fields = dict(part.split("=", 1) for part in labels.rstrip("}").split(","))
            hop = f"{service} {fields['hop']}" + (f" ({fields['source']})" if "source" in fields else "")
            bound = float(fields["le"])
            counts.setdefault(hop, {})[bound] = counts.get(hop, {}).get(bound, 0.0) + value
    return counts


def quantile(q: float, buckets: dict[float, float]) -> float:
    """The q-quantile of a non-empty histogram's cumulative bucket counts, interpolated within its bucket."""
    rank, lower, below = q * buckets[math.inf], 0.0, 0.0
    for bound in sorted(buckets):
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # past the last finite bound: all that can be said
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


class Hops:
    """The hop histograms of this project's services, added up over the measured rounds only."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.counted: Buckets = {}
        self._before: Buckets = {}

    def start(self) -> None:
        self._before = hop_buckets(self.ports)

    def stop(self) -> None:
        for hop, buckets in hop_buckets(self.ports).items():
            before = self._before.get(hop, {})
            mine = self.counted.setdefault(hop, {})
            for bound, count in buckets.items():
                mine[bound] = mine.get(bound, 0.0) + count - before.get(bound, 0.0)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Each hop's p50 and p99 (ms) and how many observations, in the order a change takes them."""

        def order(hop: str) -> tuple[int, str]:
            base = hop.split(" (")[0]
            return (HOP_ORDER.index(base) if base in HOP_ORDER else len(HOP_ORDER), hop)

        result = {}
        for hop in sorted(self.counted, key=order):
            buckets = self.counted[hop]
            if buckets.get(math.inf, 0.0) <= 0:
                continue
            result[hop] = {
                "p50_ms": round(quantile(0.5, buckets) * 1000, 2),
                "p99_ms": round(quantile(0.99, buckets) * 1000, 2),
                "count": int(buckets[math.inf]),
            }
        return result


def notify_p99_ms(summary: dict[str, dict[str, Any]]) -> float:
    """Notify's own part of a change's latency from a round's hops, p99 (ms): the read from the stream plus the
    fan-out to the last subscriber's write, each hop's p99 added (an upper bound of the sum's p99); inf if
    notify read nothing from Redis."""
    read, written = summary.get("notify read (redis)"), summary.get("notify last_write (redis)")
    if read is None or written is None:
        return math.inf
    return round(float(read["p99_ms"]) + float(written["p99_ms"]), 2)


def process_names(service: str, supervisor: int) -> dict[int, str]:
    """The pids of a service's processes (its supervisor and each worker), named."""
    workers = children(supervisor)
    names = {supervisor: f"{service} supervisor" if workers else service}
    names |= {pid: f"{service} worker {n}" for n, pid in enumerate(workers, 1)}
    return names


def hot_functions_by_process(out: Path, names: dict[int, str], top: int = 8) -> dict[str, list[str]]:
    """Each process's functions with the most samples on top of the stack (self time), from py-spy's collapsed
    stacks in `out` (one file per pid); a worker that relayed during the round is named so."""
    result = {}
    for pid, name in names.items():
        path = out / f"{pid}.txt"
        if not path.exists():
            continue
        own: dict[str, int] = {}
        total = 0
        relayed = False
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            total += int(count)
            own[frames[-1]] = own.get(frames[-1], 0) + int(count)
            relayed = relayed or "EventRelay._relay_all" in stack  # standbys run relay.py too (the lock)
        ranked = sorted(own.items(), key=lambda item: -item[1])[:top]
        label = f"{name} (pid {pid}{', the relay' if relayed else ''}; {total} samples)"
        result[label] = [f"{100 * n / max(total, 1):5.1f}% {frame}" for frame, n in ranked]
    return result


def steady_lines(systems: dict[str, Any]) -> list[str]:
    """The steady scenario of every system, one line each, from the same run."""
    lines = ["steady scenario (ms; CPU in us per delivery):"]
    for name, figures in systems.items():
        s = figures["steady"]
        lines.append(
            f"  {name:<36} p50 {s['p50_ms']:>7}  p99 {s['p99_ms']:>7}  max {s['max_ms']:>7}  "
            f"CPU {s.get('cpu_us_per_delivery', '-'):>6}  write p50 {s['write_p50_ms']:>6}  lost {s['lost']}"
        )
    return lines


def breakdown_lines(name: str, hops: dict[str, dict[str, Any]], profiles: dict[str, list[str]]) -> list[str]:
    lines = [f"{name}, steady scenario, hop by hop (each from the one before; ms):"]
    lines += [f"  {hop:<32} p50 {h['p50_ms']:>8}  p99 {h['p99_ms']:>8}  ({h['count']})" for hop, h in hops.items()]
    for process, functions in profiles.items():
        lines.append(f"py-spy, {process}:")
        lines += [f"  {line}" for line in functions]
    return lines
