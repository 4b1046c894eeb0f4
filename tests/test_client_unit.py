"""Unit tests of signaling.client and signaling.media without the keyroom server.

Signaling behaviour runs against a tiny aiohttp WebSocket peer scripted in each test; WebRTC
behaviour against real aiortc peer connections on 127.0.0.1, one of which plays the server's
part by hand (`FakeSfu`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from fractions import Fraction
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType, web
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)

from sfu.iceaddr import restrict_host_addresses
from signaling.client import (
    KeyroomClient,
    KeyroomError,
    SessionClosed,
    count_frames,
    describe_sections,
    make_rejected_sections_applicable,
    restart_transceivers,
)
from signaling.media import FrameCounter, SyntheticAudioTrack, SyntheticVideoTrack
from tests.conftest import eventually

Frame = dict[str, Any]
Handler = Callable[[web.WebSocketResponse], Awaitable[None]]

SELF = {"sid": "PA_me", "identity": "me", "name": "", "metadata": "", "tracks": []}
BOB_CAM = {"sid": "TR_cam", "kind": "video", "source": "camera", "name": "cam", "muted": False}
BOB = {"sid": "PA_bob", "identity": "bob", "name": "Bob", "metadata": "", "tracks": [BOB_CAM]}


@pytest.fixture
def loopback() -> None:
    # aioice never gathers on 127.0.0.1 unless told to; tests stay on loopback.
    restrict_host_addresses(["127.0.0.1"])


def pc_config() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


@contextlib.asynccontextmanager
async def scripted_server(handler: Handler) -> AsyncIterator[str]:
    """A WebSocket endpoint at /rtc whose every connection runs `handler`."""

    async def rtc(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await handler(ws)
        return ws

    app = web.Application()
    app.router.add_get("/rtc", rtc)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}/rtc"
    finally:
        await runner.cleanup()


async def recv(ws: web.WebSocketResponse) -> Frame:
    message = await ws.receive(timeout=5)
    assert message.type is WSMsgType.TEXT, message
    frame: Frame = orjson.loads(message.data)
    return frame


async def send(ws: web.WebSocketResponse, frame: Frame) -> None:
    await ws.send_str(orjson.dumps(frame).decode())


def joined(req: int, participants: list[Frame] | None = None) -> Frame:
    return {
        "type": "joined",
        "req": req,
        "room": {"sid": "RM_1", "name": "room1", "metadata": ""},
        "participant": {**SELF, "permissions": {"canPublish": True}},
        "participants": participants or [],
        "ice_servers": [],
        "ice_transport_policy": "all",
        "resume_token": "r",
    }


def assert_no_tasks_left(client: KeyroomClient) -> None:
    assert not client._tasks
    assert client._reader is not None and client._reader.done()


# ---------------------------------------------------------------------------- SDP helpers

SUBSCRIBER_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1 3",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=mid:0",
        "a=sctp-port:5000",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:1",
        "a=sendonly",
        "a=msid:PA_bob TR_cam",
        "a=rtpmap:96 VP8/90000",
        "a=ssrc:111 cname:x",
        "a=ssrc:222 cname:x",
        "m=video 0 UDP/TLS/RTP/SAVPF 0",
        "a=mid:2",
        "a=inactive",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:3",
        "a=rtpmap:111 opus/48000/2",
        "a=ssrc:333 msid:PA_carol TR_mic",
        "",
    ]
)


def test_describe_sections_maps_msid_to_publisher_and_track() -> None:
    app, cam, dead, mic = describe_sections(SUBSCRIBER_OFFER)
    assert (app.kind, app.mid, app.track_id, app.rejected) == ("application", "0", None, False)
    assert (cam.stream_id, cam.track_id, cam.direction) == ("PA_bob", "TR_cam", "sendonly")
    assert cam.ssrcs == (111, 222) and cam.has_codecs and not cam.rejected
    assert dead.rejected and dead.port == 0 and not dead.has_codecs
    # No a=msid: the ssrc-level msid attribute names the publisher.
    assert (mic.stream_id, mic.track_id, mic.direction) == ("PA_carol", "TR_mic", "sendrecv")


def test_munging_leaves_a_description_without_rejected_sections_alone() -> None:
    sdp = SUBSCRIBER_OFFER.replace("m=video 0 UDP/TLS/RTP/SAVPF 0", "m=video 9 RTP/SAVPF 96")
    sdp = sdp.replace("a=inactive", "a=inactive\r\na=rtpmap:96 VP8/90000")
    assert make_rejected_sections_applicable(sdp) == sdp


TRANSPORT = ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:")


async def negotiate(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> str:
    """Run an offer through `answerer`; return its answer unapplied."""
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    return str(answerer.localDescription.sdp)


def reject_section(sdp: str, mid: str, mline: str, keep_transport: bool = False) -> str:
    """Replace section `mid` by a rejected one (`mline`, and its ICE/DTLS attributes if
    `keep_transport`) and drop it from BUNDLE."""
    lines = sdp.split("\r\n")
    out: list[str] = []
    skipping = False
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    for i, line in enumerate(lines):
        if i in starts:
            section = lines[i : next((s for s in starts if s > i), len(lines))]
            skipping = f"a=mid:{mid}" in section
            if skipping:
                out.append(mline)
                out += [f"a=mid:{mid}"] if keep_transport else []
                out += [line for line in section if keep_transport and line.startswith(TRANSPORT)]
        if line.startswith("a=group:BUNDLE"):
            line = " ".join(item for item in line.split() if item != mid)
        if not skipping:
            out.append(line)
    return "\r\n".join(out)


@pytest.mark.parametrize("mline", ["m=video 0 UDP/TLS/RTP/SAVPF", "m=video 0 UDP/TLS/RTP/SAVPF 0"])
async def test_rejected_answer_section_is_applied_as_inactive(loopback: None, mline: str) -> None:
    client, server = RTCPeerConnection(pc_config()), RTCPeerConnection(pc_config())
    received: list[MediaStreamTrack] = []
    server.on("track", received.append)
    try:
        audio = client.addTransceiver(SyntheticAudioTrack(), direction="sendonly")
        video = client.addTransceiver(SyntheticVideoTrack(), direction="sendonly")
        answer = reject_section(await negotiate(client, server), "1", mline)
        with pytest.raises((AssertionError, ValueError)):
            # What aiortc does without the rewrite (the state is untouched: parse fails first).
            await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        offer = client.localDescription.sdp
        munged = make_rejected_sections_applicable(answer, offer)
        await client.setRemoteDescription(RTCSessionDescription(sdp=munged, type="answer"))
        assert (audio.currentDirection, video.currentDirection) == ("sendonly", "inactive")
        audio_in = next(t for t in received if t.kind == "audio")
        assert await count_frames(audio_in, 2.0) > 10
        assert client.connectionState == "connected"
    finally:
        await client.close()
        await server.close()


async def test_rejected_reoffer_section_is_applied_with_codecs_from_previous_answer(
    loopback: None,
) -> None:
    server, client = RTCPeerConnection(pc_config()), RTCPeerConnection(pc_config())
    try:
        server.addTransceiver(SyntheticVideoTrack(), direction="sendonly")
        server.addTransceiver(SyntheticAudioTrack(), direction="sendonly")
        answer = await negotiate(server, client)
        await server.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await server.setLocalDescription(await server.createOffer())
        reoffer = reject_section(server.localDescription.sdp, "0", "m=video 0 UDP/TLS/RTP/SAVPF")
        munged = make_rejected_sections_applicable(reoffer, client.localDescription.sdp)
        await client.setRemoteDescription(RTCSessionDescription(sdp=munged, type="offer"))
        await client.setLocalDescription(await client.createAnswer())
        video, audio = describe_sections(client.localDescription.sdp)
        assert (video.kind, video.direction) == ("video", "inactive")
        assert (audio.kind, audio.direction) == ("audio", "recvonly")
    finally:
        await server.close()
        await client.close()


# ---------------------------------------------------------------------------- synthetic media


async def test_synthetic_video_is_paced_and_moving() -> None:
    track = SyntheticVideoTrack(width=160, height=120, fps=30)
    start = time.monotonic()
    frames = [await track.recv() for _ in range(10)]
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed <= 0.6, elapsed  # 9 frame intervals of 33 ms
    assert [f.pts for f in frames] == [i * 3000 for i in range(10)]
    assert all(f.time_base == Fraction(1, 90000) for f in frames)
    assert (frames[0].width, frames[0].height, frames[0].format.name) == (160, 120, "yuv420p")
    assert bytes(frames[0].planes[0]) != bytes(frames[1].planes[0])
    track.stop()


async def test_synthetic_audio_is_paced_in_20ms_frames() -> None:
    track = SyntheticAudioTrack(sample_rate=48000, frequency=440)
    start = time.monotonic()
    frames = [await track.recv() for _ in range(10)]
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed <= 0.4, elapsed  # 9 frame intervals of 20 ms
    assert [f.pts for f in frames] == [i * 960 for i in range(10)]
    assert all(f.samples == 960 and f.sample_rate == 48000 for f in frames)
    assert frames[0].format.name == "s16" and frames[0].layout.name == "mono"
    assert any(bytes(frames[0].planes[0]))
    track.stop()


# ---------------------------------------------------------------------------- signaling


async def test_replies_are_matched_by_req_and_events_kept_in_order() -> None:
    async def handler(ws: web.WebSocketResponse) -> None:
        join = await recv(ws)
        assert join["type"] == "join" and join["token"] == "tok" and join["protocol"] == 1
        await send(ws, joined(join["req"], [BOB]))
        first, second = await recv(ws), await recv(ws)
        assert first["type"] == second["type"] == "ping" and first["req"] != second["req"]
        await send(ws, {"type": "pong", "req": second["req"]})
        await send(ws, {"type": "participant_joined", "participant": {**BOB, "sid": "PA_x"}})
        await send(ws, {"type": "pong", "req": first["req"]})
        mute = await recv(ws)
        await send(ws, {"type": "error", "req": mute["req"], "code": "forbidden", "message": "no"})
        await send(ws, {"type": "ok", "req": 999})  # answers nothing: dropped
        await ws.send_str("not json")
        await send(ws, {"type": "error", "code": "invalid_message", "message": "bad frame"})
        await send(
            ws,
            {
                "type": "track_muted",
                "participant_sid": "PA_bob",
                "track_sid": "TR_cam",
                "muted": True,
            },
        )
        await send(ws, {"type": "participant_left", "sid": "PA_x", "identity": "bob", "reason": ""})
        await send(ws, {"type": "permissions_changed", "permissions": {"canPublish": False}})
        await ws.receive()  # until the client leaves

    async with scripted_server(handler) as url:
        client = KeyroomClient(url, "tok")
        payload = await client.connect()
        assert payload["participant"]["sid"] == "PA_me" == client.participant["sid"]
        assert list(client.participants) == ["PA_bob"]
        await asyncio.gather(client.ping(), client.ping())
        with pytest.raises(KeyroomError) as refused:
            await client.mute("TR_cam", True)
        assert (refused.value.code, refused.value.message) == ("forbidden", "no")
        # A filtered wait skips ahead; what it skipped is still there, in order.
        left = await client.next_event("participant_left")
        assert left["sid"] == "PA_x"
        assert (await client.next_event())["type"] == "participant_joined"
        assert (await client.next_event())["code"] == "invalid_message"
        assert (await client.next_event())["type"] == "track_muted"
        await client.next_event("permissions_changed")
        assert [e["type"] for e in client.events] == [
            "participant_joined",
            "error",
            "track_muted",
            "participant_left",
            "permissions_changed",
        ]
        assert list(client.participants) == ["PA_bob"]
        assert client.participants["PA_bob"]["tracks"][0]["muted"] is True
        assert client.permissions == {"canPublish": False}
        with pytest.raises(TimeoutError):
            await client.next_event(timeout=0.05)
        await client.leave()
        assert_no_tasks_left(client)


@pytest.mark.parametrize("with_req", [True, False])
async def test_refused_join_raises_with_code_and_close_code(with_req: bool) -> None:
    async def handler(ws: web.WebSocketResponse) -> None:
        join = await recv(ws)
        error = {"type": "error", "code": "unauthorized", "message": "unauthorized"}
        await send(ws, {**error, "req": join["req"]} if with_req else error)
        await ws.close(code=4401)

    async with scripted_server(handler) as url:
        client = KeyroomClient(url, "bad")
        with pytest.raises(KeyroomError) as refused:
            await client.connect()
        assert (refused.value.code, refused.value.close_code) == ("unauthorized", 4401)
        assert client.close_code == 4401
        assert_no_tasks_left(client)


async def test_server_leave_ends_the_session_and_fails_pending_requests() -> None:
    async def handler(ws: web.WebSocketResponse) -> None:
        join = await recv(ws)
        await send(ws, joined(join["req"]))
        assert (await recv(ws))["type"] == "ping"  # never answered
        await send(ws, {"type": "leave", "reason": "removed"})
        await ws.close(code=4410)

    async with scripted_server(handler) as url:
        client = KeyroomClient(url, "tok")
        await client.connect()
        with pytest.raises(SessionClosed) as closed:
            await client.ping()
        assert (closed.value.close_code, closed.value.reason) == (4410, "removed")
        assert (client.close_code, client.leave_reason) == (4410, "removed")
        assert (await client.next_event("leave"))["reason"] == "removed"
        with pytest.raises(SessionClosed):
            await client.next_event()
        with pytest.raises(SessionClosed):
            await client.request({"type": "ping"})
        await client.leave()  # after the server's leave: only waits for the teardown
        assert client.subscriber_pc is not None
        assert client.subscriber_pc.connectionState == "closed"
        assert_no_tasks_left(client)


@pytest.mark.parametrize("how", ["leave", "close"])
async def test_leave_says_goodbye_and_close_just_drops(how: str) -> None:
    seen: list[Any] = []

    ended = asyncio.Event()

    async def handler(ws: web.WebSocketResponse) -> None:
        join = await recv(ws)
        await send(ws, joined(join["req"]))
        while True:
            message = await ws.receive(timeout=5)
            seen.append(
                orjson.loads(message.data) if message.type is WSMsgType.TEXT else message.type
            )
            if message.type is not WSMsgType.TEXT:
                ended.set()
                return
            if seen[-1].get("type") == "leave":  # the server answers a leave before closing
                await send(ws, {"type": "ok", "req": seen[-1]["req"]})

    async with scripted_server(handler) as url:
        client = KeyroomClient(url, "tok")
        await client.connect()
        await (client.leave() if how == "leave" else client.close())
        await asyncio.wait_for(ended.wait(), 1)  # the server saw the socket end
        if how == "leave":
            assert seen == [{"type": "leave", "req": seen[0]["req"]}, WSMsgType.CLOSE]
        else:
            assert seen in ([WSMsgType.CLOSED], [WSMsgType.ERROR])  # no close frame
        assert_no_tasks_left(client)


# ---------------------------------------------------------------------------- real WebRTC


class FakeSfu:
    """The server's side of one client, by hand: aiortc PCs plus the protocol frames.

    The subscriber PC is offered with only data channels, then re-offered with a video track
    as soon as the first answer is in, i.e. while DTLS is still connecting. Publisher answers
    reject (port 0, no codecs) sections whose msid track id was not granted by `add_track`.
    """

    def __init__(self) -> None:
        self.sub = RTCPeerConnection(pc_config())
        self.pub = RTCPeerConnection(pc_config())
        for pc in (self.sub, self.pub):
            self._restart_when_connected(pc)
        self.granted: set[str] = set()
        self.published: list[MediaStreamTrack] = []
        self.data: list[Frame] = []
        self.sub_channel: RTCDataChannel | None = None
        self.ws: web.WebSocketResponse | None = None
        self.sub_answer: asyncio.Future[str] | None = None
        self.pub.on("track", self.published.append)
        self.pub.on("datachannel", self._on_pub_channel)

    @staticmethod
    def _restart_when_connected(pc: RTCPeerConnection) -> None:
        # The same aiortc limitation hits this side's sending transceiver.
        def on_state() -> None:
            if pc.connectionState == "connected":
                restart_transceivers(pc)

        pc.on("connectionstatechange", on_state)

    def _on_pub_channel(self, channel: RTCDataChannel) -> None:
        channel.on(
            "message", lambda m: self.data.append({**orjson.loads(m), "channel": channel.label})
        )

    async def handle(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        join = await recv(ws)
        await send(ws, joined(join["req"], [BOB]))
        self.sub_channel = self.sub.createDataChannel("_reliable")
        self.sub.createDataChannel("_lossy", ordered=False, maxRetransmits=0)
        offers = asyncio.ensure_future(self._offer_subscriber_twice())
        async for message in ws:
            await self._on_frame(orjson.loads(message.data))
        offers.cancel()
        await self.sub.close()
        await self.pub.close()

    async def offer_subscriber(self) -> None:
        assert self.ws is not None
        self.sub_answer = asyncio.get_running_loop().create_future()
        await self.sub.setLocalDescription(await self.sub.createOffer())
        await send(
            self.ws, {"type": "offer", "target": "subscriber", "sdp": self.sub.localDescription.sdp}
        )
        answer = await asyncio.wait_for(self.sub_answer, 5)
        await self.sub.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def _offer_subscriber_twice(self) -> None:
        await self.offer_subscriber()
        self.state_at_reoffer = self.sub.connectionState
        track = SyntheticVideoTrack()
        track._id = "TR_cam"  # the msid track id aiortc announces
        transceiver = self.sub.addTransceiver(track, direction="sendonly")
        transceiver.sender._stream_id = "PA_bob"  # the msid stream id: the publisher's sid
        await self.offer_subscriber()

    async def _on_frame(self, frame: Frame) -> None:
        assert self.ws is not None
        kind, req = frame["type"], frame.get("req")
        if kind == "answer":
            assert self.sub_answer is not None
            self.sub_answer.set_result(frame["sdp"])
        elif kind == "add_track":
            self.granted.add(frame["cid"])
            track = {"sid": f"TR_{len(self.granted)}", "kind": frame["kind"], "muted": False}
            await send(
                self.ws,
                {"type": "track_published", "req": req, "cid": frame["cid"], "track": track},
            )
        elif kind == "offer":
            answer = await negotiate_answer(self.pub, frame["sdp"])
            for section in describe_sections(frame["sdp"]):
                if section.kind != "application" and section.track_id not in self.granted:
                    mline = f"m={section.kind} 0 UDP/TLS/RTP/SAVPF 0"
                    answer = reject_section(answer, str(section.mid), mline, keep_transport=True)
            await send(
                self.ws, {"type": "answer", "target": "publisher", "req": req, "sdp": answer}
            )
        elif req is not None:
            await send(self.ws, {"type": "ok", "req": req})


async def negotiate_answer(pc: RTCPeerConnection, offer: str) -> str:
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return str(pc.localDescription.sdp)


@contextlib.asynccontextmanager
async def fake_sfu_client() -> AsyncIterator[tuple[KeyroomClient, FakeSfu]]:
    sfu = FakeSfu()
    async with scripted_server(sfu.handle) as url:
        client = KeyroomClient(url, "tok")
        await client.connect()
        try:
            yield client, sfu
        finally:
            await client.leave()
            assert_no_tasks_left(client)


async def test_subscriber_reoffer_during_dtls_setup_delivers_mapped_media(loopback: None) -> None:
    async with fake_sfu_client() as (client, sfu):
        remote = await client.next_track(timeout=5)
        assert sfu.state_at_reoffer != "connected"  # the case aiortc gets wrong on its own
        assert (remote.track_sid, remote.participant_sid, remote.kind) == (
            "TR_cam",
            "PA_bob",
            "video",
        )
        assert remote.participant_identity == "bob" and remote.info == BOB_CAM
        assert await count_frames(remote.track, 1.5) > 5
        await client.wait_ready(timeout=5)
        assert sfu.sub_channel is not None
        sfu.sub_channel.send(
            orjson.dumps(
                {"from": "bob", "from_sid": "PA_bob", "topic": "t", "payload": "hi"}
            ).decode()
        )
        message = await client.next_data(timeout=5)
        assert message == {
            "from": "bob",
            "from_sid": "PA_bob",
            "topic": "t",
            "payload": "hi",
            "channel": "_reliable",
        }

        # The section is recycled for another publisher's track: a new RemoteTrack, same media.
        await send_event(
            sfu,
            {
                "type": "participant_joined",
                "participant": {**BOB, "sid": "PA_carol", "identity": "carol", "tracks": []},
            },
        )
        sender = sfu.sub.getTransceivers()[0].sender
        replacement = SyntheticVideoTrack()
        replacement._id = "TR_cam2"
        sender.replaceTrack(replacement)
        sender._stream_id = "PA_carol"
        await sfu.offer_subscriber()
        recycled = await client.next_track(timeout=5)
        assert (recycled.track_sid, recycled.participant_identity) == ("TR_cam2", "carol")
        assert recycled.track is remote.track and remote.ended and not recycled.ended
        assert await count_frames(recycled.track, 1.0) > 3


async def send_event(sfu: FakeSfu, frame: Frame) -> None:
    assert sfu.ws is not None
    await send(sfu.ws, frame)


async def test_publish_media_then_data(loopback: None) -> None:
    async with fake_sfu_client() as (client, sfu):
        info = await client.publish(SyntheticVideoTrack(), source="camera", name="cam")
        assert info["sid"] == "TR_1"
        counter = await wait_published(sfu)
        await counter.wait_for(5, timeout=5)
        await counter.stop()
        await client.send_data("hello", topic="chat", to=["bob"])
        await client.send_data("fast", reliable=False)
        await eventually(lambda: len(sfu.data) == 2)
        assert sorted(sfu.data, key=lambda d: d["channel"]) == [
            {"topic": "", "payload": "fast", "channel": "_lossy"},
            {"topic": "chat", "payload": "hello", "to": ["bob"], "channel": "_reliable"},
        ]


async def test_data_only_then_media(loopback: None) -> None:
    async with fake_sfu_client() as (client, sfu):
        await client.send_data("first")
        await eventually(lambda: len(sfu.data) == 1)
        await client.publish(SyntheticAudioTrack(), source="microphone")
        counter = await wait_published(sfu)
        await counter.wait_for(10, timeout=5)
        await counter.stop()


async def test_ungranted_section_is_rejected_and_publishing_goes_on(loopback: None) -> None:
    async with fake_sfu_client() as (client, sfu):
        assert client.publisher_pc is not None
        sneaky = client.publisher_pc.addTransceiver(SyntheticVideoTrack(), direction="sendonly")
        assert await client.renegotiate_publisher() == {sneaky.mid}
        assert sneaky.currentDirection == "inactive"
        await client.publish(SyntheticAudioTrack(), source="microphone")
        counter = await wait_published(sfu, kind="audio")
        await counter.wait_for(10, timeout=5)
        await counter.stop()


async def wait_published(sfu: FakeSfu, kind: str = "") -> FrameCounter:
    await eventually(lambda: any(not kind or t.kind == kind for t in sfu.published))
    return FrameCounter(next(t for t in sfu.published if not kind or t.kind == kind))
