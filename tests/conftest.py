"""Shared fixtures: a real `keyroom serve` process on loopback and tokens for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from auth.tokens import mint_token
from loadtest import spawn
from loadtest.spawn import free_port
from sfu.iceaddr import restrict_host_addresses

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
    ) -> str:
        return mint_token(
            key_id=key_id,
            secret=secret,
            identity=identity,
            room=room,
            ttl=ttl,
            now=time.time(),
            name=name or identity,
            grants=grants,
        )

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.http_url + path, timeout=5) as response:
            return json.loads(response.read())

    def runtime(self) -> dict[str, Any]:
        return self.get_json("/debug/runtime")  # type: ignore[no-any-return]

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


def stop_server(server: ServerProcess) -> int:
    return spawn.stop(server.process)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = start_server(tmp_path)
    try:
        yield process
    finally:
        stop_server(process)
