"""Shared fixtures: a real `keyroom serve` process on loopback and tokens for it."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from auth.tokens import mint_token
from loadtest import spawn
from loadtest.spawn import free_port
from sfu.iceaddr import restrict_host_addresses
from signaling.client import KeyroomClient, SessionClosed

KEY_ID = "testkey"
SECRET = "test-secret-that-is-long-enough-0123456789"

# aioice never gathers on 127.0.0.1 by default: test clients use loopback only.
restrict_host_addresses(["127.0.0.1"])


@dataclass
class ServerProcess:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    extra: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/rtc"

    def token(
        self,
        identity: str,
        room: str = "room1",
        *,
        ttl: float = 600,
        name: str = "",
        grants: dict[str, Any] | None = None,
        secret: str = SECRET,
        key_id: str = KEY_ID,
        now: float | None = None,
    ) -> str:
        """A token for this server's key; `now` (default: the present) is when it is issued."""
        return mint_token(
            key_id=key_id,
            secret=secret,
            identity=identity,
            room=room,
            ttl=ttl,
            now=time.time() if now is None else now,
            name=name or identity,
            grants=grants,
        )

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.http_url + path, timeout=5) as response:
            return json.loads(response.read())

    def runtime(self) -> dict[str, Any]:
        return self.get_json("/debug/runtime")  # type: ignore[no-any-return]

    def rtp_arrived(self, stats: dict[str, Any] | None = None) -> int:
        """RTP packets that reached the server from publishers, accepted or dropped: counted in
        `stats` (runtime()["stats"] read earlier), else now."""
        stats = self.runtime()["stats"] if stats is None else stats
        return int(stats["packets_in"] + sum(stats["dropped"].values()))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    tmp_path: Path, *extra: str, env: dict[str, str] | None = None, key: bool = True
) -> ServerProcess:
    """`key` False: no --key, the keys come from the config file or KEYROOM_KEYS."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    command = [
        sys.executable, "-m", "sfu", "serve", "--dev", "--host", "127.0.0.1",
        "--port", str(port), "--rtc-ip", "127.0.0.1",
        *(["--key", f"{KEY_ID}={SECRET}"] if key else []), *extra,
    ]  # fmt: skip
    # cwd: the server's data directory ("data", relative) is per test.
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = spawn.start(command, log_path, cwd=tmp_path, env=environment)
    server = ServerProcess(port=port, process=process, log_path=log_path, extra=list(extra))
    spawn.wait_healthy(process, server.http_url + "/healthz", log_path, "server")
    return server


async def eventually(
    check: Callable[[], object] | Callable[[], Awaitable[object]],
    timeout: float = 5,
    what: str | Callable[[], str] = "",
    interval: float = 0.05,
) -> object:
    """Call `check` (sync or async) until it returns something true, and return that; fail
    after `timeout` seconds, saying `what` (called then, if callable). The one poll of the
    tests, for state nothing announces (server counters, the admin API, a log): events the
    client exposes are awaited, not polled."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what() if callable(what) else what}")
        await asyncio.sleep(interval)


async def wait_logged(server: ServerProcess, text: str, timeout: float = 15) -> str:
    """The server's log once it holds `text` (audit records are written by their own thread)."""
    await eventually(lambda: text in server.log(), timeout, lambda: f"{text!r} in {server.log()}")
    return server.log()


async def session_end(client: KeyroomClient, timeout: float = 5) -> int | None:
    """Wait until the server has closed `client`'s session; return the close code."""
    with pytest.raises(SessionClosed):  # raised once the session is over: nothing matches
        await client.next_event(predicate=lambda _: False, timeout=timeout)
    return client.close_code


def stop_server(server: ServerProcess) -> int:
    return spawn.stop(server.process)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = start_server(tmp_path)
    try:
        yield process
    finally:
        stop_server(process)
