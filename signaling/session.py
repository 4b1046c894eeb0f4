"""One participant's signaling session (PROTOCOL section 2), whatever carries it on the wire.

Typed messages come in (`start` for the first, `handle` for the rest); replies and events go out
through an `Output`; the token's expiry and refresh notice are deadlines, driven from outside
(`next_deadline()` / `handle_timer(now)`). Nothing here reads a socket or a clock: the edge that
speaks a wire format (signaling/websocket.py for JSON over WebSocket) passes the loop-clock `now`
and the wall-clock `wall` in.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from auth.grants import role_relay_only
from auth.tokens import Claims, TokenError
from auth.turn import ice_servers
from sfu.clock import Deadlines, deadline_at
from sfu.participant import NegotiationError, Participant
from sfu.room import Room, new_sid
from signaling import requests
from signaling.admission import (
    Admitted,
    Refused,
    admit_join,
    admit_resume,
    charge_failure,
    check_refresh,
)
from signaling.binding import Binding, BindingRefused
from signaling.bitratepolicy import enforce_bitrate
from signaling.codec import MessageError
from signaling.messages import (
    AddTrack,
    Answer,
    AnyClientMessage,
    ClientMessage,
    Error,
    IceRestart,
    Join,
    Joined,
    Leave,
    Mute,
    Offer,
    Ping,
    Pong,
    PublisherAnswer,
    Refresh,
    Resume,
    ServerLeave,
    ServerMessage,
    SetQuality,
    Subscribe,
    TokenRefreshRequired,
    Trickle,
    Unpublish,
    UpdateMetadata,
)
from signaling.protocol import (
    CLOSE_NORMAL,
    CLOSE_PROTOCOL,
    CLOSE_RATE_LIMITED,
    JOIN_REFUSAL_CLOSE,
    PROTOCOL_VERSION,
)
from signaling.state import ServerState, leave_close

log = logging.getLogger("keyroom.session")

# Sessions the server ends for what their client did: security events (signaling/monitor.py).
ABUSE_REASONS = frozenset({"too_slow", "protocol_error"})


class Output(Protocol):
    """Where a session's frames go, in order; `close` ends the connection after them."""

    def send(self, message: ServerMessage | Mapping[str, Any]) -> None: ...

    def close(self, code: int) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """How the first frame ended: `reason` is what the join metrics count it under."""

    accepted: bool
    reason: str


Reply = ServerMessage | None
Handler = Callable[["Session", Any, float, float], Awaitable[Reply]]
RoomRequest = Callable[[ServerState, Participant, Room, Any], Reply]


class Session:
    def __init__(self, state: ServerState, peer: str, output: Output) -> None:
        self.state = state
        self.peer = peer
        self.output = output
        self.participant: Participant | None = None
        self.room: Room | None = None
        self.claims: Claims | None = None
        self.binding: Binding | None = None
        self.resume_token = ""
        self.ending = False
        self.end_reason = "disconnected"
        self._ended_by_server = False
        self._close_code = CLOSE_NORMAL
        self._deadlines: Deadlines[str] = Deadlines()
        self._bad_frames: deque[float] = deque()

    # -- output ---------------------------------------------------------------------------------

    def send(self, message: ServerMessage | Mapping[str, Any]) -> None:
        """Queue a frame; frames leave in order even when queued from synchronous code."""
        if not self.ending:
            self.output.send(message)

    def end(
        self, reason: str, *, close_code: int | None = None, message: str | None = None
    ) -> None:
        """End the session from the server side: `leave` with the reason, then close."""
        if self.ending:
            return
        if reason in ABUSE_REASONS:
            participant = self.participant
            self.state.audit.record(
                "abuse_close", ip=self.peer, reason=reason,
                identity=None if participant is None else participant.identity,
                room=None if self.room is None else self.room.name,
            )  # fmt: skip
        self.send(ServerLeave(reason=reason, message=message))
        self._ended_by_server = True
        self._stop(reason, close_code or leave_close(reason))

    def _stop(self, reason: str, close_code: int) -> None:
        self.ending = True
        self.end_reason = reason
        self._close_code = close_code
        self.output.close(close_code)

    def refuse(self, error: MessageError, now: float) -> None:
        """Answer a refused request; too many malformed frames in a window end the session."""
        self.send(Error(code=error.code, message=error.message, req=error.req))
        if error.code == "invalid_message" and self._too_many_bad_frames(now):
            self.end("protocol_error", close_code=CLOSE_RATE_LIMITED)

    def _too_many_bad_frames(self, now: float) -> bool:
        limits = self.state.config.limits
        while self._bad_frames and now - self._bad_frames[0] >= limits.bad_frame_window:
            self._bad_frames.popleft()
        self._bad_frames.append(now)
        return len(self._bad_frames) > limits.max_bad_frames

    # -- the first frame ------------------------------------------------------------------------

    def start(self, message: AnyClientMessage, now: float, wall: float) -> Outcome:
        """Join or resume; anything else, or a refusal, closes the session."""
        if isinstance(message, Resume):
            return self._resume(message, now, wall)
        if not isinstance(message, Join):
            error = "the first frame must be join or resume"
            return self.refuse_first(MessageError("invalid_message", error, message.req))
        if message.protocol != PROTOCOL_VERSION:
            error = f"unsupported protocol version (server speaks {PROTOCOL_VERSION})"
            return self.refuse_first(MessageError("invalid_message", error, message.req))
        try:
            admitted = admit_join(self.state, message, self.peer, wall)
        except Refused as exc:
            return self._refused(exc.reply, exc.close_code, exc.metric)
        participant = self._enter(admitted, message, now, wall)
        claims = admitted.claims
        self.state.audit.record(
            "join_accepted", ip=self.peer, room=claims.room, identity=claims.identity,
            participant=participant.sid, key_id=claims.key_id,
        )  # fmt: skip
        admitted.room.subscribe_all(participant)
        return Outcome(True, "join")

    def refuse_first(self, error: MessageError, close_code: int = CLOSE_PROTOCOL) -> Outcome:
        """A first frame that is no valid join (or none in time): `error`, then close."""
        reply = Error(code=error.code, message=error.message, req=error.req)
        return self._refused(reply, close_code, error.code)

    def answer_first(self, reply: ServerMessage) -> Outcome:
        """The cluster answered the join (signaling/cluster): a redirect, or a refusal."""
        if isinstance(reply, Error):
            return self._refused(reply, JOIN_REFUSAL_CLOSE[reply.code], reply.code)
        return self._refused(reply, CLOSE_NORMAL, "redirect")

    def _refused(self, reply: ServerMessage, close_code: int, metric: str) -> Outcome:
        self.output.send(reply)
        self._stop("refused", close_code)
        return Outcome(False, metric)

    def _enter(self, admitted: Admitted, join: Join, now: float, wall: float) -> Participant:
        """The admitted participant takes its place; synchronous, like admission before it."""
        state, claims, room = self.state, admitted.claims, admitted.room
        assert claims.identity is not None
        config = state.config
        participant = Participant(
            sid=new_sid("PA"),
            identity=claims.identity,
            name=claims.name,
            metadata=claims.metadata,
            grant=claims.grant,
            room=room,
            notify=self.send,
            stats=state.stats,
            auto_subscribe=join.auto_subscribe,
            relay_only=role_relay_only(config.roles, claims.role),
            # Empty public_ips: nothing to rewrite (finalize checks the lengths otherwise).
            public_addresses=dict(zip(config.rtc.ips, config.rtc.public_ips, strict=False)),
        )
        participant.on_connection_failed = self._on_connection_failed
        participant.on_bitrate = partial(enforce_bitrate, state, room)
        self.participant, self.room, self.claims = participant, room, claims
        self.binding = admitted.binding
        participant.bound_client = None if admitted.binding is None else admitted.binding.client
        room.add(participant)
        state.sessions_by_participant[participant.sid] = self
        self._send_joined(join.req, wall)
        self._arm_expiry(claims, now, wall)
        return participant

    def _resume(self, message: Resume, now: float, wall: float) -> Outcome:
        """Re-attach a participant whose socket dropped (PROTOCOL 2.7); nobody sees it leave."""
        self._take_over(message.resume_token, now)
        try:
            parked = admit_resume(self.state, message, self.peer, wall)
        except Refused as exc:
            return self._refused(exc.reply, exc.close_code, exc.metric)
        participant = parked.participant
        self.participant, self.room, self.claims = participant, parked.room, parked.claims
        jkt, client = parked.claims.jkt, participant.bound_client
        self.binding = None if jkt is None or client is None else Binding(jkt, client)
        participant.notify = self.send
        participant.on_connection_failed = self._on_connection_failed
        self.state.sessions_by_participant[participant.sid] = self
        self._send_joined(message.req, wall)
        for held in parked.frames:
            if held.get("type") != "offer":  # the offer still waiting is sent again below
                self.send(held)
        participant.resync_subscriber()
        self._arm_expiry(parked.claims, now, wall)
        return Outcome(True, "resume")

    def _take_over(self, resume_token: str, now: float) -> None:
        """A resume naming a session whose socket is still open here: the client lost that
        socket (a new network; the server would notice at the next unanswered ping only). Park
        its participant as if the socket had dropped, and close it."""
        for sid, live in list(self.state.sessions_by_participant.items()):
            if not (isinstance(live, Session) and live.participant and live.room and live.claims):
                continue
            if secrets.compare_digest(live.resume_token, resume_token):
                del self.state.sessions_by_participant[sid]
                self.state.park(resume_token, live.participant, live.room, live.claims, now)
                live._stop("disconnected", CLOSE_NORMAL)  # its finish() finds it detached
                return

    def _send_joined(self, req: int | None, wall: float) -> None:
        participant, room = self._joined()
        turn = self.state.config.turn
        self.resume_token = secrets.token_urlsafe(32)
        relay = participant.relay_only or room.limits.relay_only
        self.send(
            Joined(
                room=room.info(),
                participant=participant.info(with_permissions=True),
                participants=[p.info() for p in room.visible_to(participant)],
                # Fresh TURN REST credentials on every joined (resume too): they expire.
                ice_servers=ice_servers(
                    turn.urls, turn.secret, participant.identity, now=wall, ttl=turn.ttl
                ),
                ice_transport_policy="relay" if relay else "all",
                resume_token=self.resume_token,
                req=req,
            )
        )
        if room.recording:
            self.send({"type": "recording", "active": True})

    def _joined(self) -> tuple[Participant, Room]:
        participant, room = self.participant, self.room
        assert participant is not None and room is not None
        return participant, room

    def _on_connection_failed(self, participant: Participant) -> None:
        # Refused candidates are the usual cause a client cannot see: name their settings.
        hint = "; ".join(participant.ice_refusals) or None
        log.warning(
            "participant %s: peer connection failed%s",
            participant.sid,
            f" (refused candidates: {hint})" if hint else "",
        )
        self.end("connection_failed", close_code=CLOSE_NORMAL, message=hint)

    # -- requests -------------------------------------------------------------------------------

    async def handle(self, message: AnyClientMessage, now: float, wall: float) -> None:
        """One request after the first frame: its one direct reply, or an error."""
        try:
            reply = await HANDLERS[type(message)](self, message, now, wall)
        except MessageError as exc:
            self.refuse(exc, now)
            return
        if reply is not None:
            self.send(reply)

    async def _ping(self, message: Ping, now: float, wall: float) -> Reply:
        return Pong(req=message.req)

    async def _leave(self, message: Leave, now: float, wall: float) -> Reply:
        reply = requests.ok(message)
        if reply is not None:
            self.send(reply)  # every request with a req gets its one reply, this one too
        self._stop("left", CLOSE_NORMAL)
        return None

    async def _offer(self, message: Offer, now: float, wall: float) -> Reply:
        participant, room = self._joined()
        try:
            answer, bound = await participant.handle_publisher_offer(message.sdp)
        except NegotiationError as exc:
            # The server's own words (the transceiver cap among them): a security event.
            self.state.audit.record(
                "offer_refused", ip=self.peer, room=room.name, identity=participant.identity,
                reason=str(exc)[:200],
            )  # fmt: skip
            raise MessageError("invalid_message", str(exc), message.req) from None
        self.send(PublisherAnswer(target="publisher", sdp=answer, req=message.req))
        for track in bound:
            room.track_bound(participant, track)
        return None

    async def _answer(self, message: Answer, now: float, wall: float) -> Reply:
        participant, _room = self._joined()
        try:
            participant.handle_subscriber_answer(message.sdp)
        except NegotiationError as exc:
            raise MessageError("invalid_message", str(exc), message.req) from None
        return requests.ok(message)

    async def _trickle(self, message: Trickle, now: float, wall: float) -> Reply:
        participant, _room = self._joined()
        try:
            await participant.add_ice_candidate(message.target, message.candidate)
        except NegotiationError as exc:
            raise MessageError("invalid_message", str(exc), message.req) from None
        return requests.ok(message)

    async def _refresh(self, message: Refresh, now: float, wall: float) -> Reply:
        current = self.claims
        assert current is not None
        try:
            claims, binding = check_refresh(self.state, current, self.binding, message, wall)
        except TokenError as exc:
            detail = {"detail": exc.detail} if isinstance(exc, BindingRefused) else {}
            self.state.audit.record(
                "refresh_refused", ip=self.peer, room=current.room, identity=current.identity,
                reason=exc.reason, **detail,
            )  # fmt: skip
            if charge_failure(self.state, self.peer, wall):
                raise MessageError("rate_limited", "too many attempts", message.req) from None
            raise MessageError("unauthorized", "unauthorized", message.req) from None
        self.claims, self.binding = claims, binding
        participant, _room = self._joined()
        participant.bound_client = None if binding is None else binding.client
        self._arm_expiry(claims, now, wall)
        return requests.ok(message)

    async def _first_only(self, message: ClientMessage, now: float, wall: float) -> Reply:
        kind = type(message).__struct_config__.tag
        raise MessageError(
            "invalid_message", f"{kind} is only valid as the first frame", message.req
        )

    # -- token life -----------------------------------------------------------------------------

    def _arm_expiry(self, claims: Claims, now: float, wall: float) -> None:
        """At `exp` (plus leeway) the session ends; `refresh_notice` before it, the client is
        told to refresh. A refresh re-arms both."""
        auth = self.state.config.auth
        expiry = deadline_at(claims.exp + auth.leeway, now, wall)
        notice = deadline_at(claims.exp - auth.refresh_notice, now, wall)
        self._deadlines.set("expiry", max(expiry, now))
        self._deadlines.set("refresh_notice", max(notice, now))

    def next_deadline(self) -> float | None:
        return None if self.ending else self._deadlines.next()

    def handle_timer(self, now: float) -> None:
        for due in self._deadlines.pop_due(now):
            if due == "expiry":
                self.end("token_expired")
            elif self.claims is not None:
                self.send(TokenRefreshRequired(expires_at=int(self.claims.exp)))

    # -- end ------------------------------------------------------------------------------------

    async def finish(self, now: float) -> None:
        """The connection is gone: park the participant for a resume, or take it out."""
        self._deadlines = Deadlines()
        participant, room, claims = self.participant, self.room, self.claims
        if participant is None or room is None or claims is None:
            return
        state = self.state
        if state.sessions_by_participant.get(participant.sid) is not self:
            return
        del state.sessions_by_participant[participant.sid]
        if not self.ending and state.park(self.resume_token, participant, room, claims, now):
            return
        if self._ended_by_server:
            # Its client may have gone already and never seen the leave: a resume gets it.
            state.remember_end(
                self.resume_token, self.end_reason, self._close_code, now, participant.sid
            )
        await room.remove(participant, self.end_reason)


def _room_request(request: RoomRequest) -> Handler:
    async def handle(session: Session, message: Any, now: float, wall: float) -> Reply:
        participant, room = session._joined()  # noqa: SLF001
        return request(session.state, participant, room, message)

    return handle


HANDLERS: dict[type[ClientMessage], Handler] = {
    Ping: Session._ping,
    Leave: Session._leave,
    Offer: Session._offer,
    Answer: Session._answer,
    Trickle: Session._trickle,
    Refresh: Session._refresh,
    Join: Session._first_only,
    Resume: Session._first_only,
    AddTrack: _room_request(requests.add_track),
    Subscribe: _room_request(requests.subscribe),
    UpdateMetadata: _room_request(requests.update_metadata),
    Unpublish: _room_request(requests.unpublish),
    Mute: _room_request(requests.mute),
    SetQuality: _room_request(requests.set_quality),
    IceRestart: _room_request(requests.ice_restart),
}
