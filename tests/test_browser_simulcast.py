"""Acceptance of issue 12 (simulcast, congestion control, dynacast), CI-sized: real Chromium
publisher and subscribers, each behind its own link of the impaired topology (loadtest.impair),
one subscriber's downlink capped at 300 kbit/s for a while. The full version, before/after in
the same run, is `keyroom bench-simulcast` (docs/benchmarks.md); this one asserts generous
versions of the targets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loadtest.simulcastbench import TRANSPORT_CC, Durations, RoomResult, run

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium")


def problems(result: RoomResult) -> list[str]:
    """The generous targets this run missed (none: it passed)."""
    checks = {
        # The publisher sends layers; Chromium accepted transport-cc (keyroom's own estimate).
        "layers": result.top_width > result.low_width > 0,
        "transport feedback": result.transport_feedback > 0,
        # The capped page is on the low layer soon (target 5 s), then keeps playing (target: no
        # stall over 1 s) and hears its audio (target: none lost). Runs on the loaded machine
        # (docs/benchmarks.md, third pass): low layer in 1.0-1.2 s, stalls 0.2-0.3 s, 19-20
        # fps, no audio lost (before: 1.2-6.2 s, 0-4 lost); the bounds leave room for a
        # loaded CI.
        "low layer within 8 s": result.time_to_low is not None and result.time_to_low <= 8.0,
        "no stall over 2.5 s": result.max_stall_after_low is not None
        and result.max_stall_after_low <= 2.5,
        "8 fps capped": result.capped_fps >= 8.0,  # before simulcast: 0 fps the whole window
        "audio": result.audio_lost_capped <= 0.02 * result.audio_received_capped,
        # The unconstrained page is mostly on the top layer and plays on.
        "free page on top": result.free_top_share >= 0.5 and result.free_fps >= 5.0,
        # Dynacast: with both pages on the low layer, the publisher sends far less. (Lifting
        # the cap brings the capped page up again, target 10 s: `keyroom bench-simulcast`
        # reports it, 2.5-9.3 s, and this test does not.)
        "dynacast": result.publisher_kbit_after < result.publisher_kbit_before / 2,
    }
    return [name for name, ok in checks.items() if not ok]


@pytest.mark.timeout(300)
async def test_a_capped_subscriber_gets_the_low_layer_the_other_keeps_the_top(
    tmp_path: Path,
) -> None:
    """One more run if the first misses a bound: on the 2-core CI machine a full suite's load
    made the capped page decode 0.6 fps once in three runs, before a paused layer's stale
    bitrate and a stall read as an overuse were fixed (docs/benchmarks.md, third pass); both
    runs are shown."""
    durations = Durations(warmup=8.0, capped=10.0, recover=12.0, dynacast=7.0)
    runs = []
    for attempt in range(2):
        workdir = tmp_path / str(attempt)
        workdir.mkdir()
        [result] = await run(durations, workdir, modes=(TRANSPORT_CC,))
        runs.append((problems(result), result))
        if not runs[-1][0]:
            break
    assert not runs[-1][0], runs
