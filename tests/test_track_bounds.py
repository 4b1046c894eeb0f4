"""Tracks are bounded per participant by default, and the node-wide track limits are checked
from running counts, not by scanning every track on the node (issue 11 item 10)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sfu.config import LimitsConfig
from sfu.feedback import Feedback
from sfu.forwarder import PublishedTrack
from sfu.stats import Stats
from signaling.messages import AddTrack, Unpublish
from signaling.session import Session
from signaling.state import ServerState
from tests.signaling_helpers import NOW, WALL, Wire, close_all, join, make_state


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[ServerState]:
    state = make_state(tmp_path, node={"max_tracks": 20})
    yield state
    await close_all(state)


async def add(session: Session, wire: Wire, cid: str, req: int) -> dict[str, object]:
    await session.handle(AddTrack(cid=cid, kind="audio", req=req), NOW, WALL)
    return wire.frames[-1]


async def test_tracks_per_participant_are_bounded_by_default(state: ServerState) -> None:
    assert LimitsConfig().max_tracks_per_participant == 16
    alice, wire, _ = join(state, "alice")
    for i in range(16):
        assert (await add(alice, wire, f"a{i}", i))["type"] == "track_published"
    refused = await add(alice, wire, "a16", 99)
    assert refused["code"] == "limit_exceeded"
    assert refused["message"] == "too many tracks for this participant"
    assert state.stats.tracks == 16


async def test_node_track_count_follows_publish_unpublish_and_leave(state: ServerState) -> None:
    alice, alice_wire, _ = join(state, "alice")
    bob, bob_wire, _ = join(state, "bob")
    for i in range(12):
        assert (await add(alice, alice_wire, f"a{i}", i))["type"] == "track_published"
    for i in range(8):
        assert (await add(bob, bob_wire, f"b{i}", i))["type"] == "track_published"
    # The node is at max_tracks = 20: a third publisher is refused.
    carol, carol_wire, _ = join(state, "carol")
    assert (await add(carol, carol_wire, "c0", 1))["message"] == (
        "the server has its maximum of tracks"
    )
    track_sid = alice_wire.of_type("track_published")[0]["track"]["sid"]
    await alice.handle(Unpublish(track_sid=track_sid, req=50), NOW, WALL)
    assert state.stats.tracks == 19
    assert (await add(carol, carol_wire, "c1", 2))["type"] == "track_published"
    room = state.rooms.get("room1")
    assert room is not None and bob.participant is not None
    await room.remove(bob.participant, "left")
    assert state.stats.tracks == 12
    tracks = [t for p in room.participants.values() for t in p.tracks.values()]
    assert len(tracks) == state.stats.tracks


def test_node_bitrate_sum_follows_each_measurement_and_unpublish() -> None:
    stats = Stats()
    track = PublishedTrack(
        sid="TR_1", cid="c", kind="audio", source="microphone", name="", publisher_sid="PA_1",
        muted=False, keyframe_interval=0,
    )  # fmt: skip
    track.ssrc = 1234
    feedback = Feedback(
        tracks={track.sid: track}, subscriptions={}, stats=stats,
        max_video_bitrate=lambda: 0, rtcp_ssrc=1,
    )  # fmt: skip
    track.receive.started = True
    feedback._publisher_reports(10.0)  # noqa: SLF001
    track.counters.bytes_in += 125_000  # 1 Mbit over the next second
    feedback._publisher_reports(11.0)  # noqa: SLF001
    assert track.bitrate == stats.bitrate_in == 1_000_000
    track.counters.bytes_in += 25_000
    feedback._publisher_reports(12.0)  # noqa: SLF001
    assert track.bitrate == stats.bitrate_in == 200_000
