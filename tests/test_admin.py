"""Admin API and live access control, through a real server (PROTOCOL sections 3 and 4)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signaling.client import KeyroomClient, KeyroomError, count_frames
from signaling.media import SyntheticAudioTrack, SyntheticVideoTrack
from tests.admin_helpers import call
from tests.conftest import ServerProcess, eventually, session_end, start_server, stop_server


def admin(server: ServerProcess, room: str = "room1", **grants: Any) -> str:
    return server.token("ops", room=room, grants={"roomAdmin": True, **grants})


async def test_admin_api_refuses_missing_wrong_and_out_of_scope_tokens(
    server: ServerProcess,
) -> None:
    client = KeyroomClient(server.ws_url, server.token("alice", room="A"))
    other = KeyroomClient(server.ws_url, server.token("bob", room="B"))
    await client.connect()
    await other.connect()
    try:
        assert (await call(server, "GET", "/api/rooms", None))[0] == 401
        assert (await call(server, "GET", "/api/rooms", "garbage"))[0] == 401
        participant_token = server.token("alice", room="A")
        status, body = await call(server, "GET", "/api/rooms", participant_token)
        assert status == 403 and body["error"]["code"] == "forbidden"
        assert (await call(server, "GET", "/api/rooms/A", participant_token))[0] == 403
        admin_a = admin(server, room="A")
        assert (await call(server, "GET", "/api/rooms/A", admin_a))[0] == 200
        for method, path in [
            ("GET", "/api/rooms/B"),
            ("DELETE", "/api/rooms/B/participants/bob"),
            ("PATCH", "/api/rooms/B"),
        ]:
            status, body = await call(server, method, path, admin_a, {})
            assert status == 403, (method, path)
        assert await other.ping() < 1  # bob untouched
        status, body = await call(
            server, "GET", "/api/rooms", server.token("lister", grants={"roomList": True})
        )
        assert status == 200 and {r["name"] for r in body["rooms"]} == {"A", "B"}
    finally:
        await client.leave()
        await other.leave()


async def test_create_patch_and_delete_a_room(server: ServerProcess) -> None:
    creator = server.token("ops", room="conf", grants={"roomCreate": True, "roomAdmin": True})
    status, body = await call(
        server, "POST", "/api/rooms", creator, {"name": "conf", "limits": {"max_participants": 2}}
    )
    assert status == 201 and body["room"]["limits"]["max_participants"] == 2
    assert (await call(server, "POST", "/api/rooms", creator, {"name": "conf"}))[0] == 409
    status, body = await call(
        server, "POST", "/api/rooms", creator, {"name": "x", "limits": {"max_participantz": 1}}
    )
    assert status == 400 and "max_participantz" in body["error"]["message"]
    a = KeyroomClient(server.ws_url, server.token("a", room="conf"))
    b = KeyroomClient(server.ws_url, server.token("b", room="conf"))
    c = KeyroomClient(server.ws_url, server.token("c", room="conf"))
    await a.connect()
    await b.connect()
    with pytest.raises(KeyroomError) as refused:
        await c.connect()
    assert refused.value.code == "room_full" and refused.value.close_code == 4403
    # Lowering the limit below the count refuses newcomers and removes nobody.
    status, body = await call(
        server, "PATCH", "/api/rooms/conf", creator, {"limits": {"max_participants": 1}}
    )
    assert status == 200 and body["room"]["limits"]["max_participants"] == 1
    assert (await a.next_event("room_updated"))["room"]["limits"]["max_participants"] == 1
    assert await a.ping() < 1 and await b.ping() < 1
    await call(server, "PATCH", "/api/rooms/conf", creator, {"limits": {"max_participants": 3}})
    c = KeyroomClient(server.ws_url, server.token("c", room="conf"))
    await c.connect()
    status, body = await call(server, "GET", "/api/rooms/conf/participants", creator)
    assert sorted(p["identity"] for p in body["participants"]) == ["a", "b", "c"]
    assert (await call(server, "DELETE", "/api/rooms/conf", creator))[0] == 204
    for client in (a, b, c):
        assert (await client.next_event("leave", timeout=5))["reason"] == "room_closed"
    assert [await session_end(client) for client in (a, b, c)] == [1000, 1000, 1000]
    assert (await call(server, "GET", "/api/rooms/conf", creator))[0] == 404
    for client in (a, b, c):
        await client.close()


async def test_kick_and_revoke(server: ServerProcess) -> None:
    ops = admin(server)
    victim = KeyroomClient(server.ws_url, server.token("victim"))
    watcher = KeyroomClient(server.ws_url, server.token("watcher"))
    await victim.connect()
    await watcher.connect()
    assert (await call(server, "DELETE", "/api/rooms/room1/participants/victim", ops))[0] == 204
    assert (await victim.next_event("leave", timeout=5))["reason"] == "removed"
    left = await watcher.next_event("participant_left", timeout=5)
    assert left["identity"] == "victim" and left["reason"] == "removed"
    assert await session_end(victim) == 4410
    await victim.close()
    # A kick is not a ban: a token issued earlier still joins. A revoke refuses it.
    old_token = server.token("victim")
    victim = KeyroomClient(server.ws_url, old_token)
    await victim.connect()
    status, _ = await call(
        server, "DELETE", "/api/rooms/room1/participants/victim?revoke=true", ops
    )
    assert status == 204
    assert (await victim.next_event("leave", timeout=5))["reason"] == "revoked"
    await victim.close()
    with pytest.raises(KeyroomError) as refused:
        await KeyroomClient(server.ws_url, old_token).connect()
    assert refused.value.close_code == 4401
    # A token issued after the revocation is accepted: `iat` counts whole seconds, so one
    # issued in the next second is the first that is newer (within the default leeway).
    fresh = KeyroomClient(server.ws_url, server.token("victim", now=time.time() + 1.1))
    await fresh.connect()
    await fresh.leave()
    await watcher.leave()


async def test_revocation_survives_a_restart(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    old_token = server.token("mallory")
    try:
        status, _ = await call(
            server, "DELETE", "/api/rooms/room1/participants/mallory?revoke=true", admin(server)
        )
        assert status == 404  # no such room yet: revoking needs the room to exist
        client = KeyroomClient(server.ws_url, server.token("someone"))
        await client.connect()
        status, _ = await call(
            server, "DELETE", "/api/rooms/room1/participants/mallory?revoke=true", admin(server)
        )
        assert status == 204
        await client.leave()
    finally:
        stop_server(server)
    server = start_server(tmp_path)  # same data directory
    try:
        with pytest.raises(KeyroomError) as refused:
            await KeyroomClient(server.ws_url, old_token).connect()
        assert refused.value.close_code == 4401
    finally:
        stop_server(server)


async def test_live_revoke_of_publish_stops_packets_within_a_second(server: ServerProcess) -> None:
    ops = admin(server)
    pub = KeyroomClient(server.ws_url, server.token("pub"))
    sub = KeyroomClient(server.ws_url, server.token("sub"))
    await pub.connect()
    await sub.connect()
    try:
        info = await pub.publish(SyntheticVideoTrack(), source="camera")
        remote = await sub.next_track(timeout=10)
        assert await count_frames(remote.track, 5.0, enough=1) > 0
        status, body = await call(
            server, "PATCH", "/api/rooms/room1/participants/pub", ops,
            {"permissions": {"canPublish": False}},
        )  # fmt: skip
        assert status == 200 and body["participant"]["permissions"]["canPublish"] is False
        revoked_at = time.monotonic()
        event = await sub.next_event("track_unpublished", timeout=2)
        assert event["track_sid"] == info["sid"]
        assert (await pub.next_event("permissions_changed"))["permissions"]["canPublish"] is False
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - revoked_at)))
        settled = server.runtime()["stats"]
        # pub still sends: a second of its video (15 packets or more) reaches the server...
        await eventually(
            lambda: server.rtp_arrived() >= server.rtp_arrived(settled) + 15, timeout=5
        )
        # ...and none of it is forwarded.
        assert server.runtime()["stats"]["packets_out"] == settled["packets_out"]
        with pytest.raises(KeyroomError) as refused:
            await pub.publish(SyntheticAudioTrack(), source="microphone")
        assert refused.value.code == "forbidden"
        # Granting publish again works without rejoining.
        await call(
            server, "PATCH", "/api/rooms/room1/participants/pub", ops,
            {"permissions": {"canPublish": True}},
        )  # fmt: skip
        await pub.next_event("permissions_changed")
        await pub.publish(SyntheticAudioTrack(), source="microphone")
        again = await sub.next_track(timeout=10, predicate=lambda r: r.kind == "audio")
        assert await count_frames(again.track, 5.0, enough=1) > 0
    finally:
        await pub.leave()
        await sub.leave()


async def test_live_revoke_of_subscribe_stops_forwarding(server: ServerProcess) -> None:
    ops = admin(server)
    pub = KeyroomClient(server.ws_url, server.token("pub"))
    sub = KeyroomClient(server.ws_url, server.token("sub"))
    await pub.connect()
    await sub.connect()
    try:
        await pub.publish(SyntheticAudioTrack(), source="microphone")
        remote = await sub.next_track(timeout=10)
        assert await count_frames(remote.track, 5.0, enough=1) > 0
        await call(
            server, "PATCH", "/api/rooms/room1/participants/sub", ops,
            {"permissions": {"canSubscribe": False}},
        )  # fmt: skip
        await asyncio.sleep(1.0)
        settled = server.runtime()["stats"]
        # pub still sends: a second of its audio (50 packets) reaches the server...
        await eventually(
            lambda: server.rtp_arrived() >= server.rtp_arrived(settled) + 50, timeout=5
        )
        # ...and none of it is forwarded.
        assert server.runtime()["stats"]["packets_out"] == settled["packets_out"]
        with pytest.raises(KeyroomError) as refused:
            await sub.subscribe([remote.track_sid])
        assert refused.value.code == "forbidden"
    finally:
        await pub.leave()
        await sub.leave()


async def test_admin_mute_and_metadata(server: ServerProcess) -> None:
    ops = admin(server)
    pub = KeyroomClient(server.ws_url, server.token("pub"))
    other = KeyroomClient(server.ws_url, server.token("other"))
    await pub.connect()
    await other.connect()
    try:
        info = await pub.publish(SyntheticAudioTrack(), source="microphone")
        path = f"/api/rooms/room1/participants/pub/tracks/{info['sid']}/mute"
        assert (await call(server, "POST", path, ops, {"muted": True}))[0] == 204
        for client in (pub, other):
            event = await client.next_event("track_muted")
            assert event["track_sid"] == info["sid"] and event["muted"] is True
        status, body = await call(
            server, "PATCH", "/api/rooms/room1/participants/pub", ops, {"metadata": "vip"}
        )
        assert status == 200 and body["participant"]["metadata"] == "vip"
        updated = await other.next_event("participant_updated")
        assert updated["participant"]["metadata"] == "vip"
        status, body = await call(
            server, "PATCH", "/api/rooms/room1/participants/pub", ops,
            {"permissions": {"hidden": True}},
        )  # fmt: skip
        assert status == 400
    finally:
        await pub.leave()
        await other.leave()


async def test_hidden_participant_is_invisible(server: ServerProcess) -> None:
    ops = admin(server)
    alice = KeyroomClient(server.ws_url, server.token("alice"))
    await alice.connect()
    ghost = KeyroomClient(server.ws_url, server.token("ghost", grants={"hidden": True}))
    joined = await ghost.connect()
    try:
        await alice.publish(SyntheticAudioTrack(), source="microphone")
        assert await count_frames((await ghost.next_track(timeout=10)).track, 0.5) > 0
        assert joined["participant"]["permissions"]["canPublish"] is False
        with pytest.raises(KeyroomError):
            await ghost.publish(SyntheticAudioTrack(), source="microphone")
        bob = KeyroomClient(server.ws_url, server.token("bob"))
        bob_joined = await bob.connect()
        assert [p["identity"] for p in bob_joined["participants"]] == ["alice"]
        assert bob_joined["room"]["num_participants"] == 2
        await ghost.leave()  # returns once the server has handled the leave
        for client in (alice, bob):
            await client.ping()  # any event about it was sent before this reply
            assert all("ghost" not in str(e) for e in client.events), (
                "the hidden participant appeared in an event"
            )
        status, body = await call(server, "GET", "/api/rooms/room1/participants", ops)
        assert {p["identity"]: p["hidden"] for p in body["participants"]} == {
            "alice": False,
            "bob": False,
        }
        await bob.leave()
    finally:
        await alice.leave()


async def test_admin_brute_force_is_braked(server: ServerProcess) -> None:
    for _ in range(10):
        assert (await call(server, "GET", "/api/rooms", "bad-token"))[0] == 401
    status, body = await call(server, "GET", "/api/rooms", "bad-token")
    assert status == 429 and body["error"]["code"] == "rate_limited"
    # Only failures pay: a good token from the same address (a colleague behind the same
    # NAT) is answered as usual.
    good = server.token("lister", grants={"roomList": True})
    assert (await call(server, "GET", "/api/rooms", good))[0] == 200


async def test_join_brute_force_is_braked(server: ServerProcess) -> None:
    for _ in range(10):
        with pytest.raises(KeyroomError) as refused:
            await KeyroomClient(server.ws_url, "not-a-token").connect()
        assert refused.value.close_code == 4401
    with pytest.raises(KeyroomError) as braked:
        await KeyroomClient(server.ws_url, "still-not-a-token").connect()
    assert braked.value.code == "rate_limited" and braked.value.close_code == 4429
    # A valid token from the braked address joins: the brake never costs the neighbours.
    colleague = KeyroomClient(server.ws_url, server.token("colleague"))
    assert (await colleague.connect())["type"] == "joined"
    await colleague.leave()


async def test_single_use_token_wins_once_under_20_concurrent_joins(tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text("[rooms.once]\nsingle_use_tokens = true\n")
    server = start_server(tmp_path, "--config", str(config))
    try:
        token = server.token("alice", room="once")
        clients = [KeyroomClient(server.ws_url, token) for _ in range(20)]
        results = await asyncio.gather(*(c.connect() for c in clients), return_exceptions=True)
        winners = [c for c, r in zip(clients, results, strict=True) if isinstance(r, dict)]
        assert len(winners) == 1
        refused = [r for r in results if isinstance(r, KeyroomError)]
        # Replays are refusals: past the brake's threshold they are rate-limited instead.
        assert len(refused) == 19 and {r.close_code for r in refused} <= {4401, 4429}
        assert 4401 in {r.close_code for r in refused}
        await winners[0].leave()
        with pytest.raises(KeyroomError):  # and never again, even after it left
            await KeyroomClient(server.ws_url, token).connect()
    finally:
        stop_server(server)


async def test_concurrent_joins_admit_exactly_the_limit(tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text("[limits]\nmax_participants = 3\n")
    server = start_server(tmp_path, "--config", str(config))
    try:
        clients = [KeyroomClient(server.ws_url, server.token(f"p{i}")) for i in range(8)]
        results = await asyncio.gather(*(c.connect() for c in clients), return_exceptions=True)
        admitted = [c for c, r in zip(clients, results, strict=True) if isinstance(r, dict)]
        assert len(admitted) == 3
        assert {r.code for r in results if isinstance(r, KeyroomError)} == {"room_full"}
        for client in admitted:
            await client.leave()
    finally:
        stop_server(server)


async def test_duplicate_identity_reject_and_replace(tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text('[rooms.swap]\nduplicate_identity = "replace"\n')
    server = start_server(tmp_path, "--config", str(config))
    try:
        first = KeyroomClient(server.ws_url, server.token("alice"))
        await first.connect()
        with pytest.raises(KeyroomError) as refused:
            await KeyroomClient(server.ws_url, server.token("alice")).connect()
        assert refused.value.code == "conflict" and refused.value.close_code == 4409
        await first.leave()
        old = KeyroomClient(server.ws_url, server.token("alice", room="swap"))
        await old.connect()
        new = KeyroomClient(server.ws_url, server.token("alice", room="swap"))
        await new.connect()
        assert (await old.next_event("leave", timeout=5))["reason"] == "duplicate_identity"
        assert await session_end(old) == 4409
        assert await new.ping() < 1
        await old.close()
        await new.leave()
    finally:
        stop_server(server)


async def test_session_ends_at_exp_unless_refreshed(tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text("[auth]\nleeway = 0\nrefresh_notice = 1\n")
    server = start_server(tmp_path, "--config", str(config))
    try:
        issued = time.time()
        # short expires a second after kept's first token would have: its end proves that
        # moment has passed.
        short = KeyroomClient(server.ws_url, server.token("short", ttl=3, now=issued))
        await short.connect()
        refreshed = KeyroomClient(server.ws_url, server.token("kept", ttl=2, now=issued))
        await refreshed.connect()
        notice = await refreshed.next_event("token_refresh_required", timeout=3)
        assert notice["expires_at"] > time.time()
        await refreshed.request({"type": "refresh", "token": server.token("kept", ttl=60)})
        with pytest.raises(KeyroomError) as wrong:  # another identity's token never refreshes
            await refreshed.request({"type": "refresh", "token": server.token("other", ttl=60)})
        assert wrong.value.code == "unauthorized"
        event = await short.next_event("leave", timeout=5)
        assert event["reason"] == "token_expired"
        assert await session_end(short) == 4401
        assert await refreshed.ping() < 1
        await short.close()
        await refreshed.leave()
    finally:
        stop_server(server)


async def test_metadata_update_needs_its_right(server: ServerProcess) -> None:
    plain = KeyroomClient(server.ws_url, server.token("plain"))
    allowed = KeyroomClient(
        server.ws_url, server.token("allowed", grants={"canUpdateOwnMetadata": True})
    )
    await plain.connect()
    await allowed.connect()
    try:
        with pytest.raises(KeyroomError) as refused:
            await plain.request({"type": "update_metadata", "metadata": "x"})
        assert refused.value.code == "forbidden"
        await allowed.request({"type": "update_metadata", "metadata": "hello", "name": "Al"})
        event = await plain.next_event("participant_updated")
        assert event["participant"]["metadata"] == "hello" and event["participant"]["name"] == "Al"
    finally:
        await plain.leave()
        await allowed.leave()


async def test_audit_chain_is_written_and_tampering_detected(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.jsonl"
    config = tmp_path / "keyroom.toml"
    config.write_text(f'[audit]\npath = "{audit_path}"\n')
    server = start_server(tmp_path, "--config", str(config))
    try:
        client = KeyroomClient(server.ws_url, server.token("alice"))
        await client.connect()
        with pytest.raises(KeyroomError):
            await KeyroomClient(server.ws_url, "bad").connect()
        await call(server, "GET", "/api/rooms", server.token("x"))
        await client.leave()
    finally:
        stop_server(server)
    events = [line for line in audit_path.read_text().splitlines()]
    text = "\n".join(events)
    assert '"event":"join_accepted"' in text and '"event":"join_refused"' in text
    assert '"event":"admin_refused"' in text
    # The server's own configuration names the key (data_dir/audit.key, relative to its cwd).
    verify = [
        sys.executable,
        "-m",
        "sfu",
        "audit",
        "verify",
        str(audit_path),
        "--config",
        str(config),
    ]
    intact = subprocess.run(verify, capture_output=True, text=True, cwd=tmp_path)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "last sealed position: record" in intact.stdout  # shutdown sealed the log
    audit_path.write_text("\n".join(events[:1] + events[2:]) + "\n")  # remove one record
    result = subprocess.run(verify, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert "first break: line 2: record 1 is missing (removed)" in result.stdout


async def test_max_video_bitrate_reaches_the_publisher_as_remb(tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text("[rooms.capped]\nmax_video_bitrate = 300000\n")
    server = start_server(tmp_path, "--config", str(config))
    pub = KeyroomClient(server.ws_url, server.token("pub", room="capped"))
    sub = KeyroomClient(server.ws_url, server.token("sub", room="capped"))
    try:
        await pub.connect()
        await sub.connect()
        info = await pub.publish(SyntheticVideoTrack(), source="camera")
        remote = await sub.next_track(timeout=10)
        assert await count_frames(remote.track, 2.5) > 0
        assert pub.publisher_pc is not None
        (sender,) = pub.publisher_pc.getSenders()
        encoder = sender._RTCRtpSender__encoder  # noqa: SLF001 - what aiortc did with the REMB
        assert encoder is not None and encoder.target_bitrate == 300_000
        status, body = await call(server, "GET", "/api/rooms/capped", admin(server, "capped"))
        (view,) = [p for p in body["participants"] if p["identity"] == "pub"]
        (track,) = view["tracks"]
        assert track["sid"] == info["sid"] and track["bitrate"] > 0 and track["subscribers"] == 1
        assert view["connection"] == {"publisher": "connected", "subscriber": "connected"}
    finally:
        await pub.leave()
        await sub.leave()
        stop_server(server)


async def test_recordings_and_unknown_endpoints_answer_in_the_api_format(
    server: ServerProcess,
) -> None:
    client = KeyroomClient(server.ws_url, server.token("a"))
    await client.connect()
    try:
        recorder = server.token("rec", grants={"roomRecord": True})
        status, body = await call(server, "POST", "/api/rooms/room1/recordings", recorder, {})
        assert status == 403 and body["error"]["code"] == "forbidden"  # recording_allowed false
        status, body = await call(server, "POST", "/api/rooms/room1/recordings", admin(server), {})
        assert status == 403  # roomAdmin is not roomRecord
        status, body = await call(server, "GET", "/api/nothing/here", recorder)
        assert status == 404 and body["error"]["code"] == "not_found"
        reply = await client.request({"type": "leave"})  # leave, too, gets its one reply
        assert reply["type"] == "ok"
    finally:
        await client.close()


async def test_the_admin_brake_counts_the_address_behind_a_trusted_proxy(tmp_path: Path) -> None:
    """Issue 11.12: behind a reverse proxy every call comes from the proxy's address; the brake
    must charge the client's (X-Forwarded-For from a trusted proxy), not lock everybody out."""
    config = tmp_path / "keyroom.toml"
    config.write_text('[server]\ntrusted_proxies = ["127.0.0.1"]\n')
    server = start_server(tmp_path, "--config", str(config))

    async def status_from(client: str) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.get(
                server.http_url + "/api/rooms",
                headers={"Authorization": "Bearer bad-token", "X-Forwarded-For": client},
            ) as response:
                return response.status

    try:
        assert [await status_from("203.0.113.7") for _ in range(10)] == [401] * 10
        assert await status_from("203.0.113.7") == 429
        assert await status_from("203.0.113.8") == 401  # another client behind the proxy
    finally:
        stop_server(server)
