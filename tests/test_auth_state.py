"""Revocation/jti store, failure brake and roles: pure or embedded, no sockets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from auth.brake import FailureBrake
from auth.grants import apply_role
from auth.keys import KeyTable
from auth.store import AuthStore
from auth.tokens import TokenError, TokenVerifier, mint_token

SECRET = "s" * 40


def test_revocation_refuses_tokens_issued_before_it(tmp_path: Path) -> None:
    store = AuthStore(str(tmp_path / "auth.db"))
    store.revoke("r", "mallory", now=1000.0, keep_for=3600)
    assert store.is_revoked("r", "mallory", issued_at=999.0, now=1001.0)
    assert store.is_revoked("r", "mallory", issued_at=None, now=1001.0)
    assert not store.is_revoked("r", "mallory", issued_at=1000.5, now=1001.0)
    assert not store.is_revoked("other", "mallory", issued_at=999.0, now=1001.0)
    assert not store.is_revoked("r", "mallory", issued_at=999.0, now=5000.0)  # outlived
    store.close()
    reopened = AuthStore(str(tmp_path / "auth.db"))  # persisted across a restart
    assert reopened.is_revoked("r", "mallory", issued_at=999.0, now=1001.0)


def test_single_use_jti_is_spent_once_even_across_restarts(tmp_path: Path) -> None:
    store = AuthStore(str(tmp_path / "auth.db"))
    assert store.use_jti("j1", expires_at=2000.0, now=1000.0)
    assert not store.use_jti("j1", expires_at=2000.0, now=1000.0)
    store.close()
    assert not AuthStore(str(tmp_path / "auth.db")).use_jti("j1", expires_at=2000.0, now=1500.0)


def test_brake_blocks_after_too_many_failures_then_forgets() -> None:
    brake = FailureBrake(max_failures=3, window=10)
    for t in (0.0, 1.0):
        brake.failure("ip", t)
    assert not brake.blocked("ip", 2.0)
    brake.failure("ip", 2.0)
    assert brake.blocked("ip", 3.0)
    assert not brake.blocked("other", 3.0)
    assert not brake.blocked("ip", 12.5)


def test_brake_memory_is_bounded() -> None:
    brake = FailureBrake(max_failures=2, window=10, max_keys=100)
    for n in range(1000):
        brake.failure(f"k{n}", 0.0)
    assert len(brake._failures) <= 100  # noqa: SLF001


ROLES = {
    "viewer": {"canPublish": False, "canPublishData": True},
    "host": {"canPublishSources": ["camera", "microphone"], "roomAdmin": True},
}


def test_role_is_narrowed_by_the_token_never_widened() -> None:
    viewer = apply_role(ROLES["viewer"], {"room": "r", "roomJoin": True, "canPublish": True})
    assert not viewer.can_publish and viewer.can_subscribe and viewer.room == "r"
    host = apply_role(
        ROLES["host"],
        {"room": "r", "roomJoin": True, "canPublishSources": ["camera", "screen_share"]},
    )
    assert host.can_publish_sources == ("camera",) and host.room_admin
    no_admin = apply_role(ROLES["host"], {"room": "r", "roomAdmin": False, "roomCreate": True})
    assert not no_admin.room_admin and not no_admin.room_create


def test_verifier_expands_roles_and_refuses_unknown_ones() -> None:
    keys = KeyTable.from_secrets({"k": SECRET})
    verifier = TokenVerifier(keys, roles=ROLES)
    now = time.time()
    token = mint_token(
        key_id="k", secret=SECRET, identity="v", room="r", ttl=60, now=now, role="viewer"
    )
    assert not verifier.verify_join(token, now).grant.can_publish
    bad = mint_token(key_id="k", secret=SECRET, identity="v", room="r", ttl=60, now=now, role="god")
    with pytest.raises(TokenError, match="unknown_role"):
        verifier.verify_join(bad, now)
    with pytest.raises(ValueError, match="roles.broken"):
        TokenVerifier(keys, roles={"broken": {"canPublish": "yes"}})
