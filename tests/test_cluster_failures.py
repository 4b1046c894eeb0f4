"""How a cluster fails (docs/cluster.md "Failures"): a node killed, Redis stopped and started
empty, a node drained; and what a steady call costs Redis (nothing per packet)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from auth.tokens import mint_token
from loadtest import spawn
from loadtest.clusterbench import port_free
from loadtest.spawn import free_port
from signaling.client import KeyroomClient, KeyroomError
from signaling.media import SyntheticAudioTrack, SyntheticVideoTrack
from tests.admin_helpers import call
from tests.cluster_helpers import (
    RedisServer,
    extra_node,
    node_ids,
    registered,
    running_nodes,
    running_redis,
    start_node,
    start_redis,
    stop_node,
)
from tests.conftest import KEY_ID, SECRET, ServerProcess, eventually, session_end

# What one heartbeat sends (signaling/cluster/node.py): nothing else runs during a steady call.
HEARTBEAT_COMMANDS = {"hset", "pexpire", "zadd", "set", "get"}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def pair(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """Two nodes that stay up; each test adds the node it kills or drains."""
    with running_nodes(tmp_path_factory.mktemp("nodes"), redis_server, ("d", "e")) as started:
        yield started


async def create_room(node: ServerProcess, room: str) -> None:
    """A room made through `node`'s admin API is placed on `node`."""
    creator = node.token("ops", room, grants={"roomCreate": True})
    status, _ = await call(node, "POST", "/api/rooms", creator, {"name": room})
    assert status == 201


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def token(identity: str, room: str) -> str:
    return mint_token(
        key_id=KEY_ID, secret=SECRET, identity=identity, room=room, ttl=600, now=time.time()
    )


def packets_out(node: ServerProcess) -> int:
    return int(node.runtime()["stats"]["packets_out"])


async def test_a_killed_nodes_rooms_are_placed_again(
    pair: dict[str, ServerProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    async with extra_node(tmp_path, redis_server, "doomed", 3) as doomed:
        await create_room(doomed, "crashing")
        client = KeyroomClient(pair["d"].ws_url, pair["d"].token("survivor", "crashing"))
        await client.connect()
        assert client.url == doomed.ws_url
        doomed.process.send_signal(signal.SIGKILL)
        await session_end(client, timeout=10)
        killed = time.monotonic()
        # Its entry expires after node_ttl (2 s); the next join places the room again.
        await eventually(lambda: "doomed" not in node_ids(redis_server), 10, "entry expired")
        again = KeyroomClient(pair["d"].ws_url, pair["d"].token("survivor", "crashing"))
        await again.connect()
        assert again.url in (pair["d"].ws_url, pair["e"].ws_url)
        assert time.monotonic() - killed < 2.0 + 6.0  # node_ttl, plus a loaded machine
        await again.close()


async def test_drain_moves_new_rooms_away_and_ends_when_empty(
    pair: dict[str, ServerProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    async with extra_node(tmp_path, redis_server, "drained", 3) as draining:
        await create_room(draining, "winding-down")
        inside = KeyroomClient(draining.ws_url, draining.token("stayer", "winding-down"))
        await inside.connect()
        ops = draining.token("ops", grants={"roomCreate": True})
        status, body = await call(draining, "POST", "/api/node/drain", ops)
        assert (status, body) == (202, {"draining": True})
        client = redis_server.client()
        await eventually(
            lambda: client.hget("keyroom:node:drained", "draining") == "1", 10, "draining"
        )
        # New rooms go elsewhere, even when asked of the draining node ...
        for i in range(4):
            newcomer = KeyroomClient(draining.ws_url, draining.token("new", f"fresh-{i}"))
            await newcomer.connect()
            assert newcomer.url != draining.ws_url
            await newcomer.close()
        # ... while its room keeps running, and new joins of that room still reach it.
        late = KeyroomClient(pair["e"].ws_url, pair["e"].token("late", "winding-down"))
        await late.connect()
        assert late.url == draining.ws_url
        await late.leave()
        assert draining.process.poll() is None
        await inside.leave()
        # Empty: the room ends and the node exits by itself.
        await asyncio.to_thread(draining.process.wait, 15)
        assert draining.process.returncode == 0


async def test_sigterm_drains_then_tells_the_rest_server_shutdown(
    pair: dict[str, ServerProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    node = start_node(tmp_path, redis_server.url, "terminated", drain_timeout=1.0)
    try:
        await create_room(node, "deadline")
        client = KeyroomClient(node.ws_url, node.token("lingerer", "deadline"))
        await client.connect()
        node.process.send_signal(signal.SIGTERM)
        assert await session_end(client, timeout=15) == 1001
        assert client.leave_reason == "server_shutdown"
        await asyncio.to_thread(node.process.wait, 15)
        assert node.process.returncode == 0
    finally:
        stop_node(node)


async def test_a_steady_call_costs_redis_no_command_per_packet(
    pair: dict[str, ServerProcess], redis_server: RedisServer
) -> None:
    publisher = KeyroomClient(pair["d"].ws_url, pair["d"].token("speaker", "steady"))
    await publisher.connect()
    owner = pair["d"] if publisher.url == pair["d"].ws_url else pair["e"]
    listener = KeyroomClient(pair["e"].ws_url, pair["e"].token("listener", "steady"))
    try:
        await listener.connect()
        await publisher.publish(SyntheticAudioTrack(), source="microphone")
        await publisher.publish(SyntheticVideoTrack(), source="camera")
        await eventually(lambda: packets_out(owner) > 50, 20, "media forwarded")
        counter = redis_server.client()  # one connection: its set-up is not in the window
        counter.ping()
        before_calls, before_packets = command_calls(counter), packets_out(owner)
        started = time.monotonic()
        await eventually(lambda: packets_out(owner) > before_packets + 300, 30, "300 packets")
        elapsed = time.monotonic() - started
        after_calls, forwarded = command_calls(counter), packets_out(owner) - before_packets
    finally:
        await publisher.close()
        await listener.close()
    sent = {k: after_calls.get(k, 0) - before_calls.get(k, 0) for k in after_calls}
    sent = {k: n for k, n in sent.items() if n and k != "info"}  # our own INFO
    assert set(sent) <= HEARTBEAT_COMMANDS, sent
    # At most one heartbeat per node every 0.3 s (and one more each at the window's ends).
    beats = 2 * (elapsed / 0.3 + 2)
    assert sum(sent.values()) <= beats * len(HEARTBEAT_COMMANDS), (sent, elapsed)
    # Whole heartbeats only (each sends every one of these once), however many packets went.
    assert max(sent.values()) - min(sent.values()) <= 2, sent
    assert forwarded > 300


async def test_redis_stopped_then_restarted_empty(tmp_path: Path) -> None:
    redis_server = start_redis(tmp_path)
    nodes: list[ServerProcess] = []
    clients: list[KeyroomClient] = []
    try:
        nodes = [start_node(tmp_path, redis_server.url, n) for n in ("p", "q")]
        await eventually(lambda: registered(redis_server, 2), 10, "two nodes registered")
        await _redis_outage(redis_server, nodes, clients)
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        for node in nodes:
            stop_node(node)
        redis_server.stop()


async def _redis_outage(
    redis_server: RedisServer, nodes: list[ServerProcess], clients: list[KeyroomClient]
) -> None:
    p, q = nodes
    publisher = KeyroomClient(p.ws_url, p.token("speaker", "running"))
    clients.append(publisher)
    await publisher.connect()
    owner = p if publisher.url == p.ws_url else q
    other = q if owner is p else p
    listener = KeyroomClient(owner.ws_url, owner.token("listener", "running"))
    clients.append(listener)
    await listener.connect()
    await publisher.publish(SyntheticAudioTrack(), source="microphone")
    await eventually(lambda: packets_out(owner) > 20, 20, "media forwarded")
    bad_token = owner.token("bad", "running")  # issued before the revocation
    admin = owner.token("ops", "running", grants={"roomAdmin": True})
    status, _ = await call(owner, "DELETE", "/api/rooms/running/participants/bad?revoke=1", admin)
    assert status == 204
    client = redis_server.client()
    await eventually(lambda: client.exists('keyroom:revoked:["running", "bad"]'), 10, "published")

    redis_server.stop()
    # The running room keeps forwarding; a join that needs the cluster is refused.
    forwarded = packets_out(owner)
    await eventually(lambda: packets_out(owner) > forwarded + 50, 20, "forwarding goes on")
    newcomer = KeyroomClient(other.ws_url, other.token("newcomer", "brand-new"))
    with pytest.raises(KeyroomError) as refused:
        await newcomer.connect()
    assert refused.value.code == "server_full"
    inside = KeyroomClient(owner.ws_url, owner.token("latecomer", "running"))
    clients.append(inside)
    await inside.connect()  # its room is here: nothing to ask the cluster

    redis_server.start()  # empty: no nodes, no rooms, no revocations
    await eventually(lambda: registered(redis_server, 2), 15, "nodes registered again")
    await eventually(
        lambda: client.exists('keyroom:revoked:["running", "bad"]'), 15, "revocation re-published"
    )
    await eventually(lambda: client.get('keyroom:room:"running"') is not None, 15, "room claimed")
    for node in (p, q):
        barred = KeyroomClient(node.ws_url, bad_token)
        with pytest.raises(KeyroomError) as refused:
            await barred.connect()
        assert refused.value.code == "unauthorized"
    back = KeyroomClient(other.ws_url, other.token("newcomer", "brand-new"))
    clients.append(back)
    await back.connect()
    follower = KeyroomClient(other.ws_url, other.token("follower", "running"))
    clients.append(follower)
    await follower.connect()
    assert follower.url == owner.ws_url


async def test_workers_share_the_hosts_redis(tmp_path: Path) -> None:
    """`serve --workers 2`: two nodes on PORT and PORT+1, each with its own data directory;
    SIGTERM to the supervisor drains both, which exit when their rooms are empty."""
    redis_server = start_redis(tmp_path)
    port = free_port()
    while not port_free(port + 1):
        port = free_port()
    command = [
        sys.executable, "-m", "sfu", "serve", "--dev", "--host", "127.0.0.1", "--port", str(port),
        "--rtc-ip", "127.0.0.1", "--key", f"{KEY_ID}={SECRET}", "--redis", redis_server.url,
        "--workers", "2",
    ]  # fmt: skip
    log = tmp_path / "workers.log"
    process = spawn.start(command, log, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for worker in (0, 1):
            spawn.wait_healthy(process, f"http://127.0.0.1:{port + worker}/healthz", log, "worker")
        await eventually(lambda: registered(redis_server, 2), 15, "both workers registered")
        clients = []
        for i in range(4):  # new rooms spread by load: both workers get some
            client = KeyroomClient(f"ws://127.0.0.1:{port}/rtc", token(f"w{i}", f"room-{i}"))
            await client.connect()
            clients.append(client)
        assert {c.url for c in clients} == {f"ws://127.0.0.1:{port + w}/rtc" for w in (0, 1)}
        assert {p.name for p in tmp_path.joinpath("data").iterdir()} == {"worker-0", "worker-1"}
        process.send_signal(signal.SIGTERM)  # both drain: they exit once their rooms are empty
        for client in clients:
            await client.leave()
        try:
            assert await asyncio.to_thread(process.wait, 60) == 0
        except subprocess.TimeoutExpired:
            raise AssertionError(f"workers still running:\n{log.read_text()[-3000:]}") from None
    finally:
        spawn.stop(process)
        redis_server.stop()
