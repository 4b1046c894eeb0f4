"""The incident kill-switches (issue 15): revoke a signing key, or an identity in every room.

`revoke_key` refuses every token signed with the key from now on (persisted: auth/store.py) and
ends, at once, every session on this node whose token was signed with it, live or parked, in
every room. `revoke_identity` does the same for one identity's tokens issued until now. Both
are audited, and reached through the admin API (`add_revocation_routes`) and the
`keyroom keys revoke` / `keyroom identity revoke` commands (sfu/incidentcli.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from auth.policy import Decision, may_admin_node
from auth.store import ALL_ROOMS
from auth.tokens import Claims
from sfu.participant import Participant
from sfu.room import Room
from signaling.state import ServerState

REVOKED = "revoked"


def _claims_of(state: ServerState, participant: Participant) -> Claims | None:
    session = state.sessions_by_participant.get(participant.sid)
    if session is not None:
        return session.claims
    token = state.parking.token_of(participant)
    parked = state.parking.peek(token) if token is not None else None
    return None if parked is None else parked.claims


def _matching(
    state: ServerState, match: Callable[[Participant, Claims], bool]
) -> list[tuple[Participant, Room]]:
    found = []
    for room in list(state.rooms.rooms.values()):
        for participant in list(room.participants.values()):
            claims = _claims_of(state, participant)
            if claims is not None and match(participant, claims):
                found.append((participant, room))
    return found


async def _end_all(state: ServerState, ended: list[tuple[Participant, Room]]) -> None:
    # Out of their rooms first, all of them, before any awaits on closing connections.
    closing = [(p, r) for p, r in ended if state.detach_participant(p, r, REVOKED)]
    for participant, _room in closing:
        await participant.close()


async def revoke_key(state: ServerState, key_id: str, *, by: str | None, now: float) -> int:
    """Refuse `key_id` from now on and end its sessions; the number of sessions ended."""
    state.store.revoke_key(key_id, now=now)
    ended = _matching(state, lambda _p, claims: claims.key_id == key_id)
    state.audit.record("key_revoked", key_id=key_id, by=by, sessions=len(ended))
    await _end_all(state, ended)
    return len(ended)


async def revoke_identity(state: ServerState, identity: str, *, by: str | None, now: float) -> int:
    """Refuse `identity`'s tokens issued until now, in every room, and end its sessions."""
    keep_for = state.config.auth.max_token_ttl
    state.store.revoke(ALL_ROOMS, identity, now=now, keep_for=keep_for)
    ended = _matching(state, lambda participant, _c: participant.identity == identity)
    state.audit.record("identity_revoked", identity=identity, by=by, sessions=len(ended))
    await _end_all(state, ended)
    return len(ended)


Allow = Callable[[web.Request, Claims, Decision], None]
Call = Callable[[web.Request, Claims], Awaitable[web.Response]]
Wrap = Callable[[Call], Callable[[web.Request], Awaitable[web.StreamResponse]]]


def add_revocation_routes(
    app: web.Application, state: ServerState, wrap: Wrap, allow: Allow
) -> None:
    """`POST /api/keys/{key_id}/revoke` and `POST /api/identities/{identity}/revoke`, behind the
    admin API's authentication (`wrap`) and audit (`allow`)."""

    async def key(request: web.Request, claims: Claims) -> web.Response:
        allow(request, claims, may_admin_node(claims.grant))
        key_id = request.match_info["key_id"]
        ended = await revoke_key(state, key_id, by=claims.key_id, now=time.time())
        return web.json_response({"key_id": key_id, "sessions_ended": ended})

    async def identity(request: web.Request, claims: Claims) -> web.Response:
        allow(request, claims, may_admin_node(claims.grant))
        name = request.match_info["identity"]
        ended = await revoke_identity(state, name, by=claims.key_id, now=time.time())
        return web.json_response({"identity": name, "sessions_ended": ended})

    app.router.add_post("/api/keys/{key_id}/revoke", wrap(key))
    app.router.add_post("/api/identities/{identity}/revoke", wrap(identity))
