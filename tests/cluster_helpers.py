"""A real `redis-server` and keyroom nodes joined to it, for the cluster tests."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from loadtest.spawn import free_port
from tests.conftest import ServerProcess, eventually, start_server

# Short enough that the failure tests wait a second or two, long enough for a loaded machine.
CLUSTER_TOML = """
[server]
trusted_proxies = ["127.0.0.1/32"]  # the brake test names its clients by X-Forwarded-For

[cluster]
node_id = "{node_id}"
heartbeat = 0.3
node_ttl = 2.0
# Small, so a placed room (1/capacity) outweighs the CPU-share noise of a loaded test machine.
capacity = 2
drain_timeout = {drain_timeout}

[rooms.once]
single_use_tokens = true
empty_timeout = 0.2

[rooms.short]
empty_timeout = 0.2
"""


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def start(self) -> None:
        """Start (again, on the same port), empty: nothing is saved."""
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        for line in self.process.stdout:  # its log, until it says it serves
            if "Ready to accept connections" in line:
                threading.Thread(target=self.process.stdout.read, daemon=True).start()
                return
        raise RuntimeError(f"redis-server exited with {self.process.wait()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_redis(tmp_path: Path) -> RedisServer:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    return server


@contextlib.contextmanager
def running_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_nodes(
    tmp_path: Path, redis_server: RedisServer, names: tuple[str, ...]
) -> Iterator[dict[str, ServerProcess]]:
    started: dict[str, ServerProcess] = {}
    try:
        for name in names:
            started[name] = start_node(tmp_path, redis_server.url, name)
        yield started
    finally:
        for server in started.values():
            stop_node(server)


@contextlib.asynccontextmanager
async def extra_node(
    tmp_path: Path, redis_server: RedisServer, node_id: str, expected_nodes: int
) -> AsyncIterator[ServerProcess]:
    """A node for one test (to kill or drain), registered with the others when it is yielded."""
    node = start_node(tmp_path, redis_server.url, node_id)
    try:
        await eventually(
            lambda: registered(redis_server, expected_nodes), 10, f"{expected_nodes} nodes"
        )
        yield node
    finally:
        stop_node(node)


def start_node(
    tmp_path: Path, redis_url: str, node_id: str, *extra: str, drain_timeout: float = 20.0
) -> ServerProcess:
    """A node with its own data directory (its own SQLite store, like a separate machine)."""
    directory = tmp_path / node_id
    directory.mkdir(exist_ok=True)
    config = directory / "keyroom.toml"
    config.write_text(CLUSTER_TOML.format(node_id=node_id, drain_timeout=drain_timeout))
    return start_server(directory, "--redis", redis_url, "--config", str(config), *extra)


def stop_node(node: ServerProcess) -> int:
    """SIGINT: at once, without the drain SIGTERM starts (its waits are tested on their own)."""
    if node.process.poll() is None:
        node.process.send_signal(signal.SIGINT)
        try:
            node.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
    return node.process.returncode


def node_ids(redis_server: RedisServer) -> set[str]:
    client = redis_server.client()
    return {str(k).removeprefix("keyroom:node:") for k in client.keys("keyroom:node:*")}


async def registered(redis_server: RedisServer, count: int) -> bool:
    return len(await asyncio.to_thread(node_ids, redis_server)) == count
