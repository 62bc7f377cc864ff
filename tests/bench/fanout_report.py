"""The fan-out benchmark's report: the targets each system meets, the table on the terminal, the latency CDF
chart, and the JSON written to .local/bench/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.bench.fanout_load import SICK_REDIS

OURS, THEIRS, FLOOR = "this project", "Socket.IO + Redis adapter", "bare grpc.aio fan-out"  # the systems' names
HELD_P99_MS = 100.0  # the capacity held: the most deliveries/s with p99 under this, nothing lost


def held(steps: list[dict[str, Any]], p99: str = "p99_ms") -> int:
    """The most deliveries/s of a step with the p99 named `p99` under HELD_P99_MS and nothing lost (0 if none)."""
    return max((s["deliveries_per_s"] for s in steps if s[p99] < HELD_P99_MS and s["lost"] == 0), default=0)


def per_core(step: dict[str, Any]) -> int:
    """Deliveries per CPU-second of the subscribers' instance (all its processes) in a step."""
    return round(1e6 / step["cpu_us_per_delivery"]) if step.get("cpu_us_per_delivery") else 0


def held_per_core(steps: list[dict[str, Any]], p99: str = "p99_ms") -> int:
    """Deliveries per CPU-second at the step `held` picks (0 if none)."""
    best = held(steps, p99)
    return next((per_core(s) for s in steps if s["deliveries_per_s"] == best), 0) if best else 0


DECODING = ", decoding client"  # the end of a Decoding system's name (tests/bench/fanout_systems.py)


def decoding_of(systems: dict[str, Any]) -> dict[str, Any] | None:
    """The steady figures with the decoding client (tests/bench/fanout_systems.py Decoding), by the system's own
    name, if the run had them."""
    found = {name.removesuffix(DECODING): f["steady"] for name, f in systems.items() if name.endswith(DECODING)}
    return found or None


def targets(
    ours: dict[str, Any],
    theirs: dict[str, Any],
    floor: dict[str, Any],
    memory: dict[str, Any],
    decoding: dict[str, Any] | None,
) -> dict[str, bool]:
    steady, reference = ours["steady"], theirs["steady"]
    met = {
        "steady p50 <= Socket.IO's": steady["p50_ms"] <= reference["p50_ms"],
        "steady p99 <= Socket.IO's": steady["p99_ms"] <= reference["p99_ms"],
        "steady CPU per delivery <= Socket.IO's": steady["cpu_us_per_delivery"] <= reference["cpu_us_per_delivery"],
        "steady: 0 lost": steady["lost"] == 0,
        "capacity >= Socket.IO's": held(ours["capacity"]) >= held(theirs["capacity"]),
        "steady CPU per delivery <= the bare floor's": steady["cpu_us_per_delivery"]
        <= floor["steady"]["cpu_us_per_delivery"],
        "memory per idle subscriber <= 1.1x the bare floor's": memory["ratio_service_to_baseline"] <= 1.1,
    }
    if "instance_killed" in ours:  # not with --no-faults
        met |= {
            "instance killed: 0 lost": ours["instance_killed"]["lost"] == 0,
            "Redis restarted: 0 lost": ours["redis_restarted"]["lost"] == 0,
            **{f"Redis {label}: 0 lost": ours[key]["lost"] == 0 for key, (label, _, _) in SICK_REDIS.items()},
            "Sentinel failover: 0 lost": ours["sentinel_failover"]["lost"] == 0,
        }
    if decoding is not None:  # issue 36: with subscribers that decode, p99 at most Socket.IO's, p50 at most twice
        mine, reference = decoding[OURS], decoding[THEIRS]
        met |= {
            "decoding client: steady p99 <= Socket.IO's": mine["p99_ms"] <= reference["p99_ms"],
            "decoding client: steady p50 <= 2x Socket.IO's": mine["p50_ms"] <= 2 * reference["p50_ms"],
            "decoding client: 0 lost": mine["lost"] == 0,
        }
    return met


def table(ours: dict[str, Any], theirs: dict[str, Any], floor: dict[str, Any], decoding: dict[str, Any] | None) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "-"

    rows: list[tuple[str, Any, Any, str]] = []
    for label, key in (
        ("p50 ms", "p50_ms"),
        ("p99 ms", "p99_ms"),
        ("max ms", "max_ms"),
        ("CPU us per delivery", "cpu_us_per_delivery"),
    ):
        a, b = ours["steady"][key], theirs["steady"][key]
        rows.append((f"steady: {label}", a, b, ratio(a, b)))
    rows.append(("steady: lost", ours["steady"]["lost"], theirs["steady"]["lost"], ""))
    bare = floor["steady"]
    rows.append(
        (
            "steady, bare grpc.aio fan-out: p50 | p99 | CPU us",
            f"{bare['p50_ms']} | {bare['p99_ms']} | {bare['cpu_us_per_delivery']}",
            "",
            "(the floor of any grpc.aio server)",
        )
    )
    if decoding is not None:
        mine, ref, bare_decoding = decoding[OURS], decoding[THEIRS], decoding[FLOOR]
        for label, key in (("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("CPU us per delivery", "cpu_us_per_delivery")):
            rows.append((f"steady, decoding client: {label}", mine[key], ref[key], ratio(mine[key], ref[key])))
        rows.append(("steady, decoding client: lost", mine["lost"], ref["lost"], ""))
        rows.append(
            (
                "steady, decoding client, bare floor: p50 | p99 | CPU us",
                f"{bare_decoding['p50_ms']} | {bare_decoding['p99_ms']} | {bare_decoding['cpu_us_per_delivery']}",
                "",
                "",
            )
        )
    for mine, ref, bare_step in zip(ours["capacity"], theirs["capacity"], floor["capacity"], strict=True):
        rows.append(
            (
                f"{mine['subscribers']} subscribers: deliveries/s | p99 ms (notify's) | lost | per CPU-second",
                f"{mine['deliveries_per_s']} | {mine['p99_ms']} ({mine.get('notify_p99_ms', '-')}) | {mine['lost']} | "
                f"{per_core(mine)}",
                f"{ref['deliveries_per_s']} | {ref['p99_ms']} | {ref['lost']} | {per_core(ref)}",
                f"floor: {bare_step['p99_ms']} ms, {per_core(bare_step)}/CPU-s",
            )
        )
    a, b = held(ours["capacity"]), held(theirs["capacity"])
    rows.append((f"capacity: deliveries/s held at p99 < {HELD_P99_MS:g} ms", a, b, ratio(a, b)))
    a, b = held_per_core(ours["capacity"]), held_per_core(floor["capacity"])
    rows.append(("capacity: deliveries per CPU-second there (floor's at its own)", a, f"floor: {b}", ratio(a, b)))
    if all("notify_p99_ms" in step for step in ours["capacity"]):
        a, b = held(ours["capacity"], "notify_p99_ms"), held(floor["capacity"])
        label = f"capacity, notify's own part p99 < {HELD_P99_MS:g} ms: deliveries/s held (floor's whole)"
        rows.append((label, a, f"floor: {b}", ratio(a, b)))
        a, b = held_per_core(ours["capacity"], "notify_p99_ms"), held_per_core(floor["capacity"])
        rows.append(("capacity, notify's own part: deliveries per CPU-second there", a, f"floor: {b}", ratio(a, b)))
    faults = [("instance SIGKILLed + restarted", "instance_killed"), ("Redis restarted", "redis_restarted")]
    faults += [(f"Redis {label} 10 s", key) for key, (label, _, _) in SICK_REDIS.items()]
    if "instance_killed" not in ours:  # --no-faults
        faults = []
    for label, key in faults:
        mine, ref = ours[key], theirs[key]
        rows.append(
            (
                f"{label}: lost of expected (writes failed)",
                f"{mine['lost']} of {mine['expected']} ({mine['writes_failed']})",
                f"{ref['lost']} of {ref['expected']} ({ref['lost'] / max(ref['expected'], 1):.1%})"
                f" ({ref['writes_failed']})",
                "",
            )
        )
        rows.append(
            (f"{label}: p99 | max ms", f"{mine['p99_ms']} | {mine['max_ms']}", f"{ref['p99_ms']} | {ref['max_ms']}", "")
        )
    if faults:
        mine = ours["sentinel_failover"]
        rows.append(
            (
                "Sentinel failover (primary SIGKILLed): lost of expected (writes failed)",
                f"{mine['lost']} of {mine['expected']} ({mine['writes_failed']})",
                "cannot follow one (one Redis URL)",
                "",
            )
        )
        rows.append(("Sentinel failover: p99 | max ms", f"{mine['p99_ms']} | {mine['max_ms']}", "", ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    head = ("", "this project", "Socket.IO + Redis adapter", "ratio")
    widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def chart(ours: dict[str, Any], theirs: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for name, steady in (("this project", ours["steady"]), ("Socket.IO + Redis adapter", theirs["steady"])):
        latencies = steady["_latencies"]
        if latencies:
            axes.plot(latencies, [(i + 1) / len(latencies) for i in range(len(latencies))], label=name)
    axes.set_xscale("log")
    axes.set_xlabel("latency from the write's send to receipt (ms, log scale)")
    axes.set_ylabel("fraction of deliveries")
    axes.set_title(f"steady: {ours['steady']['subscribers']} subscribers, {ours['steady']['changes']} changes")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def public(value: Any) -> Any:
    """`value` without the raw latencies (keys starting with _)."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [public(v) for v in value]
    return value
