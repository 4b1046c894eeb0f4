"""Server-side decisions stick for the token's lifetime (issue 11 item 7): an admin's live
permission downgrade and an admin mute survive a rejoin with a token issued before them; a
revoked identity's admin token no longer acts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from auth.grants import VideoGrant
from auth.policy import live_permissions, narrowed_grant, updated_grant
from auth.store import AuthStore
from signaling.client import KeyroomClient, KeyroomError
from signaling.media import SyntheticAudioTrack
from signaling.messages import AddTrack, Mute
from signaling.state import ServerState
from tests.admin_helpers import call
from tests.conftest import ServerProcess
from tests.signaling_helpers import NOW, WALL, close_all, join, make_state

TTL = 3600.0


def test_a_downgrade_narrows_a_grant_and_never_widens_it() -> None:
    token = VideoGrant(can_publish=True, can_publish_sources=("camera", "microphone"))
    down = updated_grant(token, {"canPublishData": False, "canPublishSources": ["microphone"]})
    narrowed = narrowed_grant(token, live_permissions(down))
    assert not narrowed.can_publish_data and narrowed.can_publish
    assert narrowed.can_publish_sources == ("microphone",)
    # An admin's live upgrade is for its session: a rejoin gets no more than the token says.
    weak = VideoGrant(can_publish=False, can_subscribe=False)
    up = updated_grant(weak, {"canPublish": True, "canSubscribe": True})
    assert narrowed_grant(weak, live_permissions(up)) == weak
    assert narrowed_grant(token, live_permissions(token)) == token


def test_decisions_are_persisted_and_forgotten_by_a_newer_token(tmp_path: Path) -> None:
    path = str(tmp_path / "auth.db")
    store = AuthStore(path)
    store.narrow("r", "bob", {"canPublish": False}, now=100.0, keep_for=TTL)
    store.admin_mute("r", "bob", "microphone", True, now=100.0, keep_for=TTL)
    store.close()
    store = AuthStore(path)  # a restart keeps them
    assert store.narrowing("r", "bob") == {"canPublish": False}
    assert store.admin_muted("r", "bob", "microphone")
    assert not store.admin_muted("r", "bob", "camera") and store.narrowing("r", "eve") is None
    store.forget_decisions("r", "bob", issued_at=100.0, now=150.0)  # issued before: kept
    store.forget_decisions("r", "bob", issued_at=None, now=150.0)  # no iat: cannot be newer
    assert store.narrowing("r", "bob") is not None and store.admin_muted("r", "bob", "microphone")
    store.forget_decisions("r", "bob", issued_at=101.0, now=150.0)  # the application's new word
    assert store.narrowing("r", "bob") is None and not store.admin_muted("r", "bob", "microphone")
    store.admin_mute("r", "bob", "camera", True, now=200.0, keep_for=TTL)
    store.forget_decisions("r", "bob", issued_at=None, now=200.0 + TTL)  # expired
    assert not store.admin_muted("r", "bob", "camera")
    store.admin_mute("r", "bob", "camera", True, now=300.0, keep_for=TTL)
    store.admin_mute("r", "bob", "camera", False, now=301.0, keep_for=TTL)
    assert not store.admin_muted("r", "bob", "camera")
    store.close()


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[ServerState]:
    state = make_state(tmp_path)
    yield state
    await close_all(state)


async def test_admission_applies_a_downgrade_to_tokens_issued_before_it(
    state: ServerState,
) -> None:
    state.store.narrow("room1", "bob", {"canPublish": False}, now=WALL + 10, keep_for=TTL)
    bob, wire, outcome = join(state, "bob", wall=WALL + 20)  # token minted at WALL + 20
    assert outcome.accepted and bob.participant is not None
    assert bob.participant.grant.can_publish  # issued after the decision: not narrowed
    assert state.store.narrowing("room1", "bob") is None
    state.store.narrow("room1", "bob", {"canPublish": False}, now=WALL + 30, keep_for=TTL)
    await bob.handle(AddTrack(cid="a", kind="audio", req=1), NOW, WALL + 31)
    assert wire.frames[-1]["type"] == "track_published"
    room = state.rooms.get("room1")
    assert room is not None
    await room.remove(bob.participant, "left")
    again, wire, _ = join(state, "bob", wall=WALL + 20)  # the same (older) token
    assert again.participant is not None and not again.participant.grant.can_publish
    assert wire.of_type("joined")[0]["participant"]["permissions"]["canPublish"] is False
    await again.handle(AddTrack(cid="b", kind="audio", req=2), NOW, WALL + 40)
    assert wire.frames[-1]["code"] == "forbidden"


async def test_an_admin_muted_source_stays_muted_when_republished(state: ServerState) -> None:
    state.store.admin_mute("room1", "bob", "microphone", True, now=WALL + 10, keep_for=TTL)
    bob, wire, _ = join(state, "bob", wall=WALL)
    await bob.handle(AddTrack(cid="a", kind="audio", req=1), NOW, WALL + 11)
    track = wire.frames[-1]["track"]
    assert track["muted"] is True
    await bob.handle(Mute(track_sid=track["sid"], muted=False, req=2), NOW, WALL + 12)
    assert wire.frames[-1] == {
        "type": "error", "req": 2, "code": "forbidden", "message": "an admin muted this track",
    }  # fmt: skip
    await bob.handle(AddTrack(cid="c", kind="video", req=3), NOW, WALL + 13)
    assert wire.frames[-1]["track"]["muted"] is False  # another source is not muted


def admin(server: ServerProcess, identity: str = "ops") -> str:
    return server.token(identity, room="room1", grants={"roomAdmin": True})


async def test_admin_mute_and_downgrade_stick_across_rejoin(server: ServerProcess) -> None:
    ops, token = admin(server), server.token("bob")
    bob = KeyroomClient(server.ws_url, token)
    await bob.connect()
    info = await bob.publish(SyntheticAudioTrack(), source="microphone")
    path = f"/api/rooms/room1/participants/bob/tracks/{info['sid']}/mute"
    assert (await call(server, "POST", path, ops, {"muted": True}))[0] == 204
    with pytest.raises(KeyroomError) as refused:
        await bob.mute(info["sid"], False)
    assert refused.value.code == "forbidden"
    permissions = {"permissions": {"canPublishData": False, "canUpdateOwnMetadata": False}}
    status, _ = await call(server, "PATCH", "/api/rooms/room1/participants/bob", ops, permissions)
    assert status == 200
    await bob.leave()
    bob = KeyroomClient(server.ws_url, token)  # the same token: the decisions hold
    joined = await bob.connect()
    assert joined["participant"]["permissions"]["canPublishData"] is False
    info = await bob.publish(SyntheticAudioTrack(), source="microphone")
    assert info["muted"] is True
    with pytest.raises(KeyroomError) as refused:
        await bob.mute(info["sid"], False)
    assert refused.value.code == "forbidden"
    path = f"/api/rooms/room1/participants/bob/tracks/{info['sid']}/mute"
    assert (await call(server, "POST", path, ops, {"muted": False}))[0] == 204
    await bob.mute(info["sid"], True)
    await bob.mute(info["sid"], False)  # an admin unmuted it: the publisher decides again
    await bob.leave()


async def test_a_revoked_identitys_admin_token_no_longer_acts(server: ServerProcess) -> None:
    ops, deputy = admin(server), admin(server, "deputy")
    watcher = KeyroomClient(server.ws_url, server.token("watcher"))
    await watcher.connect()  # the room exists
    try:
        assert (await call(server, "GET", "/api/rooms/room1/participants", deputy))[0] == 200
        status, _ = await call(
            server, "DELETE", "/api/rooms/room1/participants/deputy?revoke=true", ops
        )
        assert status == 204
        for method, path in [
            ("GET", "/api/rooms/room1/participants"),
            ("DELETE", "/api/rooms/room1/participants/watcher"),
        ]:
            status, body = await call(server, method, path, deputy)
            assert status == 401 and body["error"]["code"] == "unauthorized", (method, path)
        assert await watcher.ping() < 1  # the revoked admin removed nobody
        assert (await call(server, "GET", "/api/rooms/room1/participants", ops))[0] == 200
    finally:
        await watcher.leave()
