"""The naive aiortc SFU a Python developer would write: the MediaRelay baseline of issue 6.

Each publisher's track is received by aiortc's own pipeline (depacketizer, jitter buffer and a
decoder thread per track), shared with `aiortc.contrib.media.MediaRelay` (decode once) and added
to every subscriber's peer connection, where aiortc's sender encodes it again for that
subscriber (encode per subscriber, in the default thread pool). This is the pattern of aiortc's
own example server.

The server speaks a minimal JSON-over-WebSocket protocol, not keyroom's; `BaselineClient` gives
the load tester's publishers and subscribers the `KeyroomClient` members they use
(`loadtest.clients.LoadClient`), so the same clip, pacing, clients and CPU sampling run against
both servers. Tokens are not checked (one room per server process), so scenarios with bad tokens
make no sense against it.

Protocol (client to server unless noted):
    {"type": "join", "subscribe": bool}         -> {"type": "joined"}
    server: {"type": "offer", "sdp", "tracks": {mid: {"name", "ssrcs", "mime_type"}}}
                                                 <- {"type": "answer", "sdp"} (subscribers)
    {"type": "publish", "sdp", "name"}          -> {"type": "published", "sdp", "sid"}
    {"type": "leave"}                           -> the server closes the socket
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay

from loadtest.spawn import free_port, spawned
from sfu.iceaddr import restrict_host_addresses
from signaling.client import RemoteTrack, describe_sections

log = logging.getLogger(__name__)


def _configuration() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


@dataclass
class Room:
    relay: MediaRelay = field(default_factory=MediaRelay)
    tracks: dict[str, MediaStreamTrack] = field(default_factory=dict)  # name -> received track
    pcs: set[RTCPeerConnection] = field(default_factory=set)


async def _session(request: web.Request) -> web.WebSocketResponse:
    room: Room = request.app["room"]
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    owned: list[RTCPeerConnection] = []
    published: list[str] = []
    subscriber: RTCPeerConnection | None = None
    try:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            frame = message.json()
            kind = frame.get("type")
            if kind == "join":
                await ws.send_json({"type": "joined"})
                if frame.get("subscribe"):
                    subscriber = RTCPeerConnection(_configuration())
                    owned.append(subscriber)
                    await ws.send_json(await _subscriber_offer(room, subscriber))
            elif kind == "answer" and subscriber is not None:
                await subscriber.setRemoteDescription(RTCSessionDescription(frame["sdp"], "answer"))
            elif kind == "publish":
                pc = RTCPeerConnection(_configuration())
                owned.append(pc)
                name = str(frame["name"])

                @pc.on("track")
                def on_track(track: MediaStreamTrack, name: str = name) -> None:
                    room.tracks[name] = track

                await pc.setRemoteDescription(RTCSessionDescription(frame["sdp"], "offer"))
                await pc.setLocalDescription(await pc.createAnswer())
                published.append(name)
                await ws.send_json(
                    {"type": "published", "sdp": pc.localDescription.sdp, "sid": name}
                )
            elif kind == "leave":
                break
    finally:
        for name in published:
            room.tracks.pop(name, None)
        for pc in owned:
            await pc.close()
        await ws.close()
    return ws


async def _subscriber_offer(room: Room, pc: RTCPeerConnection) -> dict[str, Any]:
    """An offer with one sendonly section per published track, each a relay proxy that this
    subscriber's own encoder consumes."""
    names = list(room.tracks)
    for name in names:
        pc.addTransceiver(room.relay.subscribe(room.tracks[name]), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    tracks = {}
    for name, transceiver, section in zip(
        names, pc.getTransceivers(), describe_sections(sdp), strict=True
    ):
        codecs = [c for c in transceiver._codecs if not c.mimeType.lower().endswith("/rtx")]
        tracks[str(transceiver.mid)] = {
            "name": name,
            "ssrcs": list(section.ssrcs),
            # The offer's first codec; an aiortc answerer keeps the offerer's order.
            "mime_type": codecs[0].mimeType if codecs else "",
        }
    return {"type": "offer", "sdp": sdp, "tracks": tracks}


def make_app() -> web.Application:
    app = web.Application()
    app["room"] = Room()
    app.router.add_get("/rtc", _session)
    app.router.add_get("/healthz", _healthz)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


class BaselineClient:
    """One participant of the baseline server, with the `LoadClient` members."""

    def __init__(self, url: str, token: str, auto_subscribe: bool = True) -> None:
        self.url = url
        self.auto_subscribe = auto_subscribe
        self.publisher_pc: RTCPeerConnection | None = None
        self.subscriber_pc: RTCPeerConnection | None = None
        self._callbacks: dict[str, list[Callable[[Any], Any]]] = {}
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def connect(self, timeout: float = 10) -> dict[str, Any]:
        self._http = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(timeout):
                self._ws = await self._http.ws_connect(self.url)
                self._reader = asyncio.ensure_future(self._read_loop(self._ws))
                return await self._request(
                    {"type": "join", "subscribe": self.auto_subscribe}, "joined"
                )
        except BaseException:
            await self.close()
            raise

    async def publish(
        self, track: MediaStreamTrack, *, source: str = "camera", name: str = ""
    ) -> dict[str, Any]:
        pc = self.publisher_pc = RTCPeerConnection(_configuration())
        pc.addTransceiver(track, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        reply = await self._request(
            {"type": "publish", "sdp": pc.localDescription.sdp, "name": name}, "published"
        )
        await pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        return {"sid": reply["sid"], "name": name, "source": source}

    def on(self, event_type: str, callback: Callable[[Any], Any]) -> None:
        self._callbacks.setdefault(event_type, []).append(callback)

    async def leave(self) -> None:
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(ConnectionError):
                await self._ws.send_json({"type": "leave"})
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pc in (self.publisher_pc, self.subscriber_pc):
            if pc is not None:
                await pc.close()
        if self._http is not None:
            await self._http.close()

    async def _request(self, frame: dict[str, Any], reply_type: str) -> dict[str, Any]:
        assert self._ws is not None
        waiter = self._waiting[reply_type] = asyncio.get_running_loop().create_future()
        await self._ws.send_json(frame)
        reply: dict[str, Any] = await waiter
        return reply

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = message.json()
                waiter = self._waiting.pop(frame.get("type"), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(frame)
                elif frame.get("type") == "offer":
                    self._spawn(self._answer(frame))
        finally:
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("baseline server closed the socket"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # A failed subscription shows in the report as the subscriber's connect timeout; the
        # cause goes to the log.
        if not task.cancelled() and task.exception() is not None:
            log.warning("baseline client task failed: %r", task.exception())

    async def _answer(self, frame: dict[str, Any]) -> None:
        # One loop turn first: the `joined` reply wakes connect()'s caller, which registers its
        # track callback before any track event fires.
        await asyncio.sleep(0)
        pc = self.subscriber_pc = RTCPeerConnection(_configuration())
        tracks: dict[str, dict[str, Any]] = frame["tracks"]

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            # Fired inside setRemoteDescription, before aiortc starts the receiver: the load
            # tester's subscriber replaces the receiver's start there, as with keyroom.
            mid = next(t.mid for t in pc.getTransceivers() if t.receiver.track is track)
            info = tracks[str(mid)]
            remote = RemoteTrack(
                track=track,
                track_sid=info["name"],
                participant_sid="",
                participant_identity="",
                kind=track.kind,
                info=info,
                mid=mid,
            )
            for callback in self._callbacks.get("track", []):
                result = callback(remote)
                if inspect.isawaitable(result):
                    self._spawn(result)

        await pc.setRemoteDescription(RTCSessionDescription(frame["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        assert self._ws is not None
        await self._ws.send_json({"type": "answer", "sdp": pc.localDescription.sdp})


@contextlib.contextmanager
def spawned_baseline(log_dir: str) -> Iterator[tuple[str, int]]:
    """The baseline server on a free loopback port: yields its ws:// URL and pid."""
    port = free_port()
    command = [sys.executable, "-m", "loadtest.baseline_relay", "--port", str(port)]
    log_path = os.path.join(log_dir, f"baseline-{port}.log")
    with spawned(command, port, log_path, "baseline server") as pid:
        yield f"ws://127.0.0.1:{port}/rtc", pid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7890)
    parser.add_argument("--rtc-ip", default="127.0.0.1", help="the one ICE host address")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    restrict_host_addresses([args.rtc_ip])
    import uvloop

    # The same loop as `keyroom serve`, so the comparison is of the media paths.
    web.run_app(
        make_app(), host=args.host, port=args.port, print=None, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
