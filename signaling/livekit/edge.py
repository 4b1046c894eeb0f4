"""The `/rtc` edge for LiveKit's SDKs: protobuf frames over WebSocket, same sessions.

A LiveKit SDK puts its token in the URL (`access_token`, the JS SDK) or in `Authorization:
Bearer` (the Rust/Python SDK), so admission runs on the HTTP request, before the upgrade: a
refused join is an HTTP error (401, 403, 404, 409, 429, 503), as LiveKit's server answers, and
the SDK asks `/rtc/validate` why. An admitted join is keyroom's `Session` with a `Join` made from
the URL; its frames are translated by `wire.Translator`; binary frames in are decoded by
`wire.decode`. `reconnect=1&sid=PA_...` resumes that participant (`resume.py`, PROTOCOL 2.7)
and restarts its subscriber PC's ICE, as LiveKit's server does.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Literal

import msgspec
from aiohttp import WSMsgType, web
from livekit.protocol import rtc

from sfu.clock import TimerDriver
from sfu.layerswitch import PAUSED
from sfu.metrics import record_join
from sfu.participant import Participant
from sfu.quality import EXCELLENT
from sfu.sdpinfo import BadSdp, describe_sections
from signaling.admission import charge_failure
from signaling.codec import MessageError
from signaling.livekit import datapackets, wire
from signaling.livekit.connquality import QualityReport
from signaling.livekit.refresh import refresh_response
from signaling.livekit.resume import Refusal, ResumeLeave, resume_token
from signaling.livekit.tracksettings import DECLARED, TrackSettings, wanted_layer
from signaling.messages import Join, Resume, ServerMessage, SetQuality
from signaling.outbox import Outbox
from signaling.protocol import CLOSE_UNSUPPORTED
from signaling.session import Outcome, Session
from signaling.state import ServerState
from signaling.websocket import SocketOutput, end_socket

QUALITY_NAMES: tuple[Literal["low", "medium", "high"], ...] = ("low", "medium", "high")
# HTTP status of a refused join, by the close code keyroom's JSON edge would use.
HTTP_STATUS = {4400: 400, 4401: 401, 4403: 403, 4404: 404, 4409: 409, 4429: 429, 4503: 503}


def is_livekit(request: web.Request) -> bool:
    """A LiveKit SDK's `/rtc`: its token or its SDK parameters are in the request itself
    (keyroom's clients send the token in their first frame)."""
    query = request.query
    return (
        "access_token" in query
        or "protocol" in query
        or "sdk" in query
        or request.headers.get("Authorization", "").startswith("Bearer ")
    )


def request_token(request: web.Request) -> str:
    """The one token of the request: query or header, never both."""
    query = request.query.getall("access_token", [])
    header = request.headers.get("Authorization", "")
    bearer = [header.removeprefix("Bearer ").strip()] if header.startswith("Bearer ") else []
    tokens = [t for t in (*query, *bearer) if t]
    if not tokens:
        raise Refusal(401, "no access token")
    if len(tokens) > 1:
        raise Refusal(400, "more than one access token")
    return tokens[0]


class LiveKitOutput(SocketOutput):
    """keyroom's frames for this participant, translated to `SignalResponse` bytes."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        outbox: Outbox,
        on_overflow: Callable[[], None],
        translator: wire.Translator,
    ) -> None:
        super().__init__(ws, outbox, on_overflow)
        self.translator = translator
        self.refusal: Mapping[str, Any] | None = None
        # Called when what a refresh_token carries changed (rights, own name or metadata).
        self.refresh: Callable[[], None] | None = None

    def send(self, message: ServerMessage | Mapping[str, Any]) -> None:
        frame: Mapping[str, Any] = (
            msgspec.to_builtins(message) if isinstance(message, msgspec.Struct) else message
        )
        if self.refusal is None and frame.get("type") in ("error", "leave") and not self.started:
            self.refusal = frame  # the join's refusal: an HTTP error, not a frame
            return
        for response in self.translator.translate(frame):
            self.send_response(response)
        if frame.get("type") == "permissions_changed" and self.refresh is not None:
            self.refresh()

    def send_response(self, response: Any) -> None:
        if self.outbox.overflowed:
            return
        if not self.outbox.push(response.SerializeToString()):
            self._on_overflow()
        self._wake.set()

    started = False


def _lookup(session: Session) -> wire.Lookup:
    def lookup(sid: str) -> Mapping[str, Any] | None:
        room = session.room
        participant = room.participants.get(sid) if room is not None else None
        if participant is None:
            return None
        info = participant.info(with_permissions=participant is session.participant)
        DECLARED.annotate(info, participant.tracks)
        return info

    return lookup


def _admit(
    state: ServerState, session: Session, request: web.Request, now: float, wall: float
) -> Outcome:
    token = request_token(request)
    query = request.query
    if query.get("reconnect") == "1" and query.get("sid"):  # LiveKit's resume
        resume = Resume(resume_token=resume_token(state, token, query["sid"], wall))
        return session.start(resume, now, wall)
    auto = query.get("auto_subscribe", "1") not in ("0", "false")
    return session.start(Join(token=token, auto_subscribe=auto), now, wall)


def unpublish_stopped(session: Session, sdp: str) -> None:
    """LiveKit's SDKs unpublish by renegotiating: the track's section is no longer sending
    (inactive, recvonly, or rejected). keyroom unpublishes it, as its `unpublish` request."""
    participant, room = session.participant, session.room
    if participant is None or room is None:
        return
    try:
        sections = {s.mid: s for s in describe_sections(sdp) if s.mid is not None}
    except BadSdp:
        return
    for track in list(participant.tracks.values()):
        section = sections.get(track.mid) if track.mid is not None else None
        if section is not None and (
            section.rejected or section.direction not in ("sendonly", "sendrecv")
        ):
            room.unpublish(participant, track.sid, notify_publisher=True)


def _adapt(session: Session, participant: Participant) -> None:
    """What LiveKit's SDKs need of the media plane: `PA|TR` stream ids, protobuf data."""
    participant.subscribing.stream_id = lambda track: f"{track.publisher_sid}|{track.sid}"
    datapackets.adapt(participant)


async def serve_livekit(
    state: ServerState,
    request: web.Request,
    peer: str,
    abort: Callable[[], None],
    admitted: Callable[[], None],
) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    server = state.config.server
    ws = web.WebSocketResponse(max_msg_size=server.max_frame_bytes, heartbeat=20, autoping=True)
    reconnect = request.query.get("reconnect") == "1" and bool(request.query.get("sid"))
    translator = wire.Translator(lambda sid: None, reconnect=reconnect)

    def overflow() -> None:
        session.end("too_slow")
        abort()

    outbox = Outbox(server.max_outbox_frames, server.max_outbox_bytes)
    output = LiveKitOutput(ws, outbox, overflow, translator)
    session = Session(state, peer, output)
    translator.lookup = _lookup(session)
    started = loop.time()
    wall = time.time()
    try:
        outcome = _admit(state, session, request, started, wall)
    except Refusal as refusal:
        state.audit.record("join_refused", ip=peer, reason=refusal.text)
        charge_failure(state, peer, wall)
        record_join(False, "unauthorized", loop.time() - started)
        return web.Response(status=refusal.status, text=refusal.text)
    except ResumeLeave as leave:
        record_join(False, "unauthorized", loop.time() - started)
        return await _leave(ws, request, leave.response())
    record_join(outcome.accepted, outcome.reason, loop.time() - started)
    if not outcome.accepted:
        return await _refused(session, output, ws, request)
    output.started = True
    participant = session.participant
    assert participant is not None
    _adapt(session, participant)
    if reconnect:
        # As LiveKit's server: the subscriber PC restarts ICE after a resume (the SDK's
        # publisher offers new credentials itself); the media plane keeps DTLS and SRTP.
        participant.restart_ice()
    admitted()
    await ws.prepare(request)
    await _run(state, session, output, ws, loop)
    return ws


async def _refused(
    session: Session, output: LiveKitOutput, ws: web.WebSocketResponse, request: web.Request
) -> web.StreamResponse:
    """keyroom's session refused the join or resume: an HTTP error, as LiveKit's server."""
    frame = output.refusal or {}
    if frame.get("type") == "leave":  # a resume of a session the server ended meanwhile
        return await _leave(ws, request, wire.leave_response(str(frame.get("reason"))))
    close = session._close_code  # noqa: SLF001
    text = str(frame.get("message") or frame.get("reason") or "refused")
    return web.Response(status=HTTP_STATUS.get(close, 403), text=text)


async def _leave(
    ws: web.WebSocketResponse, request: web.Request, leave: rtc.SignalResponse
) -> web.WebSocketResponse:
    """A refused resume: LiveKit's SDKs expect its `leave` on the socket, not an HTTP error."""
    await ws.prepare(request)
    await ws.send_bytes(leave.SerializeToString())
    await ws.close()
    return ws


def _send_refresh(session: Session, output: LiveKitOutput) -> None:
    response = refresh_response(session, time.time())
    if response is not None:
        output.send_response(response)


async def _run(
    state: ServerState,
    session: Session,
    output: LiveKitOutput,
    ws: web.WebSocketResponse,
    loop: asyncio.AbstractEventLoop,
) -> None:
    writer = asyncio.ensure_future(output.run())
    timer = TimerDriver(session)
    quality = TimerDriver(
        QualityReport(partial(room_levels, session), output.send_response, loop.time())
    )
    state.sessions.add(session)
    # The SDK reconnects with the last token it was given: one now, one after each change of
    # the participant's rights, name or metadata.
    output.refresh = partial(_send_refresh, session, output)
    output.refresh()
    try:
        timer.update()
        quality.update()
        await _read(session, output, ws, timer, loop)
    finally:
        quality.stop()
        await end_socket(state, session, output, writer, timer, ws)


def room_levels(session: Session) -> dict[str, str]:
    """The connection quality of the participant and of the others it sees (sfu/quality.py)."""
    room, own = session.room, session.participant
    if room is None:
        return {}
    return {
        p.sid: p.feedback.quality.level or EXCELLENT
        for p in room.participants.values()
        if p is own or not p.hidden
    }


async def _read(
    session: Session,
    output: LiveKitOutput,
    ws: web.WebSocketResponse,
    timer: TimerDriver,
    loop: asyncio.AbstractEventLoop,
) -> None:
    numbers = itertools.count(1)
    async for frame in ws:
        if frame.type == WSMsgType.TEXT:
            await ws.close(code=CLOSE_UNSUPPORTED)
            return
        if frame.type != WSMsgType.BINARY:
            return
        now, wall, req = loop.time(), time.time(), next(numbers)
        try:
            case, inner, decoded = wire.decode(frame.data, req, wall)
        except MessageError as exc:
            session.refuse(exc, now)
        else:
            await _dispatch(session, output, case, inner, decoded, (req, now, wall))
        timer.update()
        if session.ending:
            return


async def _dispatch(
    session: Session,
    output: LiveKitOutput,
    case: str,
    inner: Any,
    decoded: wire.Decoded,
    when: tuple[int, float, float],
) -> None:
    """One decoded request: answered here, or handled by keyroom's session."""
    req, now, wall = when
    if isinstance(decoded, wire.Local):
        output.send_response(decoded.response)
        return
    if isinstance(decoded, TrackSettings):
        decoded = apply_settings(session, decoded)
    if decoded is None:
        return
    output.translator.requests[req] = (case, inner)
    if case == "offer":
        output.translator.offer_ids.append(inner.id)
    await session.handle(decoded, now, wall)
    participant = session.participant
    if case == "add_track" and participant is not None:
        track = participant.track_by_cid(inner.cid)
        if track is not None:
            DECLARED.remember(track, inner)
    if case == "offer" and not session.ending:
        unpublish_stopped(session, inner.sdp)
    if case == "update_metadata" and output.refresh is not None:
        output.refresh()


def apply_settings(session: Session, settings: TrackSettings) -> SetQuality | None:
    """A subscriber's track settings: keyroom's `set_quality` (the highest layer it wants), or
    a pause (`disabled`), which keyroom's JSON protocol has no request for."""
    room, participant = session.room, session.participant
    found = room.find_track(settings.track_sid) if room is not None else None
    layer = wanted_layer(settings, DECLARED.of(found[1] if found else None))
    if layer == PAUSED and found is not None and participant is not None:
        participant.set_quality(settings.track_sid, PAUSED)
        return None
    # An unknown track is refused by set_quality (NOT_FOUND), as for keyroom's clients.
    name = QUALITY_NAMES[max(layer, 0)]
    return SetQuality(track_sid=settings.track_sid, quality=name, req=settings.req)
