"""Why each Chromium freeze of a lossbench run happened: `python -m loadtest.freezetimeline DIR`.

`python -m loadtest.lossbench --trace DIR ...` keeps, in DIR, each keyroom server's output with
its repair trace on (`server-LABEL.log`, and `server-LABEL-simulcast.log` for the simulcast
conditions: the `keyroom.repair` logger of sfu/retransmit.py, one line per subscriber NACK
answered with each packet's outcome, per uplink gap, repair and NACK to the publisher, per
subscriber PLI; `sfu.congestion` allocations) and every subscriber's
inbound video stats every 100 ms (`samples.jsonl`, wall clock). Both run on one machine, so one
clock orders them. A freeze is what Chromium counts (`freezeCount` going up: a frame came more
than max(3 x the mean frame interval, mean + 150 ms) after the previous one); this lists, for
each, the server's events for that subscriber's stream and the publisher's uplink in the
stretch without frames, and a cause:

- `downlink repair`: a packet lost on this subscriber's downlink, resent once: the freeze is
  the repair's round trip; `downlink resent again`: resent more than once (the resend was lost,
  or the subscriber's repeat crossed it); `repeat refused`: a repeated NACK refused (the
  per-packet interval or the budget) before one was answered; `refused, never resent`;
- `cache miss`: a NACKed packet the server did not have (lost on the uplink and not repaired
  yet, or too old);
- `uplink repair`: the publisher's uplink lost a packet in the stretch and its repair arrived
  late (or never: `gave up`);
- `keyframe`: the subscriber asked for one (PLI);
- `paused`: congestion control chose no layer for a video;
- `no loss seen`: nothing of the above: the frames came late or were decoded late (jitter
  buffer, a starved browser on a loaded machine).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The server entry point `lossbench` runs with the trace on (`python -c`).
TRACED_SERVER = (
    "import logging, sys\n"
    "for name in ('keyroom.repair', 'sfu.feedback', 'sfu.congestion'):\n"
    "    logging.getLogger(name).setLevel(logging.DEBUG)\n"
    "from sfu.cli import main\n"
    "sys.exit(main())\n"
)

# Events this long before a freeze's first missing frame count as its cause.
LEAD = 0.3
# The main cause of a freeze with several: the first of these it has.
PRIORITY = (
    "keyframe", "paused", "refused, never resent", "repeat refused", "uplink repair",
    "cache miss", "downlink resent again", "downlink repair", "no loss seen", "(no trace)",
)  # fmt: skip

_ASCTIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) DEBUG (\S+): (.*)$")
_WALL = re.compile(r"wall=([\d.]+)")


def write_samples(path: str, samples: list[dict[str, Any]]) -> None:
    with open(path, "w") as out:
        for sample in samples:
            out.write(json.dumps(sample) + "\n")


# The suffix of the log of a tree's server for lossbench's simulcast conditions.
SIMULCAST_LOG = "-simulcast"


@dataclass
class Event:
    wall: float
    kind: str  # nack, uplink, upnack, subpli, pli, alloc
    text: str
    ssrc: int | None = None


def parse_log(path: Path) -> list[Event]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        m = _ASCTIME.match(line)
        if m is None:
            continue
        stamp, millis, logger, message = m.groups()
        wall_m = _WALL.search(message)
        wall = (
            float(wall_m.group(1))
            if wall_m
            else time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
        )
        kind = message.split(" ", 1)[0]
        if logger == "sfu.congestion" and kind != "alloc":
            continue
        ssrc_m = re.search(r"ssrc=(\d+)", message)
        events.append(Event(wall, kind, message, int(ssrc_m.group(1)) if ssrc_m else None))
    return events


@dataclass
class Freeze:
    tree: str
    condition: str
    sub: str
    begin: float  # the last frame before it (wall)
    end: float
    duration: float
    causes: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def freezes(samples: list[dict[str, Any]]) -> list[Freeze]:
    """Each freezeCount increment: the freeze ended at that sample, lasted the increment of
    totalFreezesDuration, and began that long before."""
    found = []
    previous: dict[tuple[str, str, str], dict[str, Any]] = {}
    for s in samples:
        key = (s["tree"], s["condition"], s["sub"])
        before = previous.get(key)
        previous[key] = s
        if before is None or s["freezes"] <= before["freezes"]:
            continue
        duration = s["freeze_s"] - before["freeze_s"]
        end = s["wall"]
        found.append(Freeze(*key, begin=end - duration - 0.1, end=end, duration=duration))
    return found


def _nack_outcomes(text: str) -> list[tuple[int, str]]:
    """`SEQ:OUTCOME` pairs after the `tokens=N` field of a `nack` line."""
    outcomes = text.split(" tokens=", 1)[-1].split(" ")[1:]
    return [(int(seq), outcome) for seq, _, outcome in (o.partition(":") for o in outcomes)]


def _shown(e: Event, sub_ssrc: int | None) -> bool:
    if e.kind in ("nack", "subpli"):
        return e.ssrc == sub_ssrc
    return e.kind in ("uplink", "upnack", "pli") or (e.kind == "alloc" and ": -1" in e.text)


def _repair_causes(outcomes: dict[int, list[str]]) -> list[str]:
    causes = []
    for got in outcomes.values():
        if "miss" in got:
            causes.append("cache miss")
        elif "sent" not in got:
            causes.append("refused, never resent")
        elif "refused" in got:
            causes.append("repeat refused")
        elif got.count("sent") > 1:
            causes.append("downlink resent again")
        else:
            causes.append("downlink repair")
    return causes


def explain(freeze: Freeze, events: list[Event], sub_ssrc: int | None) -> None:
    """Fill in the freeze's events and causes."""
    start, stop = freeze.begin - LEAD, freeze.end
    outcomes: dict[int, list[str]] = defaultdict(list)
    kinds: Counter[str] = Counter()
    for e in events:
        if not start <= e.wall <= stop or not _shown(e, sub_ssrc):
            continue
        freeze.lines.append(f"  {e.wall - freeze.begin:+.3f} {e.text}")
        kinds[e.kind] += 1
        if e.kind == "nack":
            for seq, outcome in _nack_outcomes(e.text):
                outcomes[seq].append(outcome)
    causes = _repair_causes(outcomes)
    if kinds["subpli"]:
        causes.append("keyframe")
    if kinds["alloc"]:
        causes.append("paused")
    if kinds["upnack"]:
        causes.append("uplink repair")
    freeze.causes = sorted(set(causes)) or ["no loss seen"]


def analyse(directory: Path) -> list[Freeze]:
    samples = [json.loads(line) for line in (directory / "samples.jsonl").open()]
    logs: dict[str, list[Event]] = {}
    for path in directory.glob("server-*.log"):
        # server-LABEL-simulcast.log: the same tree's server for the simulcast conditions.
        label = path.stem.removeprefix("server-").removesuffix(SIMULCAST_LOG)
        logs[label] = sorted([*logs.get(label, []), *parse_log(path)], key=lambda e: e.wall)
    ssrcs = {(s["tree"], s["condition"], s["sub"]): s.get("ssrc") for s in samples}
    found = freezes(samples)
    for f in found:
        explain(f, logs.get(f.tree, []), ssrcs.get((f.tree, f.condition, f.sub)))
        if f.tree not in logs:
            f.causes = ["(no trace)"]
    return found


def primary(causes: list[str]) -> str:
    return min(causes, key=lambda c: PRIORITY.index(c) if c in PRIORITY else len(PRIORITY))


def report(found: list[Freeze], verbose: bool = True) -> str:
    out = []
    for f in found:
        at = time.strftime("%H:%M:%S", time.localtime(f.end))
        causes = ", ".join(f.causes)
        out.append(f"{f.tree} | {f.condition} | {f.sub} | {at} | {f.duration:.3f} s | {causes}")
        if verbose:
            out.extend(f.lines)
    counts: Counter[tuple[str, str, str]] = Counter()
    main: Counter[tuple[str, str, str]] = Counter()
    for f in found:
        for cause in f.causes:
            counts[(f.tree, f.condition, cause)] += 1
        main[(f.tree, f.condition, primary(f.causes))] += 1
    out.append("\nfreezes by cause (a freeze can have several):")
    out.extend(f"  {t} | {c} | {cause}: {n}" for (t, c, cause), n in sorted(counts.items()))
    out.append("\nfreezes by main cause (one each):")
    out.extend(f"  {t} | {c} | {cause}: {n}" for (t, c, cause), n in sorted(main.items()))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--brief", action="store_true", help="causes only, no event lines")
    args = parser.parse_args(argv)
    print(report(analyse(args.directory), verbose=not args.brief), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
