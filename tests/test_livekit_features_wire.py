"""LiveKit wire units without sockets: connection quality updates (signaling/livekit/
connquality.py), data packets beyond UTF-8 user text (signaling/livekit/datapackets.py)."""

from __future__ import annotations

from livekit.protocol import models

from signaling.livekit.connquality import QualityReport, quality_update


def test_levels_map_to_livekit_qualities_and_only_changes_are_sent() -> None:
    levels = {"PA_a": "excellent", "PA_b": "good", "PA_c": "poor"}
    first = quality_update({}, levels)
    assert first is not None
    sent = {u.participant_sid: (u.quality, u.score) for u in first.connection_quality.updates}
    assert sent == {
        "PA_a": (models.EXCELLENT, 4.5),
        "PA_b": (models.GOOD, 3.5),
        "PA_c": (models.POOR, 2.0),
    }
    assert quality_update(levels, levels) is None
    later = quality_update(levels, {**levels, "PA_b": "poor", "PA_d": "excellent"})
    assert later is not None
    assert [(u.participant_sid, u.quality) for u in later.connection_quality.updates] == [
        ("PA_b", models.POOR),
        ("PA_d", models.EXCELLENT),
    ]
    assert quality_update({}, {"PA_x": "bogus"}) is None  # no level keyroom knows: nothing


def test_the_report_runs_every_interval_with_time_passed_in() -> None:
    levels = {"PA_a": "excellent"}
    sent = []
    report = QualityReport(lambda: levels, sent.append, now=100.0)
    assert report.next_deadline() == 102.0
    report.handle_timer(101.0)  # early: nothing
    assert sent == []
    report.handle_timer(102.0)
    assert len(sent) == 1 and report.next_deadline() == 104.0
    report.handle_timer(104.0)  # unchanged: nothing sent
    assert len(sent) == 1
    levels["PA_a"] = "good"
    report.handle_timer(106.0)
    assert [u.quality for u in sent[-1].connection_quality.updates] == [models.GOOD]
