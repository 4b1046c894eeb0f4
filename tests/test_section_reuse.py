"""Recycled media sections (issue 11 item 3): a subscriber's SDP grows with the tracks it receives
at once, never with the meeting's history of publishes and unpublishes. Real `keyroom serve`,
real aiortc clients on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from sfu import internals, subscribing
from sfu.datarelay import DataRelay
from sfu.feedback import Feedback
from sfu.forwarder import CodecInfo, DownTrack, PublishedTrack
from sfu.sdpinfo import MAX_SECTIONS, describe_sections
from sfu.stats import Stats
from sfu.tasks import TaskSet
from signaling.client import KeyroomClient, RemoteTrack, count_frames
from signaling.media import SyntheticAudioTrack, SyntheticVideoTrack
from tests.admin_helpers import call
from tests.conftest import ServerProcess
from tests.test_metrics import scrape

CYCLES = 80
# The data channels' section, and one section made inactive in the latest offer.
SECTION_SLACK = 2


def media_sections(client: KeyroomClient) -> int:
    """Media sections of the latest subscriber offer the client applied."""
    pc = client.subscriber_pc
    assert pc is not None and pc.remoteDescription is not None
    sdp = pc.remoteDescription.sdp
    return len([s for s in describe_sections(sdp) if s.kind != "application"])


async def track_named(client: KeyroomClient, track_sid: str, deadline: float) -> RemoteTrack:
    """The subscriber's RemoteTrack for `track_sid`, skipping the others it got before."""
    while True:
        remote = await client.next_track(timeout=max(deadline - time.monotonic(), 0.01))
        if remote.track_sid == track_sid:
            return remote


async def test_publish_unpublish_cycles_keep_the_subscriber_sdp_bounded(
    server: ServerProcess,
) -> None:
    alice = KeyroomClient(server.ws_url, server.token("alice"))
    bob = KeyroomClient(server.ws_url, server.token("bob"))
    try:
        await alice.connect()
        await bob.connect()
        mic = await alice.publish(SyntheticAudioTrack(), source="microphone")
        started = time.monotonic()
        for n in range(CYCLES):
            info = await alice.publish(SyntheticVideoTrack(), source="camera", name=f"cam{n}")
            await alice.unpublish(info["sid"])
            assert time.monotonic() - started < 80, f"only {n} cycles in 80 s"
        final = await alice.publish(SyntheticVideoTrack(), source="camera", name="final")
        remote = await track_named(bob, final["sid"], time.monotonic() + 10)
        assert await count_frames(remote.track, 1.0) > 0
        assert (remote.participant_identity, remote.kind) == ("alice", "video")
        assert remote.info is not None and remote.info["name"] == "final"

        # Live at once: alice's microphone and her final camera.
        assert media_sections(bob) <= 2 + SECTION_SLACK
        assert len(bob.subscriber_pc.remoteDescription.sdp) < 16 * 1024  # type: ignore[union-attr]
        # The publisher's own offers are bounded the same way (sections of unpublished tracks
        # carry the next ones), so the server's per-connection section cap is never reached.
        assert alice.publisher_pc is not None
        assert len(alice.publisher_pc.getTransceivers()) <= 2 + 1
        assert bob.close_code is None and alice.close_code is None
        assert await bob.ping() > 0
        live = {t.track_sid for t in bob.remote_tracks.values() if not t.ended}
        assert live == {mic["sid"], final["sid"]}
        metrics = scrape(server)
        # Some cycles end before bob is offered their track: those need no section at all.
        assert metrics[("keyroom_subscriber_sections_reused_total", ())] >= CYCLES // 2
        assert metrics[("keyroom_subscriber_media_sections", ())] <= 2 * (2 + SECTION_SLACK)
    finally:
        await alice.leave()
        await bob.leave()


async def test_a_recycled_section_carries_another_publishers_track(server: ServerProcess) -> None:
    alice = KeyroomClient(server.ws_url, server.token("alice"))
    carol = KeyroomClient(server.ws_url, server.token("carol"))
    bob = KeyroomClient(server.ws_url, server.token("bob"))
    try:
        for client in (alice, carol, bob):
            await client.connect()
        await bob.wait_ready()
        deadline = time.monotonic() + 20
        first = await alice.publish(SyntheticVideoTrack(), source="camera")
        old = await track_named(bob, first["sid"], deadline)
        assert await count_frames(old.track, 1.0) > 0
        await alice.unpublish(first["sid"])
        await bob.next_event("track_unpublished", timeout=5)

        # The next video in the room is H264: the recycled section changes codec too.
        admin = server.token("ops", grants={"roomAdmin": True})
        status, _ = await call(
            server, "PATCH", "/api/rooms/room1", admin, {"limits": {"allowed_codecs": ["h264"]}}
        )
        assert status == 200
        second = await carol.publish(SyntheticVideoTrack(), source="screen_share", name="slides")
        new = await track_named(bob, second["sid"], deadline)
        assert new.mid == old.mid and old.ended and not new.ended
        assert old.info is not None and old.info["mime_type"].lower() == "video/vp8"
        assert new.participant_identity == "carol"
        assert new.participant_sid == carol.participant["sid"]
        assert new.info is not None and new.info["source"] == "screen_share"
        assert new.info["mime_type"].lower() == "video/h264"
        assert await count_frames(new.track, 1.0) > 0
        assert bob.remote_tracks[str(new.mid)] is new
    finally:
        for client in (alice, carol, bob):
            await client.leave()


def new_subscribing(pc: RTCPeerConnection, offers: asyncio.Queue[str]) -> subscribing.Subscribing:
    """keyroom's subscriber side of `pc` alone, its offers put in `offers`."""
    stats = Stats()
    subscriptions: dict[str, DownTrack] = {}
    return subscribing.Subscribing(
        pc,
        sid="PA_sub",
        subscriptions=subscriptions,
        notify=lambda frame: offers.put_nowait(frame["sdp"]),
        relay=DataRelay(
            stats=stats, may_publish=lambda: True, max_bytes=lambda: 1000, deliver=print
        ),
        feedback=Feedback(
            tracks={},
            subscriptions=subscriptions,
            stats=stats,
            max_video_bitrate=lambda: 0,
            rtcp_ssrc=1,
        ),
        rearm=lambda: None,
        tasks=TaskSet("test subscriber"),
        stats=stats,
        public_addresses={},
    )


def video_track(sid: str) -> PublishedTrack:
    track = PublishedTrack(
        sid=sid, cid=sid, kind="video", source="camera", name="", publisher_sid="PA_pub"
    )
    track.codec = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96)
    return track


async def test_a_subscriber_that_never_answers_gets_no_more_than_max_sections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sections retire only through answers: while a client answers nothing and tracks come and
    go, new ones stop at MAX_SECTIONS and the next track waits; the client's first answer frees
    the retired sections and the waiting track gets one of them."""
    monkeypatch.setattr(subscribing, "ANSWER_TIMEOUT", 0.01)
    pc = internals.new_peer_connection()
    client = internals.new_peer_connection()
    offers: asyncio.Queue[str] = asyncio.Queue()
    sub = new_subscribing(pc, offers)
    stats = sub.stats

    async def offered() -> str:
        sdp = await asyncio.wait_for(offers.get(), 5)
        await asyncio.wait_for(sub._negotiation, 5)  # noqa: SLF001 (the unanswered wait ends)
        return sdp

    try:
        for n in range(MAX_SECTIONS + 4):
            sub.subscribe(video_track(f"TR_{n}"))
            await offered()
            sub.unsubscribe(f"TR_{n}")
            await offered()
        sub.subscribe(video_track("TR_waits"))
        sdp = await offered()
        assert len(pc.getTransceivers()) == MAX_SECTIONS
        assert "TR_waits" not in sdp
        media = [s for s in describe_sections(sdp) if s.kind == "video"]
        assert len(media) == MAX_SECTIONS and {s.direction for s in media} == {"inactive"}

        monkeypatch.setattr(subscribing, "ANSWER_TIMEOUT", 5.0)
        sub.start()
        sdp = await asyncio.wait_for(offers.get(), 5)
        await client.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await client.setLocalDescription(await client.createAnswer())
        sub.handle_answer(client.localDescription.sdp)
        sdp = await asyncio.wait_for(offers.get(), 5)
        (section,) = [s for s in describe_sections(sdp) if s.track_id == "TR_waits"]
        assert section.direction == "sendonly" and len(pc.getTransceivers()) == MAX_SECTIONS
        assert stats.sections_reused == 1
    finally:
        sub.stop()
        await pc.close()
        await client.close()
