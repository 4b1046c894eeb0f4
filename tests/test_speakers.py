"""Active-speaker selection (pure)."""

from __future__ import annotations

from sfu.speakers import active_speakers


def test_loudest_first_and_silence_excluded() -> None:
    speakers = active_speakers([("PA_quiet", -60.0), ("PA_a", -20.0), ("PA_b", -6.0)])
    assert [s["sid"] for s in speakers] == ["PA_b", "PA_a"]
    assert speakers[0]["level"] == 0.501 and speakers[1]["level"] == 0.1


def test_nobody_speaking() -> None:
    assert active_speakers([]) == [] and active_speakers([("PA_x", -127.0)]) == []
