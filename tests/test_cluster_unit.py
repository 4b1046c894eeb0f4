"""The cluster's pure parts, without Redis: key names, load, the shared brake and store, the
bus's handling of bad messages, `--workers` arithmetic, the `[cluster]` options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from loadtest.spawn import free_port
from sfu.config import ConfigError, load_config
from sfu.workers import check_workers, parse_worker, without_workers, worker_overrides
from signaling.client import KeyroomClient, KeyroomError
from signaling.cluster.load import LoadMeter
from signaling.cluster.names import Names
from signaling.cluster.node import ClusterNode, default_url
from signaling.cluster.shared import ClusterAuthStore, ClusterBrake
from signaling.server import build_state


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def revoked(self, room: str, identity: str, revoked_at: float, expires_at: float) -> None:
        self.calls.append(("revoked", room, identity, revoked_at, expires_at))

    def jti_used(self, jti: str, expires_at: float) -> None:
        self.calls.append(("jti", jti, expires_at))

    def failed(self, key: str, now: float) -> None:
        self.calls.append(("failed", key, now))


def config(tmp_path: Path, **cluster: Any) -> Any:
    options = {"redis_url": "redis://127.0.0.1:1/0", **cluster}
    return load_config(None, {"server": {"dev": True, "data_dir": str(tmp_path)},
                              "cluster": options}, {})  # fmt: skip


def test_names_cannot_collide_and_read_back() -> None:
    names = Names("kr")
    assert names.room('a"b') != names.room("a") and names.room("x").startswith("kr:room:")
    key = names.revoked("room:1", 'id"entity')
    assert names.revoked_pair(key) == ("room:1", 'id"entity')
    assert names.revoked_pair(names.revoked_prefix + "not json") is None
    assert names.revoked_pair(names.revoked_prefix + "[1, 2]") is None


def test_load_counts_packets_cpu_and_capacity() -> None:
    meter = LoadMeter(capacity=100)
    first = meter.sample(now=10.0, packets_out=0, cpu=1.0, participants=0, rooms=0, tracks=0)
    assert first["pps"] == "0" and first["load"] == "0.0000"
    second = meter.sample(now=12.0, packets_out=2000, cpu=1.5, participants=10, rooms=2, tracks=3)
    assert second["pps"] == "1000" and second["cpu"] == "0.25"
    assert second["load"] == "0.2500"  # the CPU share is larger than 10 of 100 participants
    third = meter.sample(now=13.0, packets_out=2000, cpu=1.5, participants=50, rooms=2, tracks=3)
    assert third["load"] == "0.5000"


def test_brake_counts_the_cluster_total() -> None:
    brake = ClusterBrake(max_failures=3, window=60.0)
    brake.replica = recorder = Recorder()
    brake.failure("ip:192.0.2.1", 100.0)
    assert recorder.calls == [("failed", "ip:192.0.2.1", 100.0)]
    assert not brake.blocked("ip:192.0.2.1", 100.0)  # one failure here
    brake.cluster_count("ip:192.0.2.1", 3, until=120.0)  # two more on other nodes
    assert brake.blocked("ip:192.0.2.1", 101.0)
    assert not brake.blocked("ip:192.0.2.1", 120.0)  # that window is over
    assert not brake.blocked("ip:198.51.100.1", 101.0)


def test_store_announces_its_own_decisions_only(tmp_path: Path) -> None:
    store = ClusterAuthStore(str(tmp_path / "auth.db"))
    store.replica = recorder = Recorder()
    store.revoke("r", "mallory", now=100.0, keep_for=50.0)
    assert recorder.calls == [("revoked", "r", "mallory", 100.0, 150.0)]
    store.copy_revocation("r", "eve", 110.0, 160.0)  # from another node: not announced again
    assert store.is_revoked("r", "eve", 105.0, 120.0) and not store.is_revoked(
        "r", "eve", 111.0, 120.0
    )
    assert store.use_jti("j1", expires_at=200.0, now=100.0)
    assert not store.use_jti("j1", expires_at=200.0, now=100.0)  # spent: announced once
    store.copy_jti("j2", 200.0, 100.0)
    assert store.jti_spent("j2", 100.0)
    assert [c[0] for c in recorder.calls] == ["revoked", "jti"]
    assert store.revocations(120.0) == [("r", "mallory", 100.0, 150.0), ("r", "eve", 110.0, 160.0)]
    assert store.revocations(155.0) == [("r", "eve", 110.0, 160.0)]


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", b"null", json.dumps({"op": "revoke", "room": "r"}).encode(),
     json.dumps({"op": "revoke", "room": "r", "identity": "i", "revoked_at": "x",
                 "expires_at": 1}).encode(), json.dumps({"op": "unknown"}).encode()],
)  # fmt: skip
async def test_malformed_bus_messages_are_dropped(tmp_path: Path, data: bytes) -> None:
    state = build_state(config(tmp_path))
    node = ClusterNode(state)
    node.on_bus(data, 100.0)  # logged and dropped, no exception
    assert state.store.revocations(100.0) == []
    await node.redis.aclose()


async def test_a_revocation_on_the_bus_is_kept_here(tmp_path: Path) -> None:
    state = build_state(config(tmp_path, node_id="here"))
    node = ClusterNode(state)
    message = {"op": "revoke", "from": "there", "room": "r", "identity": "i",
               "revoked_at": 100.0, "expires_at": 1e12}  # fmt: skip
    node.on_bus(json.dumps(message), 101.0)
    assert state.store.is_revoked("r", "i", 99.0, 101.0)
    node.on_bus(json.dumps({**message, "from": "here", "identity": "own"}), 101.0)
    assert not state.store.is_revoked("r", "own", 99.0, 101.0)  # our own echo
    await node.redis.aclose()


def test_workers_split_ports_and_data(tmp_path: Path) -> None:
    base = load_config(None, {
        "server": {"dev": True, "port": 7000, "data_dir": "/var/kr"},
        "rtc": {"port_min": 50000, "port_max": 50999},
        "audit": {"path": "/var/log/kr.audit"},
        "cluster": {"redis_url": "redis://r:6379/0"},
    }, {})  # fmt: skip
    one = worker_overrides(base, 1, 2)
    assert one["server"] == {"port": 7001, "data_dir": "/var/kr/worker-1"}
    assert one["rtc"] == {"port_min": 50500, "port_max": 50999}
    assert one["audit"] == {"path": "/var/log/kr.audit.worker-1"}
    assert worker_overrides(base, 0, 2)["rtc"] == {"port_min": 50000, "port_max": 50499}
    check_workers(base, 2)
    alone = load_config(None, {"server": {"dev": True}}, {})
    with pytest.raises(ConfigError, match="needs \\[cluster\\] redis_url"):
        check_workers(alone, 2)
    check_workers(alone, 1)
    with pytest.raises(ConfigError):
        check_workers(alone, 0)
    assert parse_worker("1/3") == (1, 3)
    for bad in ("3/3", "x/2", "1", "-1/2"):
        with pytest.raises(ConfigError):
            parse_worker(bad)
    assert without_workers(["serve", "--workers", "2", "--dev", "--workers=3"]) == [
        "serve", "--dev"]  # fmt: skip


def test_cluster_repr_hides_the_redis_url(tmp_path: Path) -> None:
    shown = repr(config(tmp_path, redis_url="redis://:hunter2@r:6379/0"))
    assert "hunter2" not in shown and "<redis url>" in shown


def test_the_advertised_url_names_a_reachable_address() -> None:
    def url(**server: Any) -> str:
        env = {"KEYROOM_KEYS": "k1=" + "x" * 40}
        options = {"server": {"insecure_plaintext": True, **server}, "rtc": {"ips": ["192.0.2.10"]},
                   "metrics": {"bearer_token": "m" * 20}}  # fmt: skip
        return default_url(load_config(None, options, env))

    assert url(port=7000) == "ws://127.0.0.1:7000/rtc"
    assert url(host="0.0.0.0", port=7001) == "ws://192.0.2.10:7001/rtc"


def test_the_compose_node_config_loads() -> None:
    root = Path(__file__).parent.parent
    env = {"KEYROOM_KEYS": "k1=" + "x" * 40}
    loaded = load_config(str(root / "deploy" / "keyroom-node.toml"), {}, env)
    assert loaded.cluster.redis_url == "redis://127.0.0.1:6379/0"
    assert "node1:" in (root / "compose.yaml").read_text()


@pytest.mark.parametrize("target", ["self", "http://127.0.0.1:1/rtc"])
async def test_the_client_gives_up_on_redirect_loops_and_non_websocket_urls(target: str) -> None:
    """A server answering every join with a redirect (to itself, or to an http URL)."""
    opened: list[int] = []

    async def rtc(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        opened.append(1)
        join = await ws.receive_json()
        url = f"ws://127.0.0.1:{port}/rtc" if target == "self" else target
        await ws.send_json({"type": "redirect", "req": join["req"], "url": url})
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/rtc", rtc)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        client = KeyroomClient(f"ws://127.0.0.1:{port}/rtc", "token")
        with pytest.raises(KeyroomError) as refused:
            await client.connect(timeout=5)
        assert refused.value.code == "redirect_loop"
        assert len(opened) == (4 if target == "self" else 1)  # the first socket and 3 redirects
    finally:
        await runner.cleanup()
