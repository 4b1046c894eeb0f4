"""The Janus VideoRoom baseline of issue 6: the same load generator against Janus (Debian `janus`).

Janus forwards RTP payloads untouched, as keyroom does, so the publishers' trailer still gives
loss and one-way latency. `spawned_janus` writes a minimal configuration (VideoRoom plugin and
WebSockets transport only, `event_loops = 2`: the tuned setting of
shared/notes/test-environment.md, no session timeout, one room for the load test) and starts
`janus`. libnice never gathers on loopback, so Janus and the load tester must run in a network
namespace holding both ends of a veth pair: Janus gathers on one end (`ice_enforce_list`), the
load-test clients on the other's address (docs/benchmarks.md has the commands).

`JanusClient` gives the load tester's publishers and subscribers the `KeyroomClient` members they
use (`loadtest.clients.LoadClient`), over the Janus API on WebSockets: create a session, attach
`janus.plugin.videoroom`; a publisher joins as `publisher` and publishes with an offer; a
subscriber lists the room's publishers, joins as `subscriber` with one stream per feed, answers
Janus's offer and sends `start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)

from loadtest.spawn import free_port, stop, wait_ready
from signaling.client import RemoteTrack

log = logging.getLogger(__name__)

ROOM = 4242
PLUGIN = "janus.plugin.videoroom"
JANUS_PLUGINS = "/usr/lib/x86_64-linux-gnu/janus"


class JanusError(RuntimeError):
    pass


def _configuration() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


class JanusClient:
    """One participant of a Janus VideoRoom, with the `LoadClient` members."""

    def __init__(self, url: str, token: str, auto_subscribe: bool = True) -> None:
        self.url = url
        self.auto_subscribe = auto_subscribe
        self.publisher_pc: RTCPeerConnection | None = None
        self.subscriber_pc: RTCPeerConnection | None = None
        self._callbacks: dict[str, list[Callable[[Any], Any]]] = {}
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._session = 0
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def connect(self, timeout: float = 10) -> dict[str, Any]:
        self._http = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(timeout):
                self._ws = await self._http.ws_connect(self.url, protocols=("janus-protocol",))
                self._reader = asyncio.ensure_future(self._read_loop(self._ws))
                reply = await self._request({"janus": "create"})
                self._session = int(reply["data"]["id"])
        except BaseException:
            await self.close()
            raise
        if self.auto_subscribe:
            self._spawn(self._subscribe(timeout))
        return {"session": self._session}

    async def publish(
        self, track: MediaStreamTrack, *, source: str = "camera", name: str = ""
    ) -> dict[str, Any]:
        handle = await self._attach()
        joined = await self._message(
            handle, {"request": "join", "ptype": "publisher", "room": ROOM, "display": name}
        )
        pc = self.publisher_pc = RTCPeerConnection(_configuration())
        pc.addTransceiver(track, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        reply = await self._message(
            handle, {"request": "publish"}, {"type": "offer", "sdp": pc.localDescription.sdp}
        )
        await pc.setRemoteDescription(RTCSessionDescription(reply["jsep"]["sdp"], "answer"))
        feed = joined["plugindata"]["data"]["id"]
        return {"sid": str(feed), "name": name, "source": source}

    def on(self, event_type: str, callback: Callable[[Any], Any]) -> None:
        self._callbacks.setdefault(event_type, []).append(callback)

    async def leave(self) -> None:
        if self._ws is not None and not self._ws.closed and self._session:
            with contextlib.suppress(ConnectionError, JanusError, TimeoutError):
                async with asyncio.timeout(2):
                    await self._request({"janus": "destroy", "session_id": self._session})
        await self.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for pc in (self.publisher_pc, self.subscriber_pc):
            if pc is not None:
                await pc.close()
        if self._http is not None:
            await self._http.close()

    async def _subscribe(self, timeout: float) -> None:
        # One loop turn first: connect()'s caller registers its track callback before any
        # track event can fire.
        await asyncio.sleep(0)
        async with asyncio.timeout(timeout):
            handle = await self._attach()
            listed = await self._message(handle, {"request": "listparticipants", "room": ROOM})
            feeds = [
                p["id"] for p in listed["plugindata"]["data"]["participants"] if p.get("publisher")
            ]
            if not feeds:
                raise JanusError("no publisher in the room to subscribe to")
            attached = await self._message(
                handle,
                {
                    "request": "join",
                    "ptype": "subscriber",
                    "room": ROOM,
                    "streams": [{"feed": feed} for feed in feeds],
                },
            )
            names = {
                str(s["mid"]): str(s.get("feed_display", ""))
                for s in attached["plugindata"]["data"].get("streams", [])
            }
            pc = self.subscriber_pc = RTCPeerConnection(_configuration())

            @pc.on("track")
            def on_track(track: MediaStreamTrack) -> None:
                # Fired inside setRemoteDescription, before aiortc starts the receiver: the
                # load tester's subscriber replaces the receiver's start there.
                mid = next(t.mid for t in pc.getTransceivers() if t.receiver.track is track)
                remote = RemoteTrack(
                    track=track,
                    track_sid=names.get(str(mid), ""),
                    participant_sid="",
                    participant_identity="",
                    kind=track.kind,
                    info=None,
                    mid=mid,
                )
                for callback in self._callbacks.get("track", []):
                    result = callback(remote)
                    if inspect.isawaitable(result):
                        self._spawn(result)

            await pc.setRemoteDescription(RTCSessionDescription(attached["jsep"]["sdp"], "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            await self._message(
                handle,
                {"request": "start"},
                {"type": "answer", "sdp": pc.localDescription.sdp},
            )

    async def _attach(self) -> int:
        reply = await self._request(
            {"janus": "attach", "session_id": self._session, "plugin": PLUGIN}
        )
        return int(reply["data"]["id"])

    async def _message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, str] | None = None
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "janus": "message",
            "session_id": self._session,
            "handle_id": handle,
            "body": body,
        }
        if jsep is not None:
            frame["jsep"] = jsep
        reply = await self._request(frame)
        data = reply.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{body.get('request')}: {data['error']}")
        return reply

    async def _request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a request and wait for its outcome (`success`, `event` or `error`; an `ack`
        only says an asynchronous request was queued)."""
        assert self._ws is not None
        transaction = secrets.token_hex(8)
        waiter = self._waiting[transaction] = asyncio.get_running_loop().create_future()
        await self._ws.send_json({**frame, "transaction": transaction})
        reply: dict[str, Any] = await waiter
        if reply["janus"] == "error":
            raise JanusError(str(reply.get("error")))
        return reply

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = message.json()
                if frame.get("janus") == "ack":
                    continue
                waiter = self._waiting.pop(str(frame.get("transaction")), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(frame)
        finally:
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("Janus closed the socket"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # A failed subscription shows in the report as the subscriber's connect timeout; the
        # cause goes to the log.
        if not task.cancelled() and task.exception() is not None:
            log.warning("janus client task failed: %r", task.exception())


def write_config(directory: str, *, port: int, interface: str, event_loops: int = 2) -> str:
    """A Janus configuration folder with only what the load test uses; returns janus.jcfg."""
    plugins = os.path.join(JANUS_PLUGINS, "plugins")
    transports = os.path.join(JANUS_PLUGINS, "transports")
    disabled_plugins = sorted(
        f for f in os.listdir(plugins) if f.endswith(".so") and "videoroom" not in f
    )
    disabled_transports = sorted(
        f for f in os.listdir(transports) if f.endswith(".so") and "websockets" not in f
    )
    files = {
        "janus.jcfg": f"""general: {{
    configs_folder = "{directory}"
    plugins_folder = "{plugins}"
    transports_folder = "{transports}"
    events_folder = "{os.path.join(JANUS_PLUGINS, "events")}"
    loggers_folder = "{os.path.join(JANUS_PLUGINS, "loggers")}"
    debug_level = 3
    session_timeout = 0
    event_loops = {event_loops}
}}
media: {{
}}
nat: {{
    nice_debug = false
    ice_enforce_list = "{interface}"
}}
plugins: {{
    disable = "{",".join(disabled_plugins)}"
}}
transports: {{
    disable = "{",".join(disabled_transports)}"
}}
events: {{
    broadcast = false
}}
""",
        "janus.transport.websockets.jcfg": f"""general: {{
    json = "compact"
    ws = true
    ws_port = {port}
    ws_ip = "127.0.0.1"
    wss = false
}}
admin: {{
    admin_ws = false
    admin_wss = false
}}
""",
        # No bitrate cap (REMB) and no periodic keyframe requests: keyroom sends neither.
        "janus.plugin.videoroom.jcfg": f"""general: {{
}}
room-{ROOM}: {{
    description = "keyroom load test"
    publishers = 100
    bitrate = 0
    fir_freq = 0
    audiocodec = "opus"
    videocodec = "vp8,h264"
    notify_joining = false
}}
""",
    }
    for name, text in files.items():
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)
    return os.path.join(directory, "janus.jcfg")


@contextlib.contextmanager
def spawned_janus(log_dir: str, interface: str) -> Iterator[tuple[str, int]]:
    """Janus with `write_config`'s configuration on a free loopback port, gathering ICE only on
    `interface`; yields its ws:// URL and pid."""
    janus = shutil.which("janus")
    if janus is None:
        raise RuntimeError("janus is not installed (Debian: apt-get install janus)")
    port = free_port()
    config_dir = os.path.join(log_dir, f"janus-{port}")
    os.makedirs(config_dir)
    config = write_config(config_dir, port=port, interface=interface)
    log_path = os.path.join(log_dir, f"janus-{port}.log")
    command = [janus, "-C", config, "-F", config_dir, "-o", "-L", log_path, "-N"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_ready(
            process,
            lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close(),
            log_path,
            "janus",
        )
        yield f"ws://127.0.0.1:{port}", process.pid
    finally:
        stop(process)
