"""Shared set-up of the LiveKit SDK tests: a veth pair for libwebrtc, a keyroom server whose
media address is on it, and tokens minted by LiveKit's own `livekit-api`."""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from livekit import api

from loadtest import spawn
from loadtest.spawn import free_port
from tests.conftest import KEY_ID, SECRET, ServerProcess

# libwebrtc ignores loopback interfaces: both ends of a veth pair inside the test namespace.
VETH = ("lkveth0", "lkveth1")
SERVER_IP, CLIENT_IP = "10.77.1.1", "10.77.1.2"
METRICS_TOKEN = "metrics-token-0123456789"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def veth_pair() -> Iterator[str]:
    """A veth pair with SERVER_IP and CLIENT_IP, up; removed after."""
    if subprocess.run(["ip", "link", "show", VETH[0]], capture_output=True).returncode != 0:
        _ip("link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1])
        _ip("addr", "add", f"{SERVER_IP}/24", "dev", VETH[0])
        _ip("addr", "add", f"{CLIENT_IP}/24", "dev", VETH[1])
        _ip("link", "set", VETH[0], "up")
        _ip("link", "set", VETH[1], "up")
    try:
        yield SERVER_IP
    finally:
        subprocess.run(["ip", "link", "del", VETH[0]], capture_output=True)


def start_lk_server(tmp_path: Path, config: str = "") -> ServerProcess:
    """keyroom (not --dev: its media address is not loopback) with private candidates allowed,
    a metrics token, and `config` appended (TOML)."""
    port = free_port()
    path = tmp_path / f"lk-{port}.toml"
    path.write_text(
        "[rtc]\nallow_private_candidates = true\n"
        f'[metrics]\nbearer_token = "{METRICS_TOKEN}"\n' + config
    )
    log_path = tmp_path / f"server-{port}.log"
    command = [
        sys.executable, "-m", "sfu", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--rtc-ip", SERVER_IP, "--key", f"{KEY_ID}={SECRET}", "--config", str(path),
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = spawn.start(command, log_path, cwd=tmp_path, env=environment)
    server = ServerProcess(port=port, process=process, log_path=log_path)
    spawn.wait_healthy(process, server.http_url + "/healthz", log_path, "server")
    return server


def lk_url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}"


def lk_token(identity: str, room: str = "lk-room", *, ttl: float = 600, **grants: Any) -> str:
    """A join token minted by livekit-api, as a LiveKit app's back end would."""
    video = api.VideoGrants(room_join=True, room=room, **grants)
    token = api.AccessToken(KEY_ID, SECRET).with_identity(identity).with_name(identity)
    return token.with_grants(video).with_ttl(datetime.timedelta(seconds=ttl)).to_jwt()


def room_api(server: ServerProcess) -> api.LiveKitAPI:
    """livekit-api's client (its RoomService is Twirp over HTTP), as an app's back end uses it."""
    return api.LiveKitAPI(f"http://127.0.0.1:{server.port}", KEY_ID, SECRET, failover=False)
