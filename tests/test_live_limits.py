"""Room limits are read at the moment of use: an admin PATCH (which replaces `room.limits`)
applies to participants already in the room, for every limit the participant enforces."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from aiortc import RTCPeerConnection, VideoStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from auth.grants import VideoGrant
from sfu.config import LimitsConfig
from sfu.forwarder import CodecInfo, PublishedTrack
from sfu.participant import Participant
from sfu.publishing import choose_codec
from sfu.room import Room
from sfu.rtcp import Remb, parse_rtcp
from sfu.simulcast import offer_simulcast
from sfu.stats import DropReason, Stats


@pytest.fixture
async def room_and_participant() -> AsyncIterator[tuple[Room, Participant]]:
    room = Room("r", LimitsConfig())
    participant = Participant(
        sid="PA_p",
        identity="p",
        name="",
        metadata="",
        grant=VideoGrant(room_join=True, room="r"),
        room=room,
        notify=lambda frame: None,
        stats=Stats(),
        auto_subscribe=False,
    )
    yield room, participant
    await participant.close()


def video(sid: str, ssrc: int) -> PublishedTrack:
    track = PublishedTrack(
        sid=sid, cid=sid, kind="video", source="camera", name="", publisher_sid="PA_p"
    )
    track.codec = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96)
    track.ssrc = ssrc
    track.receive.update(1)
    return track


async def test_a_patched_data_message_limit_applies_at_once(
    room_and_participant: tuple[Room, Participant],
) -> None:
    room, participant = room_and_participant
    message = '{"payload": "' + "x" * 100 + '"}'
    participant.data.on_message("_reliable", message)
    assert participant.stats.dropped[DropReason.TOO_LARGE.value] == 0
    room.limits = replace(room.limits, max_data_message_bytes=50)
    participant.data.on_message("_reliable", message)
    assert participant.stats.dropped[DropReason.TOO_LARGE.value] == 1


async def test_a_patched_video_bitrate_applies_to_the_next_remb(
    room_and_participant: tuple[Room, Participant],
) -> None:
    room, participant = room_and_participant
    for track in (video("TR_1", 11), video("TR_2", 12)):
        participant.add_track(track)
    feedback = participant.feedback

    def remb_at(now: float) -> int:
        feedback.to_publisher.clear()
        feedback.start_publisher_reports(now - 1.0)
        feedback.handle_timer(now)
        (remb,) = [
            m for p, _ in feedback.to_publisher for m in parse_rtcp(p) if isinstance(m, Remb)
        ]
        return remb.bitrate

    assert remb_at(1.0) == 2 * 4_000_000
    room.limits = replace(room.limits, max_video_bitrate=500_000)
    assert remb_at(2.0) == 2 * 500_000


async def test_patched_codecs_apply_to_the_next_offer(
    room_and_participant: tuple[Room, Participant],
) -> None:
    room, participant = room_and_participant
    offered = [
        RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
        RTCRtpCodecParameters(
            mimeType="video/rtx", clockRate=90000, payloadType=97, parameters={"apt": 96}
        ),
    ]
    chosen = choose_codec(offered, participant.publishing.allowed_codecs())
    assert chosen is not None and chosen[0].payloadType == 96 and chosen[1] is offered[1]
    room.limits = replace(room.limits, allowed_codecs=("opus",))
    assert choose_codec(offered, participant.publishing.allowed_codecs()) is None


async def test_a_track_asks_its_own_publisher_for_keyframes_until_unpublished(
    room_and_participant: tuple[Room, Participant],
) -> None:
    _room, participant = room_and_participant
    track = video("TR_v", 11)
    track.request_keyframe()  # not published yet: nobody to ask
    participant.add_track(track)
    track.request_keyframe()
    track.request_keyframe()  # inside the window: one pending, on the participant's timer
    assert participant.next_deadline() is not None
    participant.remove_track(track.sid)
    assert participant.next_deadline() is None
    track.request_keyframe()
    assert participant.next_deadline() is None


async def test_a_simulcast_offer_is_answered_as_the_room_allows_at_the_time(
    room_and_participant: tuple[Room, Participant],
) -> None:
    room, participant = room_and_participant
    client = RTCPeerConnection()
    try:
        camera = VideoStreamTrack()
        client.addTransceiver(camera, direction="sendonly")
        await client.setLocalDescription(await client.createOffer())
        offer = offer_simulcast(client.localDescription.sdp, {"0": ("q", "h", "f")})
        track = PublishedTrack(
            sid="TR_v", cid=camera.id, kind="video", source="camera", name="", publisher_sid="PA_p"
        )
        participant.add_track(track)
        answer, _ = await participant.handle_publisher_offer(offer)
        assert "a=simulcast:recv q;h;f" in answer and "a=rid:f recv" in answer
        assert [layer["rid"] for layer in track.info()["simulcast"]] == ["q", "h", "f"]  # type: ignore[index]
        room.limits = replace(room.limits, simulcast=False)
        answer, _ = await participant.handle_publisher_offer(offer)
        assert "simulcast" not in answer and "a=rid" not in answer
    finally:
        await client.close()
