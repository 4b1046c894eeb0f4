"""The forwarding processes' collector schedule (sfu/gcpolicy.py), applied in a fresh
interpreter (the test process's own collector is left alone): startup frozen, and in the server
full collections after departures, not during joins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sfu import gcpolicy

PROBE = """
import gc, json
from sfu import gcpolicy
before = gc.get_freeze_count()
gcpolicy.apply()
cycle = []
cycle.append(cycle)
del cycle
print(json.dumps({"thresholds": gc.get_threshold(), "frozen": gc.get_freeze_count() - before,
                  "collected": gc.collect()}))
"""


def test_apply_freezes_what_exists_and_keeps_collecting_new_cycles() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(result.stdout)
    assert seen["thresholds"][0] == 700  # CPython's: churned participants' cycles go soon
    assert seen["frozen"] > 1000  # the modules imported so far are out of the scans
    assert seen["collected"] >= 1  # a cycle made after it is still collected


def test_the_server_and_the_fanout_workers_apply_it() -> None:
    root = Path(__file__).resolve().parents[1]
    for module in ("signaling/server.py", "sfu/fanout/worker.py"):
        assert "gcpolicy.apply()" in (root / module).read_text(), module


def test_a_full_collection_is_owed_after_a_quarter_departed_or_a_long_growth() -> None:
    assert not gcpolicy.owed(0, 100, 1.0, 50_000, 1000)  # joins alone: everything is alive
    assert not gcpolicy.owed(24, 100, 1.0, 0, 1000)
    assert gcpolicy.owed(25, 100, 1.0, 0, 1000)
    assert gcpolicy.owed(1, 0, 0.0, 0, 1000)  # the last one left
    assert not gcpolicy.owed(0, 0, 0.0, 0, 1000)
    # Whatever else reaches the old generation: CPython's condition, at most once a minute.
    assert not gcpolicy.owed(0, 100, gcpolicy.MAX_INTERVAL - 1, 50_000, 1000)
    assert not gcpolicy.owed(0, 100, gcpolicy.MAX_INTERVAL, 250, 1000)
    assert gcpolicy.owed(0, 100, gcpolicy.MAX_INTERVAL, 251, 1000)


# A ramp of joins (tracked objects that all stay alive), first on CPython's schedule, then on
# the server's; then departures whose cycles only a full collection finds.
RAMP = """
import gc, json, weakref
from sfu import gcpolicy
gcpolicy.apply()
full = []
gc.callbacks.append(lambda phase, info: phase == "stop" and info["generation"] == 2
                    and full.append(info["collected"]))
def ramp(n):
    return [[[i] for i in range(1000)] for _ in range(n)]  # ~1,000 objects a participant
cpython = ramp(300)
cpython_full = len(full)
owner = gcpolicy.OldGeneration(lambda: present, now=0.0)
owner.start()
present = 300
server = ramp(300)
ramp_full = len(full) - cpython_full

class Participant:
    pass
def joined():
    p = Participant()
    p.me = p  # a cycle, as aiortc's objects make
    return p
gone = [joined() for _ in range(100)]
gc.collect(1)  # they have lived long: in the old generation now
ref = weakref.ref(gone[0])
del gone
owner.handle_timer(1.0)
before_departures = (len(full) - cpython_full, ref() is not None)
for _ in range(100):
    gcpolicy.departed()
owner.handle_timer(2.0)
after = len(full) - cpython_full
left = owner.promotions.old
more = ramp(300)  # a growth past a quarter: the fallback, once MAX_INTERVAL has passed
promoted = owner.promotions.promoted
owner.handle_timer(2.0 + gcpolicy.MAX_INTERVAL - 1)
early = owner.collections
owner.handle_timer(2.0 + gcpolicy.MAX_INTERVAL)
print(json.dumps({"cpython": cpython_full, "ramp": ramp_full, "before": before_departures,
                  "after": after, "freed": ref() is None, "threshold": gc.get_threshold()[2],
                  "left": left, "promoted": promoted, "fallback": [early, owner.collections]}))
owner.stop()
assert gc.get_threshold()[2] == 10
"""


def test_joins_run_no_full_collection_and_departures_run_one() -> None:
    result = subprocess.run(
        [sys.executable, "-c", RAMP], capture_output=True, text=True, timeout=120, check=True
    )
    seen = json.loads(result.stdout)
    assert seen["cpython"] >= 2  # the control: CPython's schedule collects during the ramp
    assert seen["ramp"] == 0
    assert seen["before"] == [0, True]  # nobody left: the dead cycles wait
    assert seen["after"] == 1 and seen["freed"]
    assert seen["threshold"] == gcpolicy.NEVER
    # Promotions are counted as CPython counts them: the 300,300 lists of the last ramp, less
    # those still young.
    assert seen["left"] >= 300_000 and 280_000 <= seen["promoted"] <= 300_300
    assert seen["fallback"] == [1, 2]
