"""The kill ratio per module of the last `mutmut run`, and its survivors: `python -m tests.mutation.report`."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
# mutmut names a mutant <module>.x_<function>__mutmut_<n> or <module>.xǁ<Class>ǁ<method>__mutmut_<n>.
LINE = re.compile(r"^\s*(?P<module>[\w.]+?)\.x[_ǁ](?P<where>\S+)__mutmut_(?P<n>\d+): (?P<status>[\w ]+?)\s*$")


def main() -> int:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "mutmut"), "results", "--all", "true"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    )
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    survivors = []
    for line in done.stdout.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        counts = totals[match["module"]]
        counts[1] += 1
        if match["status"] in ("killed", "timeout"):  # a mutant that hangs the tests is caught (pytest-timeout)
            counts[0] += 1
        else:
            survivors.append(f"{match['module']}: {match['where'].replace('ǁ', '.')} #{match['n']} ({match['status']})")
    print(f"{'module':40} {'killed':>7} {'total':>6} {'ratio':>6}")
    for module, (killed, total) in sorted(totals.items()):
        print(f"{module:40} {killed:7} {total:6} {100 * killed / total:5.0f}%")
    killed, total = sum(c[0] for c in totals.values()), sum(c[1] for c in totals.values())
    print(f"{'all':40} {killed:7} {total:6} {100 * killed / max(total, 1):5.0f}%")
    if survivors:
        print("survivors (`mutmut show <name>` shows one):")
        print("\n".join(f"  {s}" for s in survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
