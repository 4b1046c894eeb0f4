"""Acceptance (issue 15): revoking a signing key ends every session signed with it, in every
room, within 1 s, and refuses the key from then on, while other keys' sessions go on; revoking
an identity ends its sessions in every room. The admin calls and the `keyroom` commands."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auth.tokens import mint_token
from signaling.client import KeyroomClient, KeyroomError
from tests.admin_helpers import call
from tests.conftest import KEY_ID, SECRET, ServerProcess, session_end, start_server, stop_server

OTHER_KEY, OTHER_SECRET = "other", "another-secret-that-is-long-enough-987654"


def token(
    identity: str, room: str, key_id: str = KEY_ID, secret: str = SECRET, **kw: object
) -> str:
    return mint_token(
        key_id=key_id, secret=secret, identity=identity, room=room, ttl=600, now=time.time(),
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def operator_token() -> str:
    """Node-wide: roomCreate and roomList, no room; signed with the key that stays."""
    return mint_token(
        key_id=OTHER_KEY, secret=OTHER_SECRET, identity="ops", room=None, ttl=600,
        now=time.time(), grants={"roomCreate": True, "roomList": True},
    )  # fmt: skip


@pytest.fixture
def two_keys(tmp_path: Path) -> ServerProcess:
    server = start_server(tmp_path, "--key", f"{OTHER_KEY}={OTHER_SECRET}")
    yield server  # type: ignore[misc]
    stop_server(server)


async def test_key_revoke_ends_its_sessions_within_a_second_and_spares_other_keys(
    two_keys: ServerProcess,
) -> None:
    server = two_keys
    alice = KeyroomClient(server.ws_url, token("alice", "room1"))
    carol = KeyroomClient(server.ws_url, token("carol", "room2"))
    bob = KeyroomClient(server.ws_url, token("bob", "room1", OTHER_KEY, OTHER_SECRET))
    for client in (alice, carol, bob):
        await client.connect()
    # A room admin may not pull the node-wide switch.
    room_admin = token("ra", "room1", OTHER_KEY, OTHER_SECRET, grants={"roomAdmin": True})
    status, _ = await call(server, "POST", f"/api/keys/{KEY_ID}/revoke", room_admin)
    assert status == 403
    started = time.monotonic()
    status, body = await call(server, "POST", f"/api/keys/{KEY_ID}/revoke", operator_token())
    assert (status, body) == (200, {"key_id": KEY_ID, "sessions_ended": 2})
    codes = await asyncio.gather(session_end(alice), session_end(carol))
    elapsed = time.monotonic() - started
    assert codes == [4410, 4410] and alice.leave_reason == "revoked"
    assert elapsed < 1.0, f"sessions ended {elapsed:.3f} s after the call"
    # Later joins with that key fail; the other key's session goes on and answers.
    with pytest.raises(KeyroomError) as refused:
        await KeyroomClient(server.ws_url, token("alice", "room1")).connect()
    assert refused.value.code == "unauthorized"
    assert (await bob.request({"type": "ping"}))["type"] == "pong"
    status, _ = await call(
        server, "GET", "/api/rooms", token("x", "room1", grants={"roomList": True})
    )
    assert status == 401  # admin tokens of the revoked key too
    await bob.leave()


async def test_identity_revoke_ends_it_in_every_room_and_the_commands_work(
    two_keys: ServerProcess, tmp_path: Path
) -> None:
    server = two_keys
    dave1 = KeyroomClient(server.ws_url, token("dave", "room1"))
    dave2 = KeyroomClient(server.ws_url, token("dave", "room2"))
    erin = KeyroomClient(server.ws_url, token("erin", "room1"))
    for client in (dave1, dave2, erin):
        await client.connect()
    env = {**os.environ, "KEYROOM_ADMIN_TOKEN": operator_token()}
    command = [sys.executable, "-m", "sfu", "identity", "revoke", "dave", "--url", server.http_url]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert '"sessions_ended": 2' in result.stdout
    assert await asyncio.gather(session_end(dave1), session_end(dave2)) == [4410, 4410]
    with pytest.raises(KeyroomError):  # a token issued before the revocation
        await KeyroomClient(
            server.ws_url, mint_token(key_id=KEY_ID, secret=SECRET, identity="dave",
                                      room="room3", ttl=600, now=time.time() - 5)
        ).connect()  # fmt: skip
    assert (await erin.request({"type": "ping"}))["type"] == "pong"
    # `keyroom keys revoke` without a token says so; with one it ends erin's session.
    bare = {k: v for k, v in os.environ.items() if k != "KEYROOM_ADMIN_TOKEN"}
    command = [sys.executable, "-m", "sfu", "keys", "revoke", KEY_ID, "--url", server.http_url]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=bare, timeout=30
    )
    assert result.returncode == 2 and "KEYROOM_ADMIN_TOKEN" in result.stderr
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0 and '"sessions_ended": 1' in result.stdout, result.stderr
    assert await session_end(erin) == 4410


def test_key_revocation_persists_across_restarts(tmp_path: Path) -> None:
    from auth.store import AuthStore

    path = str(tmp_path / "auth.db")
    store = AuthStore(path)
    assert store.revoke_key("k1", now=1.0) and not store.revoke_key("k1", now=2.0)
    store.close()
    again = AuthStore(path)
    assert again.key_revoked("k1") and not again.key_revoked("k2")
    again.close()
