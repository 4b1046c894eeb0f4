"""Webhooks: LiveKit's `WebhookReceiver` accepts them, in order; slow receivers delay nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from livekit.api import TokenVerifier, WebhookReceiver

from sfu.config import Config, ConfigError, LimitsConfig, WebhooksConfig, load_config
from sfu.room import Room
from signaling.client import KeyroomClient
from signaling.media import SyntheticAudioTrack
from signaling.webhooks import WebhookSender
from tests.conftest import KEY_ID, SECRET, free_port, start_server, stop_server

LIFECYCLE = [
    "room_started",
    "participant_joined",
    "track_published",
    "track_unpublished",
    "participant_left",
    "room_finished",
]


class Receiver:
    """An HTTP endpoint that checks each POST with livekit-api and keeps the events."""

    def __init__(self, *, respond: Callable[[int], Awaitable[int]] | None = None) -> None:
        self.receiver = WebhookReceiver(TokenVerifier(KEY_ID, SECRET))
        self.events: list[dict[str, object]] = []
        self.bodies: list[str] = []
        self.posts = 0
        self.respond = respond
        self.arrived = asyncio.Event()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        self.posts += 1
        status = await self.respond(self.posts) if self.respond else 200
        if status == 200:
            body = await request.text()
            event = self.receiver.receive(body, request.headers["Authorization"])
            self.bodies.append(body)
            self.events.append(
                {
                    "event": event.event,
                    "id": event.id,
                    "room": event.room.name,
                    "identity": event.participant.identity,
                    "track_source": event.track.source,
                    "num_dropped": event.num_dropped,
                    "content_type": request.content_type,
                }
            )
            self.arrived.set()
        return web.Response(status=status)

    async def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        return self.events


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Receiver], Awaitable[None]]]:
    runners: list[web.AppRunner] = []

    async def start(receiver: Receiver) -> None:
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", receiver.port).start()
        runners.append(runner)

    yield start
    for runner in runners:
        await runner.cleanup()


def write_config(tmp_path: Path, *urls: str, extra: str = "") -> str:
    listed = ", ".join(f'"{u}"' for u in urls)
    path = tmp_path / "keyroom.toml"
    path.write_text(
        f'[webhooks]\nurls = [{listed}]\nkey = "{KEY_ID}"\n{extra}\n[limits]\nempty_timeout = 0\n'
    )
    return str(path)


async def test_six_events_in_order_validated_by_livekit(
    tmp_path: Path, serve: Callable[[Receiver], Awaitable[None]]
) -> None:
    receiver = Receiver()
    await serve(receiver)
    server = start_server(tmp_path, "--config", write_config(tmp_path, receiver.url))
    try:
        alice = KeyroomClient(server.ws_url, server.token("alice", room="hooks"))
        await alice.connect()
        info = await alice.publish(SyntheticAudioTrack(), source="microphone")
        await receiver.wait_for(3)
        await alice.unpublish(info["sid"])
        await alice.leave()
        events = await receiver.wait_for(6)
    finally:
        stop_server(server)
    assert [e["event"] for e in events] == LIFECYCLE
    assert {e["room"] for e in events} == {"hooks"}
    assert [e["identity"] for e in events[1:5]] == ["alice"] * 4
    assert events[2]["track_source"] == events[3]["track_source"] == 2  # MICROPHONE
    assert len({e["id"] for e in events}) == 6
    assert {e["content_type"] for e in events} == {"application/webhook+json"}


async def test_slow_receiver_delays_neither_joins_nor_other_receivers(
    tmp_path: Path, serve: Callable[[Receiver], Awaitable[None]]
) -> None:
    release = asyncio.Event()

    async def hang(post: int) -> int:
        # 30 s, or until the test is done.
        try:
            await asyncio.wait_for(release.wait(), 30)
        except TimeoutError:
            pass
        return 200

    slow, fast = Receiver(respond=hang), Receiver()
    await serve(slow)
    await serve(fast)
    config = write_config(tmp_path, slow.url, fast.url, extra="timeout = 60")
    server = start_server(tmp_path, "--config", config)
    clients: list[KeyroomClient] = []
    try:
        first = KeyroomClient(server.ws_url, server.token("first", room="slow"))
        await first.connect()
        clients.append(first)
        await fast.wait_for(2)
        assert slow.posts == 1  # stuck on room_started
        for i in range(5):
            client = KeyroomClient(server.ws_url, server.token(f"p{i}", room="slow"))
            started = time.monotonic()
            await client.connect()
            assert time.monotonic() - started < 1.0
            clients.append(client)
        events = await fast.wait_for(7)
        assert [e["event"] for e in events].count("participant_joined") == 6
        assert slow.posts == 1
    finally:
        release.set()
        for client in clients:
            await client.leave()
        stop_server(server)


async def test_failed_posts_are_retried_with_backoff(
    serve: Callable[[Receiver], Awaitable[None]],
) -> None:
    async def fail_twice(post: int) -> int:
        return 503 if post <= 2 else 200

    receiver = Receiver(respond=fail_twice)
    await serve(receiver)
    sender = WebhookSender(
        WebhooksConfig(urls=(receiver.url,), key=KEY_ID, retry_delay=0.1), SECRET
    )
    sender.start()
    try:
        started = time.monotonic()
        sender.on_event("room_started", Room("r", LimitsConfig()), None, None)
        events = await receiver.wait_for(1, timeout=5)
        elapsed = time.monotonic() - started
    finally:
        await sender.close()
    assert receiver.posts == 3
    assert [e["event"] for e in events] == ["room_started"]
    assert 0.3 <= elapsed < 2  # waited 0.1 s, then 0.2 s
    assert events[0]["num_dropped"] == 0


async def test_full_queue_drops_the_oldest_and_says_so(
    serve: Callable[[Receiver], Awaitable[None]],
) -> None:
    release = asyncio.Event()
    sending = asyncio.Event()

    async def held(post: int) -> int:
        sending.set()
        await release.wait()
        return 200

    receiver = Receiver(respond=held)
    await serve(receiver)
    sender = WebhookSender(WebhooksConfig(urls=(receiver.url,), key=KEY_ID, queue_size=3), SECRET)
    sender.start()
    rooms = [Room(f"r{i}", LimitsConfig()) for i in range(8)]
    try:
        sender.on_event("room_started", rooms[0], None, None)
        await asyncio.wait_for(sending.wait(), 5)  # r0 is being sent; the queue holds 3 more
        for room in rooms[1:]:
            sender.on_event("room_started", room, None, None)
        release.set()
        await receiver.wait_for(4, timeout=5)
    finally:
        await sender.close()
    assert [e["room"] for e in receiver.events] == ["r0", "r5", "r6", "r7"]
    assert [e["num_dropped"] for e in receiver.events] == [0, 4, 0, 0]


def test_config_is_validated_naming_the_key() -> None:
    def load(webhooks: dict[str, Any]) -> Config:
        overrides: dict[str, Any] = {"server": {"dev": True}, "auth": {"keys": {KEY_ID: SECRET}}}
        return load_config(None, {**overrides, "webhooks": webhooks}, {})

    url = "https://hooks.example.com/keyroom"
    with pytest.raises(ConfigError, match=r"^webhooks\.key: required"):
        load({"urls": [url]})
    with pytest.raises(ConfigError, match=r"^webhooks\.key: \"other\" is not an HS256 key"):
        load({"urls": [url], "key": "other"})
    with pytest.raises(ConfigError, match=r"^webhooks\.urls: expected http\(s\) URLs"):
        load({"urls": ["ftp://x"], "key": KEY_ID})
    with pytest.raises(ConfigError, match=r"^webhooks\.queue_size: "):
        load({"urls": [url], "key": KEY_ID, "queue_size": 0})
    with pytest.raises(ConfigError, match=r"^webhooks\.api_key: unknown key"):
        load({"api_key": KEY_ID})
    config = load({"urls": [url, url], "key": KEY_ID})
    assert config.webhooks.urls == (url,)
