"""Acceptance of issue 6: `keyroom loadtest --scenario 5x5-video --json`, CI-sized."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadtest.report import percentiles
from loadtest.scenarios import SCENARIOS, with_overrides


@pytest.mark.timeout(120)
def test_5x5_video_ci_sized_has_no_missing_track_and_under_1_percent_loss() -> None:
    # Its own process, as a user runs it: the load tester spawns its server and needs none of
    # the test process's state.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sfu",
            "loadtest",
            "--scenario",
            "5x5-video",
            "--video-publishers",
            "3",
            "--subscribers",
            "3",
            "--duration",
            "8",
            "--json",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.stdout, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["tracks"] == {"published": 3, "expected": 9, "received": 9, "missing": 0}
    assert report["packets"]["received"] > 0
    assert report["packets"]["loss"] < 0.01, report["packets"]
    assert report["errors"] == {}
    assert report["latency_ms"]["count"] > 0
    assert report["join_ms"]["count"] == 6
    assert report["first_keyframe_ms"]["count"] == 9
    assert report["server"]["rss_mib_max"] > 0
    # The spawned server forwarded without ever creating a codec.
    assert report["server_counters"]["codecs"] == 0
    assert report["passed"] is True
    assert result.returncode == 0


def test_percentiles_nearest_rank() -> None:
    assert percentiles([]) == {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    values = list(range(1, 101))
    assert percentiles(values) == {"count": 100, "p50": 51, "p95": 96, "p99": 100, "max": 100}


def test_scenario_overrides_apply_only_given_values() -> None:
    base = SCENARIOS["5x5-video"]
    small = with_overrides(base, video_publishers=3, subscribers=None)
    assert (small.video_publishers, small.subscribers) == (3, base.subscribers)
    assert set(SCENARIOS) == {"5x5-video", "10x10-audio", "1x50-video", "churn", "auth-storm"}
