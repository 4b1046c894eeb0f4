"""Python client of the keyroom signaling protocol (PROTOCOL.md section 2) on top of aiortc.

One `KeyroomClient` is one participant: a WebSocket (aiohttp) for signaling, a publisher
RTCPeerConnection (the client offers) and a subscriber RTCPeerConnection (the server offers).
It is used by the tests, the load tester and bots:

    client = KeyroomClient("ws://127.0.0.1:7880/rtc", token)
    joined = await client.connect()
    info = await client.publish(SyntheticVideoTrack())
    remote = await client.next_track()
    frames = await count_frames(remote.track, 2.0)
    await client.leave()

It works around several aiortc 1.16 limitations (see docs in the functions below and
shared/notes/test-environment.md): rejected media sections, transceivers negotiated while DTLS is
still connecting, and data channels created before the first media transceiver.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl as ssl_module
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp
import orjson
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp

from signaling.media import FrameCounter, count_frames
from signaling.protocol import DATA_CHANNELS, PROTOCOL_VERSION

__all__ = [
    "DATA_CHANNELS",
    "FrameCounter",
    "KeyroomClient",
    "KeyroomError",
    "MediaSectionInfo",
    "RemoteTrack",
    "SessionClosed",
    "count_frames",
    "describe_sections",
    "make_rejected_sections_applicable",
    "restart_transceivers",
]

log = logging.getLogger(__name__)

CLIENT_INFO = {"sdk": "python", "version": "0.1"}

# How long connect() waits for the close that follows a refused join, to report its code.
_REFUSAL_CLOSE_WAIT = 2.0

Frame = dict[str, Any]
T = TypeVar("T")


class KeyroomError(Exception):
    """The server answered a request with an `error` frame (or refused the join).

    `code` is the protocol error code (`unauthorized`, `forbidden`, ...), `message` the human
    text, `frame` the whole error frame and `close_code` the WebSocket close code that followed a
    refused join (4401, 4403, ...), else None.
    """

    def __init__(
        self,
        code: str,
        message: str = "",
        frame: Frame | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.frame = frame or {}
        self.close_code = close_code


class SessionClosed(Exception):
    """The session ended (server `leave` and/or socket close) before the awaited thing happened.

    `close_code` is the WebSocket close code (None if the socket dropped without one) and
    `reason` the server's `leave` reason, if it sent one.
    """

    def __init__(self, close_code: int | None, reason: str | None) -> None:
        super().__init__(f"session closed (code={close_code}, reason={reason})")
        self.close_code = close_code
        self.reason = reason


@dataclass
class RemoteTrack:
    """A track received on the subscriber PC and the publisher it belongs to.

    `track` is aiortc's RemoteStreamTrack: call `await track.recv()` (or `count_frames`) to
    consume decoded frames, otherwise they pile up in memory. `participant_identity` and `info`
    (TrackInfo) are filled from the client's participant state, as soon as it knows them.
    `ended` turns true when the server's offer stops sending on the track's section.
    """

    track: MediaStreamTrack
    track_sid: str
    participant_sid: str
    participant_identity: str
    kind: str
    info: Frame | None
    mid: str | None = None
    ended: bool = False


@dataclass(frozen=True)
class MediaSectionInfo:
    """What one m= section of an SDP says (see `describe_sections`)."""

    index: int
    kind: str
    port: int
    mid: str | None
    direction: str
    stream_id: str | None
    track_id: str | None
    ssrcs: tuple[int, ...]
    has_codecs: bool

    @property
    def rejected(self) -> bool:
        """Port 0, or an inactive media section: the other side sends nothing here."""
        return self.port == 0 or (self.kind != "application" and self.direction == "inactive")


# --------------------------------------------------------------------------------------------
# SDP helpers (pure text in, text out)

_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_CODEC_PREFIXES = ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")
_TRANSPORT_PREFIXES = ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:")
_SCTP_PREFIXES = ("a=sctp-port:", "a=max-message-size:", "a=sctpmap:")
_DEFAULT_CODECS = {
    "audio": (["111"], ["a=rtpmap:111 opus/48000/2"]),
    "video": (["96"], ["a=rtpmap:96 VP8/90000"]),
}


def _split_sdp(sdp: str) -> tuple[list[str], list[list[str]]]:
    session: list[str] = []
    sections: list[list[str]] = []
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def _join_sdp(session: list[str], sections: list[list[str]]) -> str:
    return "\r\n".join(session + [line for section in sections for line in section]) + "\r\n"


def _attr(lines: list[str], prefix: str) -> str | None:
    return next((line[len(prefix) :].strip() for line in lines if line.startswith(prefix)), None)


def _mline(line: str) -> tuple[str, int, str, list[str]]:
    kind, port, proto, *fmt = line[2:].split()
    return kind, int(port.split("/")[0]), proto, fmt


def describe_sections(sdp: str) -> list[MediaSectionInfo]:
    """List the m= sections of `sdp` with their mid, direction, msid and SSRCs.

    The msid comes from `a=msid:<stream> <track>`, else from `a=ssrc:<n> msid:<stream> <track>`.
    In a keyroom subscriber offer the stream id is the publisher's participant sid and the track
    id the track sid.
    """
    infos = []
    for index, lines in enumerate(_split_sdp(sdp)[1]):
        kind, port, _, _ = _mline(lines[0])
        msid = _attr(lines, "a=msid:")
        ssrcs: list[int] = []
        for line in lines:
            if line.startswith("a=ssrc:"):
                ssrc_text, _, rest = line[len("a=ssrc:") :].partition(" ")
                if int(ssrc_text) not in ssrcs:
                    ssrcs.append(int(ssrc_text))
                if msid is None and rest.startswith("msid:"):
                    msid = rest[len("msid:") :]
        stream_id, track_id = (msid.split() + [None, None])[:2] if msid else (None, None)
        direction = next((d for d in _DIRECTIONS if f"a={d}" in lines), "sendrecv")
        infos.append(
            MediaSectionInfo(
                index=index,
                kind=kind,
                port=port,
                mid=_attr(lines, "a=mid:"),
                direction=direction,
                stream_id=stream_id,
                track_id=track_id,
                ssrcs=tuple(ssrcs),
                has_codecs=any(line.startswith("a=rtpmap:") for line in lines),
            )
        )
    return infos


def make_rejected_sections_applicable(sdp: str, reference: str | None = None) -> str:
    """Rewrite rejected sections of a remote description so that aiortc can apply it.

    aiortc raises on a section with port 0 and no codecs (no rtpmap, or no format at all), and
    on one without ICE credentials or DTLS setup; a rejected section also drops out of the
    BUNDLE group, so aiortc would give it a transport of its own. Each such section becomes an
    inactive, bundled section: codecs are taken from the section itself, else from the same
    section of `reference` (our own offer when `sdp` is an answer, our previous answer when it is
    a re-offer), else a default codec of the kind; transport attributes from the first live
    section. Sections that are fine are left byte for byte.
    """
    session, sections = _split_sdp(sdp)
    ref_sections = _split_sdp(reference)[1] if reference else []
    broken = [
        i
        for i, lines in enumerate(sections)
        if _mline(lines[0])[1] == 0
        or (
            _mline(lines[0])[0] in _DEFAULT_CODECS
            and not any(line.startswith("a=rtpmap:") for line in lines)
        )
    ]
    if not broken:
        return sdp
    live = next((s for i, s in enumerate(sections) if i not in broken), [])
    fixed_mids: list[str] = []
    for i in broken:
        old = sections[i]
        kind, _, proto, fmt = _mline(old[0])
        ref = ref_sections[i] if i < len(ref_sections) else []
        if ref and _mline(ref[0])[0] != kind:
            ref = []
        mid = _attr(old, "a=mid:") or _attr(ref, "a=mid:")
        body = ["c=IN IP4 0.0.0.0"]
        if kind in _DEFAULT_CODECS:
            codecs = [line for line in old if line.startswith(_CODEC_PREFIXES)]
            if not any(line.startswith("a=rtpmap:") for line in codecs):
                codecs = [line for line in ref if line.startswith(_CODEC_PREFIXES)]
                fmt = _mline(ref[0])[3] if ref else []
            if not any(line.startswith("a=rtpmap:") for line in codecs):
                fmt, codecs = _DEFAULT_CODECS[kind]
            body += ["a=inactive", "a=rtcp-mux", *codecs]
        else:
            body += [line for line in old if line.startswith(_SCTP_PREFIXES)] or [
                line for line in ref if line.startswith(_SCTP_PREFIXES)
            ]
        if mid is not None:
            body.append(f"a=mid:{mid}")
            fixed_mids.append(mid)
        for prefix in _TRANSPORT_PREFIXES:
            if any(line.startswith(prefix) for line in session):
                continue
            own = [line for line in old if line.startswith(prefix)]
            body += own or [line for line in live if line.startswith(prefix)]
        sections[i] = [f"m={kind} 9 {proto} {' '.join(fmt)}".rstrip(), *body]
    # In m-line order, as aiortc bundles: it takes the first mid as the transport of all, and
    # a change of that first mid would move every section onto a new, unconnected transport.
    for n, line in enumerate(session):
        if line.startswith("a=group:BUNDLE"):
            items = set(line.split()[1:]) | set(fixed_mids)
            mids = [_attr(lines, "a=mid:") for lines in sections]
            session[n] = " ".join(["a=group:BUNDLE", *(m for m in mids if m in items)])
    return _join_sdp(session, sections)


# --------------------------------------------------------------------------------------------
# aiortc workarounds


def restart_transceivers(pc: RTCPeerConnection) -> asyncio.Future[None]:
    """Start the senders/receivers of `pc` that aiortc 1.16 left unstarted; call once connected.

    aiortc starts a transceiver's sender/receiver in its private `__connect`, and only when the
    DTLS transport is already "connected" at that moment. A transceiver negotiated while DTLS is
    still connecting is skipped and never started. `__connect` is idempotent (ICE/DTLS start
    only once, `send`/`receive` only once per transceiver), so running it again once the
    connection is up starts exactly the ones that were skipped.
    """
    # Outside a class body the name is not mangled again: this is aiortc's private method.
    connect: Callable[[], Coroutine[Any, Any, None]]
    connect = pc._RTCPeerConnection__connect  # type: ignore[attr-defined]
    return asyncio.ensure_future(connect())


def _transceiver_of(pc: RTCPeerConnection, track: MediaStreamTrack) -> RTCRtpTransceiver | None:
    return next((t for t in pc.getTransceivers() if t.receiver.track is track), None)


def _ice_servers(servers: list[dict[str, Any]]) -> list[RTCIceServer]:
    return [
        RTCIceServer(
            urls=server["urls"],
            username=server.get("username"),
            credential=server.get("credential"),
        )
        for server in servers
    ]


class _Inbox(Generic[T]):
    """Items in arrival order; a get() takes the first item that matches, waiting for one."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._changed = asyncio.Event()
        self._closed: BaseException | None = None

    def put(self, item: T) -> None:
        self._items.append(item)
        self._wake()

    def close(self, exc: BaseException) -> None:
        self._closed = exc
        self._wake()

    def _wake(self) -> None:
        # A fresh Event per change: every waiter wakes, rescans, and waits on the next one.
        self._changed.set()
        self._changed = asyncio.Event()

    async def get(self, match: Callable[[T], bool], timeout: float, what: str) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for n, item in enumerate(self._items):
                if match(item):
                    return self._items.pop(n)
            if self._closed is not None:
                raise self._closed
            changed = self._changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no {what} within {timeout} s")
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                raise TimeoutError(f"no {what} within {timeout} s") from None


# --------------------------------------------------------------------------------------------


class KeyroomClient:
    """One participant of a keyroom room (see the module docstring for an example).

    State after `connect()`: `joined` (the whole `joined` payload), `room`, `participant` (own
    ParticipantInfo), `permissions`, `participants` (sid -> ParticipantInfo of the others, kept
    up to date from events, tracks included), `events` (every server event, in order),
    `remote_tracks` (mid -> RemoteTrack). After the session ends: `close_code` and
    `leave_reason`.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        auto_subscribe: bool = True,
        ice_servers: list[dict[str, Any]] | None = None,
        client_info: dict[str, Any] | None = None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        """`url` is the signaling endpoint (ws://host:port/rtc, or wss://… verified against
        `ssl` when given, else the system's CAs). `ice_servers` (dicts shaped
        like `joined.ice_servers`) configure both PCs; without it they use no STUN/TURN server at
        all (aiortc would otherwise add a public STUN server): the servers that `joined`
        advertises are not used unless passed here. `ice_transport_policy: "relay"` in `joined`
        is honoured."""
        self.url = url
        self.token = token
        self.auto_subscribe = auto_subscribe
        self.ice_servers = ice_servers or []
        self.client_info = client_info or dict(CLIENT_INFO)
        self.ssl = ssl

        self.joined: Frame = {}
        self.room: Frame = {}
        self.participant: Frame = {}
        self.permissions: Frame = {}
        self.participants: dict[str, Frame] = {}
        self.events: list[Frame] = []
        self.remote_tracks: dict[str, RemoteTrack] = {}
        self.close_code: int | None = None
        self.leave_reason: str | None = None
        self.publisher_pc: RTCPeerConnection | None = None
        self.subscriber_pc: RTCPeerConnection | None = None

        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._send_lock = asyncio.Lock()
        self._publisher_lock = asyncio.Lock()
        self._next_req = 1
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._closed = False
        self._torn_down = False
        self._teardown_lock = asyncio.Lock()
        self._server_teardown: asyncio.Future[None] | None = None
        self._event_inbox: _Inbox[Frame] = _Inbox()
        self._track_inbox: _Inbox[RemoteTrack] = _Inbox()
        self._data_inbox: _Inbox[Frame] = _Inbox()
        self._callbacks: dict[str, list[Callable[[Any], Any]]] = {}
        # Subscriber offers and trickles, applied strictly in arrival order by one worker.
        self._subscriber_queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._subscriber_sections: dict[str, MediaSectionInfo] = {}
        self._subscriber_channels: dict[str, RTCDataChannel] = {}
        self._publisher_channels: dict[str, RTCDataChannel] = {}
        self._data_refused = False
        self._published: dict[str, RTCRtpTransceiver] = {}

    # ---------------------------------------------------------------- session

    async def connect(self, timeout: float = 10) -> Frame:
        """Open the socket, join, and return the `joined` payload.

        Raises KeyroomError when the server refuses the join (with `close_code` set from the
        close that follows, e.g. 4401), SessionClosed when the socket closes without an error
        frame, aiohttp.WSServerHandshakeError when the upgrade is refused (e.g. 403).
        """
        self._http = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(timeout):
                self._ws = await self._http.ws_connect(
                    self.url, autoping=True, ssl=self.ssl if self.ssl is not None else True
                )
            self._reader = asyncio.ensure_future(self._read_loop(self._ws))
            join = {
                "type": "join",
                "token": self.token,
                "protocol": PROTOCOL_VERSION,
                "auto_subscribe": self.auto_subscribe,
                "client": self.client_info,
            }
            return await self.request(join, timeout=timeout)
        except KeyroomError as exc:
            await self._wait_reader(_REFUSAL_CLOSE_WAIT)
            exc.close_code = self.close_code
            await self._abort()
            raise
        except SessionClosed as exc:
            await self._abort()
            error = next((e for e in reversed(self.events) if e.get("type") == "error"), None)
            if error is not None:
                raise KeyroomError(
                    str(error.get("code")), str(error.get("message", "")), error, exc.close_code
                ) from exc
            raise
        except BaseException:
            await self._abort()
            raise

    async def leave(self) -> None:
        """Send `leave`, close the socket cleanly, close both PCs; waits for all tasks."""
        if not self._closed and self._ws is not None:
            try:
                # Waiting for the reply means the server has processed the leave (and told the
                # others) before this returns: leaves from one program happen in order.
                await self.request({"type": "leave"}, timeout=5)
            except (SessionClosed, ConnectionError, KeyroomError, TimeoutError):
                log.debug("no reply to leave; closing anyway")
            try:
                await self._ws.close()
            except (SessionClosed, ConnectionError):
                log.debug("socket already gone while leaving")
        await self._wait_reader(None)
        await self._teardown()

    async def close(self) -> None:
        """Drop the session without `leave` (the TCP connection is cut, no close frame), as a
        network failure would; closes both PCs and waits for all tasks."""
        await self._abort()

    async def _abort(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        await self._wait_reader(None)
        if self._ws is not None and not self._ws.closed:
            # aiohttp has no public abort: closing the response drops the TCP connection without
            # a close frame and releases it (closing only the session leaks it).
            self._ws._response.close()
        await self._teardown()

    async def _wait_reader(self, timeout: float | None) -> None:
        if self._reader is None:
            return
        done, _ = await asyncio.wait([self._reader], timeout=timeout)
        if not done:
            self._reader.cancel()
            await asyncio.wait([self._reader])

    async def _teardown(self) -> None:
        async with self._teardown_lock:
            if self._torn_down:
                return
            self._torn_down = True
            self._mark_closed(self.close_code)
            for pc in (self.publisher_pc, self.subscriber_pc):
                if pc is not None:
                    await pc.close()
            while self._tasks:
                tasks = list(self._tasks)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            if self._http is not None:
                await self._http.close()

    def _mark_closed(self, close_code: int | None) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_code = close_code
        exc = SessionClosed(close_code, self.leave_reason)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()
        for inbox in (self._event_inbox, self._track_inbox, self._data_inbox):
            inbox.close(exc)

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    try:
                        frame = orjson.loads(message.data)
                    except orjson.JSONDecodeError:
                        log.warning("undecodable frame from server: %.200s", message.data)
                        continue
                    if isinstance(frame, dict):
                        self._dispatch(frame)
                    else:
                        log.warning("non-object frame from server: %.200s", message.data)
                else:
                    log.warning("unexpected %s message from server", message.type)
        except asyncio.CancelledError:
            self._mark_closed(None)
            raise
        self._mark_closed(ws.close_code)
        # The server ended the session: release the PCs now, not when the owner notices
        # (leave()/close() then wait for this same teardown).
        self._server_teardown = asyncio.ensure_future(self._teardown())

    # ---------------------------------------------------------------- requests

    async def request(self, frame: Frame, timeout: float = 10) -> Frame:
        """Send `frame` with a fresh integer `req` and return the server's direct reply.

        Raises KeyroomError for an `error` reply, SessionClosed if the session ends first,
        TimeoutError after `timeout` seconds.
        """
        if self._closed:
            raise SessionClosed(self.close_code, self.leave_reason)
        req = self._next_req
        self._next_req += 1
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[req] = future
        try:
            await self._send({**frame, "req": req})
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(req, None)
        if reply.get("type") == "error":
            raise KeyroomError(str(reply.get("code")), str(reply.get("message", "")), reply)
        return reply

    async def send_raw(self, text: str | bytes) -> None:
        """Send `text` as is (bytes as a binary frame): for tests of malformed frames."""
        ws = self._require_ws()
        async with self._send_lock:
            if isinstance(text, bytes):
                await ws.send_bytes(text)
            else:
                await ws.send_str(text)

    async def _send(self, frame: Frame) -> None:
        ws = self._require_ws()
        try:
            async with self._send_lock:
                await ws.send_str(orjson.dumps(frame).decode())
        except ConnectionError as exc:
            raise SessionClosed(self.close_code, self.leave_reason) from exc

    def _require_ws(self) -> aiohttp.ClientWebSocketResponse:
        if self._closed or self._ws is None:
            raise SessionClosed(self.close_code, self.leave_reason)
        return self._ws

    async def ping(self) -> float:
        """Round trip of a `ping`/`pong`, in seconds."""
        start = time.perf_counter()
        await self.request({"type": "ping"})
        return time.perf_counter() - start

    # ---------------------------------------------------------------- incoming frames

    def _dispatch(self, frame: Frame) -> None:
        kind = frame.get("type")
        req = frame.get("req")
        future = self._pending.pop(req, None) if isinstance(req, int) else None
        if future is not None:
            if kind == "joined":
                self._on_joined(frame)
            if not future.done():
                future.set_result(frame)
        elif isinstance(req, int) and kind != "error":
            log.debug("reply to no pending request dropped: %s", frame)
        elif kind == "offer" and frame.get("target") == "subscriber":
            self._subscriber_queue.put_nowait(("offer", frame.get("sdp", "")))
        elif kind == "trickle":
            self._on_trickle(frame)
        else:
            # Events, and errors that answer no pending request (e.g. to send_raw frames).
            self._on_event(frame)

    def _on_joined(self, frame: Frame) -> None:
        # Applied by the reader before the join future resolves: events that follow `joined`
        # immediately must land on this state, not be overwritten by it.
        self.joined = frame
        self.room = frame.get("room") or {}
        self.participant = frame.get("participant") or {}
        self.permissions = self.participant.get("permissions") or {}
        self.participants = {p["sid"]: p for p in frame.get("participants") or []}
        policy = (
            RTCIceTransportPolicy.RELAY
            if frame.get("ice_transport_policy") == "relay"
            else RTCIceTransportPolicy.ALL
        )

        def configuration() -> RTCConfiguration:
            # iceServers is never None: aiortc would add a public STUN server.
            return RTCConfiguration(
                iceServers=_ice_servers(self.ice_servers),
                iceTransportPolicy=policy,
                bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
            )

        self.publisher_pc = RTCPeerConnection(configuration())
        self.subscriber_pc = RTCPeerConnection(configuration())
        for pc in (self.publisher_pc, self.subscriber_pc):
            self._watch_connection(pc)
        self.subscriber_pc.on("track", self._on_remote_track)
        self.subscriber_pc.on("datachannel", self._on_subscriber_channel)
        self._spawn(self._subscriber_worker())

    def _watch_connection(self, pc: RTCPeerConnection) -> None:
        def on_state() -> None:
            if pc.connectionState == "connected":
                self._track_task(restart_transceivers(pc))

        pc.on("connectionstatechange", on_state)

    def _on_trickle(self, frame: Frame) -> None:
        candidate = frame.get("candidate")
        if not isinstance(candidate, dict):
            log.warning("trickle without a candidate object: %s", frame)
        elif frame.get("target") == "subscriber":
            self._subscriber_queue.put_nowait(("trickle", candidate))
        elif frame.get("target") == "publisher":
            self._spawn(self._publisher_trickle(candidate))

    async def _publisher_trickle(self, candidate: Frame) -> None:
        # After the negotiation in flight, if any: the answer must be applied first.
        async with self._publisher_lock:
            if self.publisher_pc is not None:
                await self._add_candidate(self.publisher_pc, candidate)

    async def _add_candidate(self, pc: RTCPeerConnection, candidate: Frame) -> None:
        text = str(candidate.get("candidate") or "").removeprefix("candidate:")
        if not text:
            return  # end-of-candidates: aiortc needs no signal for it
        try:
            ice = candidate_from_sdp(text)
            ice.sdpMid = candidate.get("sdpMid")
            ice.sdpMLineIndex = candidate.get("sdpMLineIndex")
            await pc.addIceCandidate(ice)
        except Exception as exc:  # a bad candidate must not break the session
            log.warning("ignored bad trickle candidate %r: %s", candidate, exc)

    def _on_event(self, frame: Frame) -> None:
        kind = frame.get("type")
        if kind == "leave":
            self.leave_reason = frame.get("reason")
        self._apply_event(frame)
        self.events.append(frame)
        self._event_inbox.put(frame)
        self._fire(str(kind), frame)

    def _apply_event(self, frame: Frame) -> None:
        kind = frame.get("type")
        own_sid = self.participant.get("sid")
        if kind in ("participant_joined", "participant_updated"):
            info = frame.get("participant") or {}
            if info.get("sid") == own_sid:
                self.participant = info
                self.permissions = info.get("permissions") or self.permissions
            elif "sid" in info:
                self.participants[info["sid"]] = info
                self._resolve_tracks(info["sid"])
        elif kind == "participant_left":
            self.participants.pop(frame.get("sid", ""), None)
        elif kind == "permissions_changed":
            self.permissions = frame.get("permissions") or {}
            self.participant["permissions"] = self.permissions
        elif kind == "room_updated":
            self.room = frame.get("room") or self.room
        elif kind in ("track_published", "track_unpublished", "track_muted"):
            self._apply_track_event(frame)

    def _apply_track_event(self, frame: Frame) -> None:
        sid = frame.get("participant_sid")
        owner = (
            self.participant
            if sid == self.participant.get("sid")
            else self.participants.get(sid or "")
        )
        if owner is None:
            return
        tracks: list[Frame] = owner.setdefault("tracks", [])
        kind = frame.get("type")
        if kind == "track_published":
            track = frame.get("track") or {}
            tracks[:] = [t for t in tracks if t.get("sid") != track.get("sid")] + [track]
            self._resolve_tracks(str(sid))
        elif kind == "track_unpublished":
            tracks[:] = [t for t in tracks if t.get("sid") != frame.get("track_sid")]
        else:
            for track in tracks:
                if track.get("sid") == frame.get("track_sid"):
                    track["muted"] = bool(frame.get("muted"))

    def _resolve_tracks(self, participant_sid: str) -> None:
        """Fill identity/TrackInfo of remote tracks once the participant state has them."""
        info = self.participants.get(participant_sid)
        if info is None:
            return
        for remote in self.remote_tracks.values():
            if remote.participant_sid == participant_sid:
                remote.participant_identity = info.get("identity", "")
                remote.info = next(
                    (t for t in info.get("tracks") or [] if t.get("sid") == remote.track_sid),
                    remote.info,
                )

    # ---------------------------------------------------------------- subscriber PC

    async def _subscriber_worker(self) -> None:
        while True:
            kind, payload = await self._subscriber_queue.get()
            pc = self.subscriber_pc
            assert pc is not None
            try:
                if kind == "offer":
                    await self._answer_subscriber(pc, payload)
                else:
                    await self._add_candidate(pc, payload)
            except SessionClosed:
                return
            except Exception:
                if self._closed or pc.connectionState == "closed":
                    return  # an offer still queued while leaving: nothing left to apply it to
                log.exception("failed to apply a subscriber %s", kind)

    async def _answer_subscriber(self, pc: RTCPeerConnection, offer: str) -> None:
        local = pc.localDescription
        offer = make_rejected_sections_applicable(offer, local.sdp if local else None)
        sections = describe_sections(offer)
        # Known before setRemoteDescription: its "track" events look their section up here.
        self._subscriber_sections = {s.mid: s for s in sections if s.mid is not None}
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        self._refresh_remote_tracks(pc, sections)
        await pc.setLocalDescription(await pc.createAnswer())
        await self._send({"type": "answer", "target": "subscriber", "sdp": pc.localDescription.sdp})

    def _on_remote_track(self, track: MediaStreamTrack) -> None:
        pc = self.subscriber_pc
        transceiver = _transceiver_of(pc, track) if pc is not None else None
        section = self._subscriber_sections.get(transceiver.mid or "") if transceiver else None
        if section is None:
            log.warning("remote %s track without a known section", track.kind)
            return
        self._emit_remote_track(track, section)

    def _emit_remote_track(self, track: MediaStreamTrack, section: MediaSectionInfo) -> None:
        # aiortc's RemoteStreamTrack.id is the msid track id only when the SDP carries a WMS
        # msid-semantic; the section's own msid is authoritative.
        remote = RemoteTrack(
            track=track,
            track_sid=section.track_id or track.id,
            participant_sid=section.stream_id or "",
            participant_identity="",
            kind=track.kind,
            info=None,
            mid=section.mid,
        )
        if section.mid is not None:
            self.remote_tracks[section.mid] = remote
        self._resolve_tracks(remote.participant_sid)
        self._track_inbox.put(remote)
        self._fire("track", remote)

    def _refresh_remote_tracks(
        self, pc: RTCPeerConnection, sections: list[MediaSectionInfo]
    ) -> None:
        """Follow re-offers: end tracks whose section stopped, and report a section that is
        recycled for another track (or resumed) as a new RemoteTrack on the same aiortc track,
        since aiortc raises no second "track" event for a transceiver."""
        for section in sections:
            remote = self.remote_tracks.get(section.mid or "")
            if remote is None:
                continue
            if section.rejected or section.direction == "recvonly":
                remote.ended = True
            elif remote.ended or remote.track_sid != section.track_id:
                remote.ended = True
                transceiver = next((t for t in pc.getTransceivers() if t.mid == section.mid), None)
                if transceiver is not None and section.ssrcs:
                    # aiortc routes by the SSRCs it learned when the receiver started; a new
                    # stream on an old section has new ones.
                    router = transceiver.receiver.transport._rtp_router
                    router.register_receiver(transceiver.receiver, list(section.ssrcs), [])
                self._emit_remote_track(remote.track, section)

    def _on_subscriber_channel(self, channel: RTCDataChannel) -> None:
        self._subscriber_channels[channel.label] = channel

        def on_message(message: str | bytes) -> None:
            try:
                data = orjson.loads(message)
            except orjson.JSONDecodeError:
                log.warning("undecodable data on %s: %.200r", channel.label, message)
                return
            if not isinstance(data, dict):
                log.warning("non-object data on %s: %.200r", channel.label, message)
                return
            data["channel"] = channel.label
            self._data_inbox.put(data)
            self._fire("data", data)

        channel.on("message", on_message)

    async def wait_ready(self, timeout: float = 10) -> None:
        """Wait until the subscriber PC is connected and its `_reliable`/`_lossy` channels are
        open, i.e. until this participant can receive data messages."""
        async with asyncio.timeout(timeout):
            while not (
                self.subscriber_pc is not None
                and self.subscriber_pc.connectionState == "connected"
                and all(
                    label in self._subscriber_channels
                    and self._subscriber_channels[label].readyState == "open"
                    for label in DATA_CHANNELS
                )
            ):
                if self._closed:
                    raise SessionClosed(self.close_code, self.leave_reason)
                await asyncio.sleep(0.02)

    # ---------------------------------------------------------------- publisher PC

    async def publish(
        self, track: MediaStreamTrack, *, source: str = "camera", name: str = ""
    ) -> Frame:
        """Announce `track` (`add_track`, cid = track.id), then send it on the publisher PC.

        Returns the granted TrackInfo. Raises KeyroomError for a refused `add_track`, or
        `forbidden` when the server's answer rejects the track's media section.
        """
        async with self._publisher_lock:
            reply = await self.request(
                {
                    "type": "add_track",
                    "cid": track.id,
                    "kind": track.kind,
                    "source": source,
                    "name": name,
                    "muted": False,
                }
            )
            info: Frame = reply["track"]
            pc = self._require_pc(self.publisher_pc)
            transceiver = pc.addTransceiver(track, direction="sendonly")
            self._published[info["sid"]] = transceiver
            rejected = await self._negotiate_publisher()
        if transceiver.mid in rejected:
            raise KeyroomError("forbidden", f"the server rejected the media of track {info['sid']}")
        return info

    async def renegotiate_publisher(self) -> set[str]:
        """Offer the publisher PC's current state and apply the answer; returns the mids the
        answer rejected. Lets tests add transceivers/channels by hand on `publisher_pc`."""
        async with self._publisher_lock:
            return await self._negotiate_publisher()

    async def _negotiate_publisher(self) -> set[str]:
        pc = self._require_pc(self.publisher_pc)
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        reply = await self.request({"type": "offer", "target": "publisher", "sdp": offer})
        answer = str(reply.get("sdp", ""))
        rejected = {s.mid for s in describe_sections(answer) if s.rejected and s.mid is not None}
        await pc.setRemoteDescription(
            RTCSessionDescription(
                sdp=make_rejected_sections_applicable(answer, offer), type="answer"
            )
        )
        return rejected

    def _require_pc(self, pc: RTCPeerConnection | None) -> RTCPeerConnection:
        if pc is None or self._closed:
            raise SessionClosed(self.close_code, self.leave_reason)
        return pc

    async def unpublish(self, track_sid: str) -> None:
        """`unpublish` the track, stop sending it and renegotiate its section to inactive."""
        await self.request({"type": "unpublish", "track_sid": track_sid})
        transceiver = self._published.pop(track_sid, None)
        if transceiver is None:
            return
        async with self._publisher_lock:
            await transceiver.sender.stop()
            # Frees the track for a later publish(); aiortc refuses a track that has a sender.
            transceiver.sender.replaceTrack(None)
            transceiver.direction = "inactive"
            await self._negotiate_publisher()

    async def mute(self, track_sid: str, muted: bool) -> None:
        """Tell the server a published track is (un)muted; media keeps flowing from aiortc."""
        await self.request({"type": "mute", "track_sid": track_sid, "muted": muted})

    async def subscribe(self, track_sids: list[str], subscribe: bool = True) -> None:
        """Explicitly (un)subscribe; the server follows with a subscriber offer."""
        await self.request({"type": "subscribe", "track_sids": track_sids, "subscribe": subscribe})

    async def send_data(
        self,
        payload: str,
        *,
        topic: str = "",
        to: list[str] | None = None,
        reliable: bool = True,
        timeout: float = 10,
    ) -> None:
        """Send a data envelope on the publisher PC's `_reliable` (or `_lossy`) channel.

        The channels are created on first use and negotiated on their own: an aiortc offerer
        whose first offer holds a data channel created before a media transceiver never
        connects, so data never shares a first offer with media. Raises KeyroomError
        `forbidden` if the server's answer rejected the data section.
        """
        channel = await self._publisher_channel("_reliable" if reliable else "_lossy", timeout)
        envelope: Frame = {"topic": topic, "payload": payload}
        if to is not None:
            envelope["to"] = to
        channel.send(orjson.dumps(envelope).decode())

    async def _publisher_channel(self, label: str, timeout: float) -> RTCDataChannel:
        async with self._publisher_lock:
            if not self._publisher_channels:
                pc = self._require_pc(self.publisher_pc)
                for name, options in DATA_CHANNELS.items():
                    self._publisher_channels[name] = pc.createDataChannel(name, **options)
                rejected = await self._negotiate_publisher()
                sctp = pc.sctp
                self._data_refused = sctp is not None and sctp.mid in rejected
        if self._data_refused:
            raise KeyroomError("forbidden", "the server rejected the data channels")
        channel = self._publisher_channels[label]
        if channel.readyState != "open":
            opened = asyncio.Event()
            channel.once("open", opened.set)
            if channel.readyState != "open":
                await asyncio.wait_for(opened.wait(), timeout)
        return channel

    # ---------------------------------------------------------------- consumers

    async def next_event(
        self,
        type: str | None = None,
        timeout: float = 10,
        predicate: Callable[[Frame], bool] | None = None,
    ) -> Frame:
        """Take the first not yet taken server event matching `type` and `predicate`, in
        arrival order, waiting up to `timeout` seconds (TimeoutError). Events that do not
        match stay for later calls; `events` keeps all of them. Error frames that answer no
        request are events of type `error`; the server's `leave` is an event too. Raises
        SessionClosed once the session has ended and no matching event is left."""

        def match(frame: Frame) -> bool:
            return (type is None or frame.get("type") == type) and (
                predicate is None or predicate(frame)
            )

        return await self._event_inbox.get(match, timeout, f"{type or 'event'}")

    async def next_track(
        self, timeout: float = 10, predicate: Callable[[RemoteTrack], bool] | None = None
    ) -> RemoteTrack:
        """Take the next remote track (matching `predicate`) that appeared on the subscriber PC."""
        return await self._track_inbox.get(predicate or (lambda _: True), timeout, "remote track")

    async def next_data(self, timeout: float = 10) -> Frame:
        """Take the next data message received on a subscriber channel:
        `{"from", "from_sid", "topic", "payload", "channel"}`."""
        return await self._data_inbox.get(lambda _: True, timeout, "data message")

    def on(self, event_type: str, callback: Callable[[Any], Any]) -> None:
        """Call `callback(frame)` for each server event of `event_type` (after the state is
        updated); `"track"` gets each RemoteTrack and `"data"` each data message. A coroutine
        function is run as a task owned by the client."""
        self._callbacks.setdefault(event_type, []).append(callback)

    def _fire(self, event_type: str, item: Any) -> None:
        for callback in self._callbacks.get(event_type, []):
            try:
                result = callback(item)
                if inspect.isawaitable(result):
                    self._spawn(result)
            except Exception:
                log.exception("%s callback failed", event_type)

    # ---------------------------------------------------------------- tasks

    def _spawn(self, coro: Any) -> None:
        self._track_task(asyncio.ensure_future(coro))

    def _track_task(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)

        def done(task: asyncio.Future[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.warning("background task failed: %r", task.exception())

        task.add_done_callback(done)
