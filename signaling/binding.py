"""Tokens bound to a client key: the server's side of proof of possession (issue 15).

A token with `cnf.jkt` is only admitted with a proof (auth/keybinding.py) signed by that key
over a nonce this server handed out (`GET /rtc/nonce`) and still unspent. A room or a role may
refuse bearer tokens altogether (`require_bound_tokens`). Resume and refresh keep the binding:
a resumed bound session proves the key again, and a refresh must name the same key or prove the
new one. A grant's `clients` list narrows publishing to the client kinds the proof names.

Refusals raise `BindingRefused` (a TokenError with reason `pop_failed`; `detail` says why, for
the audit log only). Synchronous, `wall` passed in, like the rest of admission.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from msgspec import UNSET, UnsetType

from auth.grants import role_requires_binding
from auth.keybinding import ProofError, verify_proof
from auth.tokens import Claims, TokenError
from sfu.config import room_limits
from signaling.state import ServerState

POP_FAILED = "pop_failed"


class BindingRefused(TokenError):
    def __init__(self, detail: str) -> None:
        super().__init__(POP_FAILED)
        self.detail = detail


@dataclass(frozen=True)
class Binding:
    """What a session proved: the key's thumbprint and the client kind its proof names."""

    jkt: str
    client: str


def binding_required(state: ServerState, claims: Claims) -> bool:
    """Whether the token's room or role refuses bearer tokens."""
    if role_requires_binding(state.config.roles, claims.role):
        return True
    room = state.rooms.get(claims.room or "")
    limits = room.limits if room is not None else room_limits(state.config, claims.room or "")
    return limits.require_bound_tokens


def prove(
    state: ServerState, jkt: str, proof: str | UnsetType, credential: str, wall: float
) -> Binding:
    """The binding `proof` establishes for the key `jkt` and `credential`; spends its nonce."""
    if proof is UNSET:
        raise BindingRefused("no_proof")
    assert isinstance(proof, str)
    try:
        checked = verify_proof(proof, expected_jkt=jkt, credential=credential)
    except ProofError as exc:
        raise BindingRefused(exc.reason) from None
    # Spent only once the signature holds: a forged proof cannot burn someone's nonce.
    if not state.nonces.spend(checked.nonce, wall):
        raise BindingRefused("nonce_unknown_or_spent")
    return Binding(jkt, checked.client)


def bind_join(
    state: ServerState, claims: Claims, proof: str | UnsetType, token: str, wall: float
) -> Binding | None:
    """A join's binding (None for an accepted bearer token); raises BindingRefused."""
    if claims.jkt is None:
        if binding_required(state, claims):
            raise BindingRefused("unbound_token")
        return None
    return prove(state, claims.jkt, proof, token, wall)


def bind_refresh(
    state: ServerState,
    current: Binding | None,
    claims: Claims,
    proof: str | UnsetType,
    token: str,
    wall: float,
) -> Binding | None:
    """The binding after a refresh: the same key needs no new proof; another key, or a bound
    token on a bearer session, is proved; a bearer token cannot replace a bound session."""
    if claims.jkt is None:
        if current is not None:
            raise BindingRefused("binding_dropped")
        return bind_join(state, claims, proof, token, wall)
    if current is not None and current.jkt == claims.jkt:
        return current
    return prove(state, claims.jkt, proof, token, wall)


def client_narrowed(claims: Claims, binding: Binding | None) -> Claims:
    """A grant with `clients` publishes only from a client that proved one of those kinds."""
    clients = claims.grant.clients
    if clients is None or (binding is not None and binding.client in clients):
        return claims
    grant = replace(claims.grant, can_publish=False, can_publish_data=False)
    return replace(claims, grant=grant)
