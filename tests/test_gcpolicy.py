"""The forwarding processes' collector schedule (sfu/gcpolicy.py), applied in a fresh
interpreter (the test process's own collector is left alone)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
