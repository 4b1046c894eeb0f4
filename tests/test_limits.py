"""Room and node limits that hold under concurrency and over time (PROTOCOL section 5)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from signaling.client import KeyroomClient, KeyroomError
from signaling.media import SyntheticAudioTrack
from tests.admin_helpers import call
from tests.conftest import eventually, session_end, start_server, stop_server


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "keyroom.toml"
    path.write_text(text)
    return str(path)


async def test_node_max_participants_refuses_with_4503_and_healthz_says_full(
    tmp_path: Path,
) -> None:
    server = start_server(tmp_path, "--config", config(tmp_path, "[node]\nmax_participants = 2\n"))
    try:
        a = KeyroomClient(server.ws_url, server.token("a", room="r1"))
        b = KeyroomClient(server.ws_url, server.token("b", room="r2"))
        await a.connect()
        # The state only, never counts (issue 11 item 17): those are behind /metrics' token.
        assert server.get_json("/healthz") == {"status": "ok"}
        await b.connect()
        assert server.get_json("/healthz") == {"status": "full"}
        with pytest.raises(KeyroomError) as refused:
            await KeyroomClient(server.ws_url, server.token("c", room="r3")).connect()
        assert refused.value.code == "server_full" and refused.value.close_code == 4503
        await b.leave()
        await eventually(lambda: server.get_json("/healthz")["status"] == "ok", timeout=2)
        await a.leave()
    finally:
        stop_server(server)


async def test_max_publishers_holds_under_simultaneous_add_track(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--config", config(tmp_path, "[limits]\nmax_publishers = 2\n"))
    clients = [KeyroomClient(server.ws_url, server.token(f"p{i}")) for i in range(6)]
    try:
        for client in clients:
            await client.connect()
        results = await asyncio.gather(
            *(
                c.request({"type": "add_track", "cid": f"c{i}", "kind": "audio"})
                for i, c in enumerate(clients)
            ),
            return_exceptions=True,
        )
        granted = [r for r in results if isinstance(r, dict)]
        refused = [r for r in results if isinstance(r, KeyroomError)]
        assert len(granted) == 2 and {r.code for r in refused} == {"limit_exceeded"}
    finally:
        for client in clients:
            await client.leave()
        stop_server(server)


async def test_empty_timeout_closes_an_empty_room(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--config", config(tmp_path, "[limits]\nempty_timeout = 1\n"))
    try:
        client = KeyroomClient(server.ws_url, server.token("a"))
        await client.connect()
        await client.leave()
        assert server.runtime()["rooms"] == 1
        await eventually(lambda: server.runtime()["rooms"] == 0, timeout=1.5)
    finally:
        stop_server(server)


async def test_max_duration_ends_the_room_with_room_closed(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--config", config(tmp_path, "[limits]\nmax_duration = 2\n"))
    try:
        started = time.monotonic()
        clients = [KeyroomClient(server.ws_url, server.token(n)) for n in ("a", "b")]
        for client in clients:
            await client.connect()
        await clients[0].publish(SyntheticAudioTrack(), source="microphone")
        for client in clients:
            event = await client.next_event("leave", timeout=5)
            assert event["reason"] == "room_closed"
        assert 1.5 < time.monotonic() - started < 4
        assert [await session_end(c) for c in clients] == [1000, 1000]
        assert server.get_json("/healthz") == {"status": "ok"}
        runtime = server.runtime()
        assert (runtime["rooms"], runtime["participants"]) == (0, 0)
        for client in clients:
            await client.close()
    finally:
        stop_server(server)


async def test_auto_subscribe_respects_max_subscriptions(tmp_path: Path) -> None:
    text = "[limits]\nmax_subscriptions_per_participant = 1\n"
    server = start_server(tmp_path, "--config", config(tmp_path, text))
    viewer = KeyroomClient(server.ws_url, server.token("viewer"))
    publishers = [KeyroomClient(server.ws_url, server.token(f"p{i}")) for i in range(2)]
    try:
        await viewer.connect()
        for client in publishers:
            await client.connect()
            await client.publish(SyntheticAudioTrack(), source="microphone")
        first = await viewer.next_track(timeout=10)
        with pytest.raises(TimeoutError):
            await viewer.next_track(timeout=2)
        other = next(
            t["sid"]
            for p in viewer.participants.values()
            for t in p["tracks"]
            if t["sid"] != first.track_sid
        )
        with pytest.raises(KeyroomError) as refused:
            await viewer.subscribe([other])
        assert refused.value.code == "limit_exceeded"
        await viewer.subscribe([first.track_sid], subscribe=False)
        await viewer.subscribe([other])  # swapping within the limit works
        assert (await viewer.next_track(timeout=10)).track_sid == other
    finally:
        for client in (viewer, *publishers):
            await client.leave()
        stop_server(server)


async def test_node_max_bitrate_in_refuses_new_tracks(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--config", config(tmp_path, "[node]\nmax_bitrate_in = 1000\n"))
    client = KeyroomClient(server.ws_url, server.token("p"))
    try:
        await client.connect()
        await client.publish(SyntheticAudioTrack(), source="microphone")
        admin = server.token("ops", grants={"roomAdmin": True})

        async def at_the_limit() -> bool:  # the bitrate is measured once a second
            _, body = await call(server, "GET", "/api/rooms/room1", admin)
            return sum(t["bitrate"] for p in body["participants"] for t in p["tracks"]) >= 1000

        await eventually(at_the_limit, timeout=5, what="1000 bit/s measured")
        with pytest.raises(KeyroomError) as refused:
            await client.request({"type": "add_track", "cid": "more", "kind": "audio"})
        assert refused.value.code == "limit_exceeded"
    finally:
        await client.leave()
        stop_server(server)
