"""LiveKit's resume: `/rtc?reconnect=1&sid=PA_...` after an SDK lost its socket (PROTOCOL 2.7).

keyroom's own clients resume with the resume token of their last `joined`; LiveKit's SDKs with
their join token and their participant sid. The token (verified, not revoked) must name the
identity and room of the participant `sid`; keyroom's resume then runs with that participant's
parking token, or, when the server has not noticed the lost socket yet, with its live session's
(which the resume takes over, as keyroom's `resume` does: the old socket is closed).

Refusals as LiveKit's server gives them: a token keyroom refuses is an HTTP 401 before the
upgrade (the SDK then asks `/rtc/validate`, and gives up); a session the server ended while the
SDK was away (kicked, revoked, room closed) gets the `leave` it missed, with that reason; a sid
keyroom no longer knows (the resume window passed, or resuming is off: `resume_window = 0`) gets
a `leave` that asks for a full reconnect (LiveKit's STATE_MISMATCH). Both leaves come after the
upgrade, as the SDKs expect them.
"""

from __future__ import annotations

from livekit.protocol import models, rtc

from auth.tokens import TokenError
from signaling.admission import verify_token
from signaling.livekit.wire import DISCONNECT_REASON
from signaling.state import ServerState


class Refusal(Exception):
    """Refused before the upgrade: an HTTP error."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class ResumeLeave(Exception):
    """Refused after the upgrade: the `leave` the SDK is sent instead of a ReconnectResponse."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def response(self) -> rtc.SignalResponse:
        if self.reason == "state_mismatch":
            # LiveKit's answer to a resume of a participant it does not know: join again.
            leave = rtc.LeaveRequest(
                can_reconnect=True,
                reason=models.STATE_MISMATCH,
                action=rtc.LeaveRequest.RECONNECT,
            )
        else:
            leave = rtc.LeaveRequest(
                reason=DISCONNECT_REASON.get(self.reason, models.UNKNOWN_REASON),
                action=rtc.LeaveRequest.DISCONNECT,
            )
        return rtc.SignalResponse(leave=leave)


def resume_token(state: ServerState, token: str, sid: str, wall: float) -> str:
    """keyroom's resume token for the participant `sid` whose identity and room `token` names;
    raises `Refusal` or `ResumeLeave`."""
    if len(sid) > 64 or not sid.isascii() or not sid.isprintable():
        raise Refusal(400, "sid must be 1..64 printable ASCII characters")
    try:
        claims = verify_token(state, token, wall)
    except TokenError as exc:
        state.audit.record("resume_refused", participant=sid, reason=exc.reason)
        if exc.reason in ("revoked", "key_revoked"):
            raise ResumeLeave("revoked") from None
        raise Refusal(401, "unauthorized") from None
    about = {"room": claims.room, "identity": claims.identity, "participant": sid}
    if state.config.server.resume_window <= 0:
        state.audit.record("resume_refused", **about, reason="resume_disabled")
        raise ResumeLeave("state_mismatch")  # nothing is kept for a resume: join again
    room = state.rooms.get(claims.room or "")
    participant = room.participants.get(sid) if room is not None else None
    if participant is not None and participant.identity == claims.identity:
        parked = state.parking.token_of(participant)
        if parked is not None:
            return parked
        live = state.sessions_by_participant.get(sid)
        live_token = getattr(live, "resume_token", "")
        if live_token:
            return str(live_token)  # the server has not noticed the lost socket yet
        state.audit.record("resume_refused", **about, reason="not_resumable")
        raise Refusal(409, "participant is not waiting for a resume")
    if participant is not None:
        state.audit.record("resume_refused", **about, reason="identity_differs")
        raise Refusal(401, "unauthorized")
    ended = state.parking.ended_sid(sid)
    state.audit.record(
        "resume_refused", **about, reason=ended.reason if ended else "unknown_participant"
    )
    raise ResumeLeave(ended.reason if ended is not None else "state_mismatch")
