"""The network LiveKit's native SDK needs on one machine: libwebrtc ignores loopback
interfaces, so the server's media address and the SDK's are the two ends of a veth pair
inside the (test or load-test) network namespace. Needs root in that namespace."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from loadtest import spawn
from loadtest.spawn import free_port

VETH = ("lkveth0", "lkveth1")
SERVER_IP, CLIENT_IP = "10.77.1.1", "10.77.1.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def veth_pair() -> Iterator[str]:
    """A veth pair with SERVER_IP and CLIENT_IP, up (made unless it exists); removed after."""
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


def start_server(
    workdir: Path, key: str, *, metrics_token: str, config: str = ""
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """keyroom (not --dev: its media address is not loopback) with its media on SERVER_IP,
    private candidates allowed, a metrics token and `config` (TOML) added; returns the process,
    its signaling port on 127.0.0.1 and its log file, once healthy."""
    port = free_port()
    path = workdir / f"lk-{port}.toml"
    path.write_text(
        "[rtc]\nallow_private_candidates = true\n"
        f'[metrics]\nbearer_token = "{metrics_token}"\n' + config
    )
    log_path = workdir / f"server-{port}.log"
    command = [
        sys.executable, "-m", "sfu", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--rtc-ip", SERVER_IP, "--key", key, "--config", str(path),
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = spawn.start(command, log_path, cwd=workdir, env=environment)
    spawn.wait_healthy(process, f"http://127.0.0.1:{port}/healthz", log_path, "server")
    return process, port, log_path
