"""RED in the publisher answer and the subscriber offer, in process: keyroom's Publishing and
Subscribing against aiortc clients whose SDP is given RED the way Chromium's carries it
(aiortc itself has no RED)."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection, RTCSessionDescription

from sfu import internals
from sfu.feedback import Feedback
from sfu.forwarder import CodecInfo, DownTrack, PublishedTrack
from sfu.ingress import Ingress
from sfu.publishing import Publishing
from sfu.redsdp import offer_red
from sfu.stats import Stats
from signaling.media import SyntheticAudioTrack
from tests.test_section_reuse import new_subscribing


async def publish(
    *, allowed: bool = True, encryption: str = "none", wanted: bool = True
) -> tuple[str, PublishedTrack]:
    """keyroom's answer to an audio offer with RED over Opus, and the track it bound."""
    pc, client = internals.new_peer_connection(), internals.new_peer_connection()
    stats = Stats()
    tracks: dict[str, PublishedTrack] = {}
    source = SyntheticAudioTrack()
    track = PublishedTrack(
        sid="TR_a", cid=source.id, kind="audio", source="microphone", name="",
        publisher_sid="PA_p", encryption=encryption,
    )  # fmt: skip
    track.red_wanted = wanted
    tracks[track.sid] = track
    publishing = Publishing(
        pc,
        ingress=Ingress(tracks, stats),
        feedback=Feedback(
            tracks=tracks, subscriptions={}, stats=stats, max_video_bitrate=lambda: 0, rtcp_ssrc=1
        ),
        stats=stats,
        allowed_codecs=lambda: ("opus",),
        may_publish_data=lambda: False,
        public_addresses={},
    )
    publishing.red_allowed = lambda: allowed
    try:
        client.addTransceiver(source, direction="sendonly")
        await client.setLocalDescription(await client.createOffer())
        offer = offer_red(client.localDescription.sdp, 63)  # as Chromium offers it
        answer, _ = await publishing.answer(offer, {source.id: track})
        # aiortc takes the answer (its RED lines are ignored there).
        await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        return answer, track
    finally:
        source.stop()
        await pc.close()
        await client.close()


async def test_a_red_offer_is_answered_red_first_and_the_track_forwards_through_it() -> None:
    answer, track = await publish()
    audio = answer.split("m=audio ")[1]
    assert audio.split("\r\n")[0].endswith("UDP/TLS/RTP/SAVPF 63 96")
    assert "a=rtpmap:63 red/48000/2\r\n" in audio and "a=fmtp:63 96/96\r\n" in audio
    assert "a=fmtp:96 useinbandfec=1;usedtx=1" in audio
    assert track.codec is not None and track.codec.red_payload_type == 63
    assert track.codec.mime_type.lower() == "audio/opus" and track.red is not None


async def test_no_red_when_the_room_turns_it_off_the_track_is_encrypted_or_the_client_says() -> (
    None
):
    for answer, track in (
        await publish(allowed=False),
        await publish(encryption="e2ee"),
        await publish(wanted=False),  # add_track disable_red
    ):
        assert "red/48000" not in answer
        assert track.codec is not None and track.codec.red_payload_type is None
        assert track.red is None


async def subscribe(
    track: PublishedTrack, keep_red: bool, inner: int = 96
) -> tuple[str, list[tuple[DownTrack, int]], bool]:
    """keyroom's subscriber offer for `track`, after an answer that kept RED (copied in, as
    Chromium's answer has it) or not (aiortc's own): the track's RED down-tracks (with their
    Opus payload type), and whether the down-track is among its plain ones."""
    pc, client = internals.new_peer_connection(), RTCPeerConnection()
    offers: asyncio.Queue[str] = asyncio.Queue()
    sub = new_subscribing(pc, offers)
    try:
        sub.subscribe(track)
        offer = await asyncio.wait_for(offers.get(), 5)
        await client.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await client.setLocalDescription(await client.createAnswer())
        answer = client.localDescription.sdp
        if keep_red:
            answer = offer_red(answer, 63).replace("a=fmtp:63 96/96", f"a=fmtp:63 {inner}/{inner}")
        sub.handle_answer(answer)
        assert sub._negotiation is not None  # noqa: SLF001
        await asyncio.wait_for(sub._negotiation, 5)  # noqa: SLF001
        down = sub.subscriptions[track.sid]
        assert track.red is not None
        red = [(d, pt) for d, pt in track.red.opus.items() if d is down]
        return offer, red, down in track.down_tracks
    finally:
        sub.stop()
        await pc.close()
        await client.close()


def red_track() -> PublishedTrack:
    track = PublishedTrack(
        sid="TR_a", cid="a", kind="audio", source="microphone", name="", publisher_sid="PA_p"
    )
    codec = CodecInfo("audio/opus", 48000, 111, red_payload_type=63)
    Ingress({track.sid: track}, Stats()).bind(track, "0", 5, None, codec, {})
    return track


async def test_a_subscriber_that_keeps_red_gets_the_red_stream_the_others_plain_opus() -> None:
    track = red_track()
    offer, red, plain = await subscribe(track, keep_red=True)
    assert "a=rtpmap:63 red/48000/2\r\na=fmtp:63 96/96\r\n" in offer
    assert [pt for _, pt in red] == [96] and not plain
    assert track.red is not None and track.red.downs == []  # detached when it left
    track = red_track()
    _, red, plain = await subscribe(track, keep_red=False)
    assert red == [] and plain
    track = red_track()  # an answer with RED over PCMU, not its Opus: plain Opus
    _, red, plain = await subscribe(track, keep_red=True, inner=0)
    assert red == [] and plain
