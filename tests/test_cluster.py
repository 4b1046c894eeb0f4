"""Three keyroom nodes on one real `redis-server` (docs/cluster.md): placement, redirects, and
access control that holds across the nodes. One Redis and three nodes serve the whole module."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from signaling.client import KeyroomClient, KeyroomError
from tests.admin_helpers import call
from tests.cluster_helpers import (
    RedisServer,
    registered,
    running_nodes,
    running_redis,
)
from tests.conftest import ServerProcess, eventually, session_end

NODES = ("a", "b", "c")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def nodes(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    with running_nodes(tmp_path_factory.mktemp("nodes"), redis_server, NODES) as started:
        yield started


async def joined(node: ServerProcess, identity: str, room: str) -> KeyroomClient:
    client = KeyroomClient(node.ws_url, node.token(identity, room))
    await client.connect()
    return client


def owner_of(nodes: dict[str, ServerProcess], client: KeyroomClient) -> str:
    """The node a client ended up on, by the URL it followed to."""
    return next(name for name, node in nodes.items() if node.ws_url == client.url)


async def test_join_on_the_wrong_node_reaches_the_room(
    nodes: dict[str, ServerProcess], redis_server: RedisServer
) -> None:
    await eventually(lambda: registered(redis_server, 3), 10, "three nodes registered")
    first = await joined(nodes["a"], "alice", "wrong-node")
    owner = owner_of(nodes, first)
    others = [name for name in NODES if name != owner]
    try:
        second = await joined(nodes[others[0]], "bob", "wrong-node")
        third = await joined(nodes[others[1]], "carol", "wrong-node")
        assert owner_of(nodes, second) == owner_of(nodes, third) == owner
        assert second.joined["room"]["sid"] == first.joined["room"]["sid"]
        assert {p["identity"] for p in third.joined["participants"]} == {"alice", "bob"}
        await second.close()
        await third.close()
    finally:
        await first.close()


async def test_nodes_racing_for_a_new_room_agree(
    nodes: dict[str, ServerProcess], redis_server: RedisServer
) -> None:
    await eventually(lambda: registered(redis_server, 3), 10, "three nodes registered")
    clients = [
        KeyroomClient(nodes[NODES[i % 3]].ws_url, nodes["a"].token(f"racer{i}", "race"))
        for i in range(12)
    ]
    await asyncio.gather(*(c.connect() for c in clients))
    try:
        assert len({owner_of(nodes, c) for c in clients}) == 1
        assert len({c.joined["room"]["sid"] for c in clients}) == 1
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_one_identity_over_three_nodes_is_admitted_once(
    nodes: dict[str, ServerProcess], redis_server: RedisServer
) -> None:
    """`duplicate_identity = "reject"` (the default): 20 concurrent joins, one admitted."""
    await eventually(lambda: registered(redis_server, 3), 10, "three nodes registered")
    clients = [
        KeyroomClient(nodes[NODES[i % 3]].ws_url, nodes["a"].token("twin", "dupes"))
        for i in range(20)
    ]
    results = await asyncio.gather(*(c.connect() for c in clients), return_exceptions=True)
    try:
        admitted = [r for r in results if isinstance(r, dict)]
        refused = [r for r in results if isinstance(r, KeyroomError)]
        assert len(admitted) == 1, results
        assert len(refused) == 19 and {r.code for r in refused} == {"conflict"}, results
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_revoke_through_any_node_kicks_and_bars_everywhere(
    nodes: dict[str, ServerProcess], redis_server: RedisServer
) -> None:
    await eventually(lambda: registered(redis_server, 3), 10, "three nodes registered")
    victim_token = nodes["a"].token("mallory", "revoke-room")
    victim = KeyroomClient(nodes["a"].ws_url, victim_token)
    await victim.connect()
    owner = owner_of(nodes, victim)
    other = next(name for name in NODES if name != owner)
    admin = nodes["a"].token("ops", "revoke-room", grants={"roomAdmin": True})
    status, _ = await call(
        nodes[other], "DELETE", "/api/rooms/revoke-room/participants/mallory?revoke=1", admin
    )
    assert status == 204
    await session_end(victim)
    assert victim.leave_reason == "revoked"
    for name in NODES:  # the old token, on every node
        again = KeyroomClient(nodes[name].ws_url, victim_token)
        with pytest.raises(KeyroomError) as refused:
            await again.connect()
        assert refused.value.code == "unauthorized"


async def test_single_use_token_spent_on_one_node_is_spent_on_all(
    nodes: dict[str, ServerProcess], redis_server: RedisServer
) -> None:
    """[rooms.once] single_use_tokens, empty_timeout 0.2 s: the room ends between the two uses,
    so the second lands on whichever node places it again, which must still refuse it."""
    await eventually(lambda: registered(redis_server, 3), 10, "three nodes registered")
    token = nodes["a"].token("once-user", "once")
    first = KeyroomClient(nodes["b"].ws_url, token)
    await first.connect()
    owner = owner_of(nodes, first)
    await first.leave()
    client = redis_server.client()
    await eventually(lambda: not client.exists('keyroom:room:"once"'), 10, "room ended")
    for name in NODES:
        again = KeyroomClient(nodes[name].ws_url, token)
        with pytest.raises(KeyroomError) as refused:
            await again.connect()
        assert refused.value.code == "unauthorized", (name, owner)


async def test_admin_lists_rooms_of_every_node(
    nodes: dict[str, ServerProcess], redis_server: RedisServer
) -> None:
    await eventually(lambda: registered(redis_server, 3), 10, "three nodes registered")
    clients = []
    try:
        for i in range(6):  # new rooms go to the least-loaded node: spread over all three
            clients.append(await joined(nodes["a"], "lister-user", f"listed-{i}"))
        where = {c.joined["room"]["name"]: owner_of(nodes, c) for c in clients}
        assert len(set(where.values())) >= 2, where
        lister = nodes["a"].token("lister", grants={"roomList": True})
        for name in NODES:
            status, body = await call(nodes[name], "GET", "/api/rooms", lister)
            assert status == 200
            listed = {r["name"]: r["node"] for r in body["rooms"] if r["name"] in where}
            assert listed == where
        # A participant of a room on another node, through this one.
        room, owner = next(iter(where.items()))
        other = next(n for n in NODES if n != owner)
        admin = nodes["a"].token("ops", room, grants={"roomAdmin": True})
        status, body = await call(nodes[other], "GET", f"/api/rooms/{room}/participants", admin)
        assert status == 200 and [p["identity"] for p in body["participants"]] == ["lister-user"]
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def refused_code(node: ServerProcess, token: str, address: str) -> str:
    """The error code of a join from `address` (X-Forwarded-For: the nodes trust loopback)."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(node.ws_url, headers={"X-Forwarded-For": address}) as ws:
            await ws.send_json({"type": "join", "token": token, "protocol": 1, "req": 1})
            reply = await ws.receive_json(timeout=10)
            return str(reply.get("code", reply["type"]))


async def test_the_brake_counts_refusals_across_nodes(
    nodes: dict[str, ServerProcess], redis_server: RedisServer
) -> None:
    """`max_failures` 10 per address: 4 refusals per node are too few for any node alone,
    yet the cluster's total brakes the address on every node."""
    bad = nodes["a"].token("guesser", "braked", secret="not-the-key-" * 4)
    codes = [await refused_code(nodes[NODES[i % 3]], bad, "198.51.100.7") for i in range(18)]
    assert codes[:10] == ["unauthorized"] * 10, codes
    assert codes[15:] == ["rate_limited"] * 3, codes  # each node, having seen at most 6
    assert await refused_code(nodes["b"], bad, "198.51.100.8") == "unauthorized"  # others not


def test_a_node_without_redis_config_is_alone(tmp_path: Path) -> None:
    """No `[cluster] redis_url`: nothing of the cluster is built (the single-process default)."""
    from sfu.config import load_config
    from signaling.server import build_state

    state = build_state(load_config(None, {"server": {"dev": True, "data_dir": str(tmp_path)}}, {}))
    assert state.cluster is None
    assert type(state.store).__name__ == "AuthStore"
    assert type(state.brake).__name__ == "FailureBrake"
