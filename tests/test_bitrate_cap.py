"""Issue 18.10: a video track that keeps exceeding limits.max_video_bitrate is warned, then
paused for its subscribers (audited), and resumed once it stays under the limit."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from sfu.bitratecap import MARGIN, PAUSE, PAUSE_AFTER, RESUME, RESUME_AFTER, WARN, BitrateCap
from signaling import requests
from signaling.bitratepolicy import enforce_bitrate
from signaling.codec import MessageError
from signaling.messages import Mute
from tests.test_feedback import feedback, track

LIMIT = 100_000


def run(cap: BitrateCap, rates: list[int], start: float = 0.0) -> list[tuple[float, str]]:
    """One measurement a second; the actions with their times."""
    actions = []
    for n, rate in enumerate(rates):
        action = cap.observe("TR_v", rate, LIMIT, start + n)
        if action is not None:
            actions.append((start + n, action))
    return actions


def test_warned_then_paused_then_resumed() -> None:
    cap = BitrateCap()
    over = int(LIMIT * 2)
    assert run(cap, [over] * 12) == [(3.0, WARN), (PAUSE_AFTER, PAUSE)]
    assert cap.paused("TR_v")
    # Between the limit and the margin: still paused, and the resume clock does not start.
    assert run(cap, [int(LIMIT * 1.1)] * 8, start=12) == []
    assert run(cap, [LIMIT // 2] * 7, start=20) == [(20 + RESUME_AFTER, RESUME)]
    assert not cap.paused("TR_v")


def test_spikes_within_the_margin_or_too_short_and_no_limit_never_act() -> None:
    cap = BitrateCap()
    assert run(cap, [int(LIMIT * MARGIN)] * 30) == []  # at the margin, not over it
    assert run(cap, ([LIMIT * 3] * 2 + [LIMIT]) * 10, start=30) == []  # two-second bursts
    assert all(cap.observe("TR_v", 10**9, 0, float(n)) is None for n in range(30))  # limit 0


def test_feedback_measures_and_queues_the_actions() -> None:
    video = track("TR_v", ssrc=1111)
    fb = feedback({video.sid: video}, max_video_bitrate=LIMIT)
    video.receive.update(1)  # the track has started
    fb.start_publisher_reports(0.0)
    for second in range(1, 13):
        video.counters.bytes_in += LIMIT * 3 // 8  # three times the limit, each second
        fb.handle_timer(float(second))
    assert [(t.sid, action) for t, action, _rate, _limit in fb.bitrate_actions] == [
        ("TR_v", WARN),
        ("TR_v", PAUSE),
    ]
    assert fb.bitrate_actions[0][2] == LIMIT * 3 and fb.bitrate_actions[0][3] == LIMIT
    fb.forget_track(video)
    assert not fb.bitrate_cap.paused("TR_v")


class Room:
    name = "board"

    def __init__(self) -> None:
        self.muted: list[bool] = []

    def set_muted(
        self, participant: Any, track: Any, muted: bool, *, notify_publisher: bool
    ) -> None:
        self.muted.append(muted)


def test_the_policy_tells_pauses_resumes_and_audits() -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    state = SimpleNamespace(audit=SimpleNamespace(record=lambda e, **f: records.append((e, f))))
    frames: list[dict[str, Any]] = []
    participant = SimpleNamespace(identity="alice", notify=frames.append)
    room, video = Room(), track("TR_v", ssrc=1)
    for action in (WARN, PAUSE, RESUME):
        enforce_bitrate(state, room, participant, video, action, 300_000, LIMIT)  # type: ignore[arg-type]
    assert [f["action"] for f in frames] == [WARN, PAUSE, RESUME]
    assert frames[0] == {
        "type": "bitrate_exceeded", "track_sid": "TR_v", "action": WARN,
        "bitrate": 300_000, "limit": LIMIT,
    }  # fmt: skip
    assert room.muted == [True, False]  # the warning alone mutes nothing
    assert [(e, f["action"], f["identity"]) for e, f in records] == [
        ("bitrate_exceeded", WARN, "alice"),
        ("bitrate_exceeded", PAUSE, "alice"),
        ("bitrate_exceeded", RESUME, "alice"),
    ]


def test_a_paused_track_cannot_be_unmuted_by_its_publisher() -> None:
    cap = BitrateCap()
    run(cap, [LIMIT * 3] * 11)
    video = track("TR_v", ssrc=1)
    participant = SimpleNamespace(
        tracks={"TR_v": video}, identity="alice", feedback=SimpleNamespace(bitrate_cap=cap)
    )
    state = SimpleNamespace(store=SimpleNamespace(admin_muted=lambda *_: False))
    room = Room()
    with pytest.raises(MessageError, match="over limits.max_video_bitrate"):
        requests.mute(state, participant, room, Mute(track_sid="TR_v", muted=False, req=1))  # type: ignore[arg-type]
    requests.mute(state, participant, room, Mute(track_sid="TR_v", muted=True, req=2))  # type: ignore[arg-type]
