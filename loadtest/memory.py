"""Server RSS per subscribed track, for several source trees in the same run.

`python -m loadtest.memory --tree BASE --tree .` runs `keyroom loadtest --scenario 1x50-video`
at each subscriber count with each tree (PYTHONPATH pointing at it, so the spawned server and
the load generator import that tree's code), alternating trees round by round so that a change
in the machine's load hits both alike. Per tree: the server's RSS max at each count and the slope
between the smallest and the largest count, i.e. MiB per added subscriber of the one video
track (its participant, peer connection, down-track and packet cache). The join phase plus
`--duration` seconds fill each down-track's 512-packet NACK cache (~3 s at 1.5 Mbit/s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def rss_max(tree: Path, subscribers: int, duration: float) -> tuple[float, dict[str, object]]:
    """One load test with `tree`'s code: (server RSS max MiB, the tracks section)."""
    command = [
        sys.executable, "-m", "sfu", "loadtest", "--scenario", "1x50-video", "--json",
        "--quiet", "--subscribers", str(subscribers), "--duration", str(duration),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(tree))
    # `python -m` puts the working directory first on sys.path: run inside the tree.
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, check=False, timeout=900)
    if done.returncode not in (0, 1):  # 1: the run's own pass/fail verdict, still a report
        raise RuntimeError(f"loadtest with {tree} failed: {done.stderr.decode()[-2000:]}")
    report = json.loads(done.stdout)
    return float(report["server"]["rss_mib_max"]), report["tracks"]


def slope(rss: dict[int, list[float]]) -> float:
    """MiB per subscriber between the smallest and the largest count (medians of the rounds)."""
    low, high = min(rss), max(rss)
    return (median(rss[high]) - median(rss[low])) / (high - low)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.memory", description=__doc__)
    p.add_argument("--tree", action="append", type=Path, help="source tree (repeatable)")
    p.add_argument("--subscribers", type=int, action="append", help="default 10 and 40")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    p.add_argument("--rounds", type=int, default=1, help="runs per tree and count (default 1)")
    args = p.parse_args(argv)
    trees = [t.resolve() for t in args.tree or [Path(".")]]
    counts = sorted(set(args.subscribers or [10, 40]))
    if len(counts) < 2:
        p.error("give at least two subscriber counts")
    rss: dict[Path, dict[int, list[float]]] = {t: {n: [] for n in counts} for t in trees}
    for _ in range(args.rounds):
        for n in counts:
            for tree in trees:
                mib, tracks = rss_max(tree, n, args.duration)
                rss[tree][n].append(mib)
                print(f"{tree} S={n}: RSS max {mib} MiB, tracks {tracks}", file=sys.stderr)
    result = {
        "load_average": os.getloadavg(),
        "trees": {
            str(t): {
                "rss_mib_max": {str(n): v for n, v in rss[t].items()},
                "mib_per_subscribed_track": round(slope(rss[t]), 3),
            }
            for t in trees
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
