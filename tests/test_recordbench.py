"""`keyroom loadtest --compare-recording`'s verdict (the runs themselves: docs/benchmarks.md)."""

from __future__ import annotations

from loadtest.recordbench import format_summary, summarize
from loadtest.scenarios import Scenario


def test_recording_passes_within_1_2_times_a_subscriber_and_fails_beyond() -> None:
    scenario = Scenario("x", video_publishers=10, duration=20)
    ok = summarize({0: [2.0, 2.2], 1: [4.0, 4.2], 2: [3.0, 3.2]}, scenario)
    assert ok["recording_vs_subscriber"] == 0.5 and ok["passed"]
    assert "PASS" in format_summary(ok) and ok["tracks"] == 10
    bad = summarize({0: [2.0], 1: [3.0], 2: [3.5]}, scenario)
    assert bad["recording_vs_subscriber"] == 1.5 and not bad["passed"]
    assert "FAIL" in format_summary(bad)
    noise = summarize({0: [2.0], 1: [1.9], 2: [2.5]}, scenario)  # no measurable subscriber cost
    assert noise["recording_vs_subscriber"] is None and not noise["passed"]
