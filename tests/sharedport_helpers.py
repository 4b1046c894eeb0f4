"""Servers on one shared UDP media port (`[rtc] udp_port`), for tests run in both port modes."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import ServerProcess, start_server

# Each test that takes a `port_mode` runs once per mode: a socket per connection, one shared port
# sending one datagram at a time (pure Python), one shared port with the batched fan-out.
PORT_MODES = ("per-connection", "shared-python", "shared-compiled")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server_in_mode(
    tmp_path: Path, mode: str, *extra: str, sections: str = ""
) -> ServerProcess:
    """A server whose media takes one socket per connection, or one `udp_port` for all;
    `sections`: more of its configuration file (shared modes)."""
    if mode == "per-connection":
        return start_server(tmp_path, *extra)
    config = tmp_path / "udp-port.toml"
    fanout = mode.removeprefix("shared-")
    config.write_text(f'[rtc]\nudp_port = {free_udp_port()}\nfanout = "{fanout}"\n{sections}')
    return start_server(tmp_path, "--config", str(config), *extra)
