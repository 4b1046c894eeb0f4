"""Who may enter a room: the one admission path for join, resume and refresh (PROTOCOL 1, 2.7).

Every check is synchronous, with the wall-clock time passed in: between the first check and the
participant's place in the room there is no await, so concurrent joins cannot slip past a limit,
and a single-use token id checked here is spent before another join can check it.

A refused token tells the client nothing but `unauthorized`; the precise reason goes to the audit
log. A refusal is raised as `Refused`, carrying the frame the client gets and the close code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from auth.policy import narrowed_grant
from auth.tokens import Claims, TokenError
from sfu.config import room_limits
from sfu.participant import Participant
from sfu.room import JoinRefused, Room
from signaling.binding import (
    Binding,
    BindingRefused,
    bind_join,
    bind_refresh,
    client_narrowed,
    prove,
)
from signaling.messages import Error, Join, Refresh, Resume, ServerLeave, ServerMessage
from signaling.parking import Parked
from signaling.protocol import CLOSE_RATE_LIMITED, CLOSE_UNAUTHORIZED, JOIN_REFUSAL_CLOSE
from signaling.state import ServerState, leave_close


class Refused(Exception):
    """What the refused client gets (`reply`, then a close with `close_code`); `metric` is the
    reason the join metrics count it under."""

    def __init__(self, reply: ServerMessage, close_code: int, metric: str) -> None:
        super().__init__(metric)
        self.reply = reply
        self.close_code = close_code
        self.metric = metric


def _error(code: str, message: str, close_code: int, req: int | None) -> Refused:
    return Refused(Error(code=code, message=message, req=req), close_code, code)


def _unauthorized(req: int | None) -> Refused:
    return _error("unauthorized", "unauthorized", CLOSE_UNAUTHORIZED, req)


def check_claims(state: ServerState, claims: Claims, wall: float) -> None:
    """What every admission re-checks, however old the claims: expiry and revocation."""
    if claims.exp + state.config.auth.leeway < wall:
        raise TokenError("expired")
    if state.store.key_revoked(claims.key_id):
        raise TokenError("key_revoked")
    if state.store.is_revoked(claims.room or "", claims.identity or "", claims.issued_at, wall):
        raise TokenError("revoked")


@dataclass(frozen=True)
class Admitted:
    """A join that passed every check: its place in `room` is held by the caller's next step."""

    claims: Claims
    room: Room
    binding: Binding | None = None


def verify_token(state: ServerState, token: str, wall: float) -> Claims:
    """A token's claims, verified and checked (revocations, revoked keys); raises TokenError.
    The LiveKit edge's checks before its upgrade; a join goes through `admit_join`."""
    claims = state.verifier.verify_join(token, wall)
    check_claims(state, claims, wall)
    return claims


def _about(claims: Claims) -> dict[str, str | None]:
    return {"room": claims.room, "identity": claims.identity, "key_id": claims.key_id}


def charge_failure(state: ServerState, peer: str, wall: float) -> bool:
    """Count a refused attempt against its address; True once the address is braked.

    Only failures pay: a valid token is never asked whether its address is braked, so the
    neighbours behind a braked NAT get through, and an identity is never charged for what
    others do with its (spent, revoked, stolen) tokens."""
    key = f"ip:{peer}"
    braked = state.brake.blocked(key, wall)  # `max_failures` earlier refusals in the window
    state.brake.failure(key, wall)
    if braked:
        state.audit.record("brake_engaged", ip=peer)  # summed up per window (auth/auditrate.py)
    return braked


def _failed(
    state: ServerState, peer: str, wall: float, refusal: Refused, req: int | None
) -> Refused:
    if charge_failure(state, peer, wall):
        return _error("rate_limited", "too many attempts", CLOSE_RATE_LIMITED, req)
    return refusal


def admit_join(state: ServerState, join: Join, peer: str, wall: float) -> Admitted:
    """Token, revocation, then the room's and node's limits; failures charge the brake."""
    verified: Claims | None = None
    try:
        claims = verified = state.verifier.verify_join(join.token, wall)
        check_claims(state, claims, wall)
    except TokenError as exc:
        # The precise reason goes to the audit log only: the client learns nothing about why.
        # A valid token refused (revoked, its key revoked) names whose it is: detection rules
        # look for tokens used after their identity or key was revoked.
        about = {} if verified is None else _about(verified)
        state.audit.record("join_refused", ip=peer, reason=exc.reason, **about)
        raise _failed(state, peer, wall, _unauthorized(join.req), join.req) from None
    assert claims.room is not None and claims.identity is not None
    try:
        binding = bind_join(state, claims, join.proof, join.token, wall)
    except BindingRefused as exc:
        state.audit.record(
            "join_refused", ip=peer, room=claims.room, identity=claims.identity,
            key_id=claims.key_id, reason=exc.reason, detail=exc.detail,
        )  # fmt: skip
        raise _failed(state, peer, wall, _unauthorized(join.req), join.req) from None
    try:
        room = _take_place(state, claims, wall)
    except JoinRefused as exc:
        state.audit.record(
            "join_refused", ip=peer, room=claims.room, identity=claims.identity,
            reason=exc.reason or exc.code,
        )  # fmt: skip
        text = "unauthorized" if exc.code == "unauthorized" else exc.message
        refusal = _error(exc.code, text, JOIN_REFUSAL_CLOSE[exc.code], join.req)
        if exc.code != "unauthorized":
            raise refusal from None  # a full room is no failure of the client's
        raise _failed(state, peer, wall, refusal, join.req) from None
    return Admitted(client_narrowed(_under_decisions(state, claims, wall), binding), room, binding)


def _under_decisions(state: ServerState, claims: Claims, wall: float) -> Claims:
    """The admitted token's claims under the admins' earlier decisions about its identity: a
    live permission downgrade narrows the grant of every token issued before it (rejoining
    does not undo it); a token issued after it is the application's new decision."""
    assert claims.room is not None and claims.identity is not None
    state.store.forget_decisions(claims.room, claims.identity, claims.issued_at, wall)
    permissions = state.store.narrowing(claims.room, claims.identity)
    if permissions is None:
        return claims
    return replace(claims, grant=narrowed_grant(claims.grant, permissions))


def _take_place(state: ServerState, claims: Claims, wall: float) -> Room:
    """Room and node limits, single-use token ids and duplicate identities; the room, created
    if it has to be, with the place made (a replaced participant is gone)."""
    assert claims.room is not None and claims.identity is not None
    room = state.rooms.get(claims.room)
    if room is None and not state.config.auth.auto_create_rooms:
        raise JoinRefused("not_found", "no such room")
    if state.node_full(new_room=room is None):
        raise JoinRefused("server_full", "the server is full")
    limits = room.limits if room is not None else room_limits(state.config, claims.room)
    if limits.single_use_tokens:
        # Checked before admission and spent after it, with no await in between: a
        # concurrent join with the same token id cannot pass the check too.
        try:
            _check_unspent(state, claims, wall)
        except TokenError as exc:
            raise JoinRefused("unauthorized", "unauthorized", reason=exc.reason) from None
    evicted = _place_of(state, room, claims.identity) if room is not None else None
    if limits.single_use_tokens and claims.jti is not None:
        state.store.use_jti(claims.jti, expires_at=claims.exp + state.config.auth.leeway, now=wall)
    if room is None:
        room = state.rooms.create(claims.room, limits=room_limits(state.config, claims.room))
    if evicted is not None:
        _evict(state, evicted, room)
    return room


def _place_of(state: ServerState, room: Room, identity: str) -> Participant | None:
    """The participant this join replaces, if any; raises JoinRefused when it may not join.

    A parked participant (its socket gone: a reload, a crash, a lost network) is taken over by
    a new join with a valid token whatever `duplicate_identity` says: it is the same person
    coming back, and under `reject` they would otherwise be locked out for the resume window."""
    existing = room.by_identity(identity)
    if existing is not None and state.parking.token_of(existing) is not None:
        return existing
    return room.check_admission(identity)


def _evict(state: ServerState, evicted: Participant, room: Room) -> None:
    if state.detach_participant(evicted, room, "duplicate_identity"):
        state.spawn(evicted.close())


def admit_resume(state: ServerState, resume: Resume, peer: str, wall: float) -> Parked:
    """The parked participant `resume` names, its original token re-checked (PROTOCOL 2.7)."""
    parked = state.parking.peek(resume.resume_token)
    if parked is None:
        ended = state.parking.ended(resume.resume_token)
        if ended is not None:
            # Ended by the server while away (kicked, revoked, room closed): the client gets the
            # leave it missed, not a token error it would retry on.
            state.audit.record("resume_refused", ip=peer, reason=ended.reason)
            raise Refused(ServerLeave(reason=ended.reason), ended.close_code, "unauthorized")
        state.audit.record("resume_refused", ip=peer, reason="unknown_resume_token")
        raise _unauthorized(resume.req)
    participant = parked.participant
    if parked.claims.jkt is not None:
        try:
            # A resume token is a bearer secret: a bound session proves its key again. A failed
            # proof leaves the participant parked for its rightful client.
            prove(state, parked.claims.jkt, resume.proof, resume.resume_token, wall)
        except BindingRefused as exc:
            state.audit.record(
                "resume_refused", ip=peer, room=parked.room.name, identity=participant.identity,
                reason=exc.reason, detail=exc.detail,
            )  # fmt: skip
            raise _failed(state, peer, wall, _unauthorized(resume.req), resume.req) from None
    state.parking.take(resume.resume_token)
    try:
        check_claims(state, parked.claims, wall)
    except TokenError as exc:
        state.audit.record(
            "resume_refused", ip=peer, room=parked.room.name, identity=participant.identity,
            reason=exc.reason,
        )  # fmt: skip
        if exc.reason in ("revoked", "key_revoked"):
            state.spawn(parked.room.remove(participant, "revoked"))
            leave = ServerLeave(reason="revoked")
            raise Refused(leave, leave_close("revoked"), "unauthorized") from None
        state.spawn(parked.room.remove(participant, "token_expired"))
        raise _unauthorized(resume.req) from None
    return parked


def _check_unspent(state: ServerState, claims: Claims, wall: float) -> None:
    if claims.jti is None:
        raise TokenError("single_use_without_jti")
    if state.store.jti_spent(claims.jti, wall):
        raise TokenError("jti_reused")


def check_refresh(
    state: ServerState, current: Claims, binding: Binding | None, refresh: Refresh, wall: float
) -> tuple[Claims, Binding | None]:
    """A refresh token's claims and the session's binding after it: valid, not revoked, same
    identity and room, the key binding kept (signaling/binding.py), and in a room of single-use
    tokens unspent (then spent); raises TokenError."""
    token = refresh.token
    claims = state.verifier.verify_join(token, wall)
    if claims.identity != current.identity or claims.room != current.room:
        raise TokenError("identity_or_room_differs")
    check_claims(state, claims, wall)
    binding = bind_refresh(state, binding, claims, refresh.proof, token, wall)
    room = state.rooms.get(claims.room or "")
    if room is not None and room.limits.single_use_tokens:
        _check_unspent(state, claims, wall)
        assert claims.jti is not None
        state.store.use_jti(claims.jti, expires_at=claims.exp + state.config.auth.leeway, now=wall)
    return client_narrowed(claims, binding), binding
