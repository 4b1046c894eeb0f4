"""A dropped socket resumes (PROTOCOL 2.7): media keeps flowing, nobody sees leave/join."""

from __future__ import annotations

import json

import aiohttp

from signaling.client import KeyroomClient, count_frames
from signaling.media import SyntheticVideoTrack
from tests.conftest import ServerProcess, start_server, stop_server


async def test_resume_keeps_media_and_hides_the_gap(server: ServerProcess) -> None:
    alice = KeyroomClient(server.ws_url, server.token("alice"))
    bob = KeyroomClient(server.ws_url, server.token("bob"))
    await alice.connect()
    await bob.connect()
    try:
        await alice.publish(SyntheticVideoTrack(), source="camera")
        remote = await bob.next_track(timeout=10)
        assert await count_frames(remote.track, 1.0) > 5
        resume_token = alice.joined["resume_token"]
        sid = alice.participant["sid"]
        assert alice._ws is not None
        # Drop the socket only, as a network blip would: alice's peer connections stay up.
        teardown = alice._teardown  # noqa: SLF001
        alice._teardown = _noop  # type: ignore[method-assign]  # noqa: SLF001
        await alice._ws.close()  # noqa: SLF001 - returns once the server has answered the close
        assert await count_frames(remote.track, 1.0) > 5  # media flows while alice is away
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.ws_url) as ws:
                await ws.send_str(
                    json.dumps({"type": "resume", "req": 1, "resume_token": resume_token})
                )
                reply = json.loads((await ws.receive(timeout=5)).data)
                assert reply["type"] == "joined" and reply["req"] == 1
                assert reply["participant"]["sid"] == sid
                assert [p["identity"] for p in reply["participants"]] == ["bob"]
                assert reply["resume_token"] != resume_token
                await ws.send_str(json.dumps({"type": "ping", "req": 2}))
                frames = [json.loads((await ws.receive(timeout=5)).data) for _ in range(1)]
                assert {"type": "pong", "req": 2} in frames
                assert await count_frames(remote.track, 1.0) > 5
                assert [
                    e for e in bob.events if e["type"] in ("participant_left", "participant_joined")
                ] == []
                # The old token is spent: a second resume with it is refused.
                async with http.ws_connect(server.ws_url) as again:
                    await again.send_str(
                        json.dumps({"type": "resume", "resume_token": resume_token})
                    )
                    error = json.loads((await again.receive(timeout=5)).data)
                    assert error["code"] == "unauthorized"
                await ws.send_str(json.dumps({"type": "leave"}))
        event = await bob.next_event("participant_left", timeout=5)
        assert event["identity"] == "alice" and event["reason"] == "left"
    finally:
        alice._teardown = teardown  # type: ignore[method-assign]  # noqa: SLF001
        await alice.close()
        await bob.leave()


async def _noop() -> None:
    return None


async def test_unresumed_participant_is_removed_after_the_window(tmp_path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text("[server]\nresume_window = 1.0\n")
    server = start_server(tmp_path, "--config", str(config))
    try:
        alice = KeyroomClient(server.ws_url, server.token("alice"))
        bob = KeyroomClient(server.ws_url, server.token("bob"))
        await alice.connect()
        await bob.connect()
        assert alice._ws is not None
        await alice._ws.close()  # noqa: SLF001
        event = await bob.next_event("participant_left", timeout=5)
        assert event["identity"] == "alice" and event["reason"] == "disconnected"
        assert server.runtime()["participants"] == 1
        await alice.close()
        await bob.leave()
    finally:
        stop_server(server)
