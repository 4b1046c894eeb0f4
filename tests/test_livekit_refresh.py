"""Refreshed tokens (auth/refreshed.py, LiveKit's `refresh_token`): what they carry, their limits,
and keyroom's admission of them (single use, revocation, admin decisions); times passed in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from auth.grants import VideoGrant
from auth.keys import KeyTable
from auth.policy import live_permissions
from auth.refreshed import refreshed_token, video_claim
from auth.tokens import TokenVerifier, mint_token
from signaling.livekit.refresh import refresh_response
from signaling.messages import Join
from signaling.state import ServerState
from tests.conftest import KEY_ID, SECRET
from tests.signaling_helpers import NOW, WALL, audit, close_all, make_state, session, token

KEYS = KeyTable.from_secrets({KEY_ID: SECRET})
VERIFIER = TokenVerifier(KEYS, leeway=0)


def claims_of(raw: str, now: float = WALL):  # type: ignore[no-untyped-def]
    return VERIFIER.verify_join(raw, now)


def test_the_refreshed_token_keeps_times_identity_room_and_never_widens() -> None:
    original = claims_of(
        token("alice", ttl=300, name="Alice", role=None, grants={"canUpdateOwnMetadata": True})
    )
    downgraded = replace(original.grant, can_publish=False, can_publish_data=False)
    raw = refreshed_token(original, downgraded, KEYS, WALL + 100, name="Al", metadata="m")
    assert raw is not None
    refreshed = claims_of(raw, WALL + 100)
    assert (refreshed.identity, refreshed.room, refreshed.key_id) == ("alice", "room1", KEY_ID)
    assert (refreshed.exp, refreshed.iat, refreshed.nbf) == (
        original.exp,
        original.iat,
        original.nbf,
    )
    assert refreshed.jti is not None and refreshed.jti != original.jti
    assert (refreshed.name, refreshed.metadata) == ("Al", "m")
    assert not refreshed.grant.can_publish and not refreshed.grant.can_publish_data
    assert refreshed.grant.can_subscribe and refreshed.grant.can_update_own_metadata
    # A live upgrade (an admin allowed publishing the token did not) is not carried over.
    listener = claims_of(token("bob", grants={"canPublish": False}))
    raw = refreshed_token(listener, replace(listener.grant, can_publish=True), KEYS, WALL,
                          name="", metadata="")  # fmt: skip
    assert raw is not None and not claims_of(raw).grant.can_publish
    # Each refresh is a new single-use id.
    again = refreshed_token(original, original.grant, KEYS, WALL, name="", metadata="")
    assert again is not None and claims_of(again).jti not in (original.jti, refreshed.jti)


def test_nothing_is_minted_past_expiry_or_under_a_public_key() -> None:
    original = claims_of(token("alice", ttl=60))
    assert (
        refreshed_token(original, original.grant, KEYS, original.exp, name="", metadata="") is None
    )
    private = Ed25519PrivateKey.generate()
    pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    table = KeyTable()
    table.add_public_key("app-ed", pem)
    signed = mint_token(key_id="app-ed", secret=private, identity="carol", room="room1", ttl=60,
                        now=WALL)  # fmt: skip
    claims = TokenVerifier(table).verify_join(signed, WALL)
    assert refreshed_token(claims, claims.grant, table, WALL, name="", metadata="") is None


def test_role_binding_and_sources_survive_a_refresh() -> None:
    grant = VideoGrant(room="room1", room_join=True, can_publish_sources=("camera",),
                       clients=("python",), hidden=True)  # fmt: skip
    assert VideoGrant.from_claim(video_claim(grant)) == grant
    original = claims_of(token("dave", bind="A" * 43))
    raw = refreshed_token(original, original.grant, KEYS, WALL, name="", metadata="")
    assert raw is not None
    assert jwt.decode(raw, options={"verify_signature": False})["cnf"] == {"jkt": "A" * 43}


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[ServerState]:
    made = make_state(tmp_path, limits={"single_use_tokens": True})
    yield made
    await close_all(made)


async def _leave(s) -> None:  # type: ignore[no-untyped-def]
    s.end("left")
    await s.finish(NOW)


async def test_a_spent_single_use_token_rejoins_by_its_refresh(state: ServerState) -> None:
    once = token("alice", jti="once-1")
    first, _ = session(state)
    assert first.start(Join(token=once), NOW, WALL).accepted
    response = refresh_response(first, WALL + 1)
    assert response is not None
    refreshed = response.refresh_token
    await _leave(first)
    again, wire = session(state)
    assert not again.start(Join(token=once), NOW + 2, WALL + 2).accepted  # spent
    rejoin, _ = session(state)
    assert rejoin.start(Join(token=refreshed), NOW + 3, WALL + 3).accepted
    await _leave(rejoin)
    replay, _ = session(state)
    assert not replay.start(Join(token=refreshed), NOW + 4, WALL + 4).accepted  # spent too
    events = [r["event"] for r in audit(state)]
    assert "token_refreshed" in events


async def test_a_refresh_is_refused_after_the_identity_is_revoked(state: ServerState) -> None:
    first, _ = session(state)
    assert first.start(Join(token=token("mallory", jti="m-1")), NOW, WALL).accepted
    response = refresh_response(first, WALL + 1)
    assert response is not None
    await _leave(first)
    # Revoked after the refresh was minted: its iat is the application's token's, so it is
    # refused as the original would be.
    state.store.revoke("room1", "mallory", now=WALL + 2, keep_for=3600)
    again, wire = session(state)
    assert not again.start(Join(token=response.refresh_token), NOW + 3, WALL + 3).accepted
    assert wire.frames[0]["code"] == "unauthorized"
    # Signed with the application's key: revoking that key refuses its refreshed tokens too.
    other, _ = session(state)
    assert other.start(Join(token=token("grace", jti="g-1")), NOW + 4, WALL + 4).accepted
    grace = refresh_response(other, WALL + 5)
    assert grace is not None
    await _leave(other)
    state.store.revoke_key(KEY_ID, now=WALL + 6)
    late, _ = session(state)
    assert not late.start(Join(token=grace.refresh_token), NOW + 7, WALL + 7).accepted
    reasons = [r.get("reason") for r in audit(state) if r["event"] == "join_refused"]
    assert reasons[-2:] == ["revoked", "key_revoked"]


async def test_a_permission_downgrade_is_in_the_next_refresh_and_sticks(
    state: ServerState,
) -> None:
    first, _ = session(state)
    assert first.start(Join(token=token("erin", jti="e-1")), NOW, WALL).accepted
    participant, room, claims = first.participant, first.room, first.claims
    assert participant is not None and room is not None and claims is not None
    # What the admin API's update does (signaling/adminops.py), at this test's time.
    downgraded = replace(participant.grant, can_publish=False)
    state.store.narrow("room1", "erin", live_permissions(downgraded), now=WALL + 1, keep_for=3600)
    participant.name = "Erin"
    room.apply_grant(participant, downgraded)
    response = refresh_response(first, WALL + 5)
    assert response is not None
    refreshed = claims_of(response.refresh_token, WALL + 5)
    assert not refreshed.grant.can_publish and refreshed.name == "Erin"
    await _leave(first)
    # The rejoin with the refreshed token keeps the admin's decision (its iat is the original's,
    # so the decision is not superseded).
    rejoin, wire = session(state)
    assert rejoin.start(Join(token=response.refresh_token), NOW + 6, WALL + 6).accepted
    assert wire.frames[0]["participant"]["permissions"]["canPublish"] is False
    assert state.store.narrowing("room1", "erin") is not None


async def test_a_refresh_stays_within_the_token_size_keyroom_admits(tmp_path: Path) -> None:
    state = make_state(tmp_path, limits={"max_metadata_bytes": 4096})
    try:
        first, _ = session(state)
        assert first.start(Join(token=token("frank", metadata="app")), NOW, WALL).accepted
        assert first.participant is not None
        # Metadata the participant set since (within the room's limit) that, JSON-escaped and
        # base64-encoded, would make the token larger than max_token_bytes (8 KiB).
        first.participant.metadata = '"' * 4000
        response = refresh_response(first, WALL + 1)
        assert response is not None
        assert len(response.refresh_token) <= state.verifier.max_token_bytes
        assert claims_of(response.refresh_token, WALL + 1).metadata == "app"
    finally:
        await close_all(state)
