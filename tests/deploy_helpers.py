"""A server started from a config file (not --dev), and a private network for its clients: a
veth pair inside the test's namespace with 10.x addresses, as a company LAN would have."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from loadtest import spawn
from loadtest.spawn import free_port
from sfu.iceaddr import restrict_host_addresses
from tests.conftest import KEY_ID, SECRET, ServerProcess

SERVER_IP = "10.79.0.1"  # the server's media address (rtc.ips): private
CLIENT_IP = "10.79.0.2"  # the clients' host candidates
METRICS_TOKEN = "metrics-token-0123456789abcdef"
RUNNABLE_CONFIG = f"""
[auth]
keys = {{ {KEY_ID} = "{SECRET}" }}
[metrics]
bearer_token = "{METRICS_TOKEN}"
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def veth_pair(names: tuple[str, str], addresses: tuple[str, str]) -> Iterator[None]:
    """Two veth ends with these /24 addresses, up, inside the test's throw-away namespace
    (scripts/test makes one); skips where there is none."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    if [line.split(":")[1].strip() for line in links.splitlines()] != ["lo"]:
        pytest.skip("not in a throw-away network namespace (run through scripts/test)")
    try:
        _ip("link", "add", names[0], "type", "veth", "peer", "name", names[1])
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a veth pair here: {exc.stderr!r}")
    try:
        for name, address in zip(names, addresses, strict=True):
            _ip("addr", "add", f"{address}/24", "dev", name)
            _ip("link", "set", name, "up")
        yield
    finally:
        _ip("link", "del", names[0])


@contextmanager
def private_network() -> Iterator[str]:
    """SERVER_IP and CLIENT_IP on a veth pair; this process's clients gather CLIENT_IP only."""
    with veth_pair(("krdep0", "krdep1"), (SERVER_IP, CLIENT_IP)):
        restrict_host_addresses([CLIENT_IP])
        try:
            yield SERVER_IP
        finally:
            restrict_host_addresses(["127.0.0.1"])


def start_configured(
    tmp_path: Path,
    config_text: str,
    *extra: str,
    env: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    port: int | None = None,
) -> ServerProcess:
    """`keyroom serve --config FILE` as an operator runs it (no --dev); `port` None: a free one
    given as --port (a config that sets its own port passes it here)."""
    config = tmp_path / "keyroom.toml"
    config.write_text(config_text)
    port = port or free_port()
    log_path = tmp_path / f"server-{port}.log"
    command = [sys.executable, "-m", "sfu", "serve", "--config", str(config), *extra]
    if "port =" not in config_text:
        command += ["--port", str(port)]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = spawn.start(command, log_path, cwd=tmp_path, env=environment)
    server = ServerProcess(port=port, process=process, log_path=log_path, extra=list(extra))
    scheme = "https" if context is not None else "http"
    url = f"{scheme}://127.0.0.1:{port}/healthz"
    spawn.wait_healthy(process, url, log_path, "server", context=context)
    return server
