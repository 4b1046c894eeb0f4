"""Advertised addresses: with `rtc.ips = ["127.0.0.1"]`, no other host address ever reaches an SDP.

A veth pair inside the test's own network namespace (scripts/test runs the suite in one) puts a
second address on this host, which aioice would offer by default.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sfu.config import ConfigError, load_config
from sfu.iceaddr import stock_get_host_addresses
from sfu.internals import port_order
from signaling.client import KeyroomClient, count_frames
from signaling.media import SyntheticVideoTrack
from tests.conftest import ServerProcess, start_server, stop_server
from tests.deploy_helpers import veth_pair

OTHER = "10.213.0.1"  # on the veth end inside this namespace
PEER = "10.213.0.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def other_address() -> Iterator[str]:
    with veth_pair(("krveth0", "krveth1"), (OTHER, PEER)):
        yield OTHER


class RecordingClient(KeyroomClient):
    """Keeps every frame the server sends, as received."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: list[str] = []

    # The client routes replies (`joined`, the publisher's answer) and events apart: both count.
    def _on_reply(self, frame: dict[str, Any]) -> None:
        self.frames.append(orjson.dumps(frame).decode())
        super()._on_reply(frame)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        self.frames.append(orjson.dumps(frame).decode())
        super()._dispatch(frame)


async def test_no_sdp_carries_another_host_address(
    other_address: str, server: ServerProcess
) -> None:
    # The address is really there: without rtc.ips, aioice would advertise it.
    assert other_address in stock_get_host_addresses(True, True)
    alice = RecordingClient(server.ws_url, server.token("alice"))
    bob = RecordingClient(server.ws_url, server.token("bob"))
    try:
        await alice.connect()
        await bob.connect()
        await alice.publish(SyntheticVideoTrack(), source="camera")
        remote = await bob.next_track(timeout=15)
        assert await count_frames(remote.track, 5.0, enough=1) > 0
    finally:
        await alice.leave()
        await bob.leave()
    sdps = [f for f in alice.frames + bob.frames if "v=0" in f]
    assert len(sdps) >= 3  # alice's answer, the subscriber offers to both
    for frame in alice.frames + bob.frames:
        assert other_address not in frame and PEER not in frame
    assert all("127.0.0.1" in f for f in sdps)


# --- [rtc] port_min / port_max -------------------------------------------------------------------


def test_port_order_starts_anywhere_and_covers_the_range_once() -> None:
    assert port_order(5000, 5003, 5002) == [5002, 5003, 5000, 5001]
    assert port_order(5000, 5000, 5000) == [5000]


@pytest.mark.parametrize(("low", "high"), [(40000, 0), (0, 40000), (40010, 40000)])
def test_a_port_range_needs_both_ends_in_order(low: int, high: int) -> None:
    rtc = {"ips": ["127.0.0.1"], "port_min": low, "port_max": high}
    with pytest.raises(ConfigError, match="rtc.port_min and rtc.port_max"):
        load_config(None, {"rtc": rtc, "auth": {"keys": {"k": "s" * 40}}}, {})


PORTS = (41000, 41007)


async def test_media_sockets_bind_in_the_configured_range(tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text(f"[rtc]\nport_min = {PORTS[0]}\nport_max = {PORTS[1]}\n")
    server = start_server(tmp_path, "--config", str(config))
    alice = RecordingClient(server.ws_url, server.token("alice"))
    bob = RecordingClient(server.ws_url, server.token("bob"))
    try:
        await alice.connect()
        await bob.connect()
        await alice.publish(SyntheticVideoTrack(), source="camera")
        remote = await bob.next_track(timeout=15)
        assert await count_frames(remote.track, 5.0, enough=1) > 0
    finally:
        await alice.leave()
        await bob.leave()
        stop_server(server)
    ports = {
        int(port)
        for frame in alice.frames + bob.frames
        for port in re.findall(r"candidate:\S+ 1 udp \d+ 127\.0\.0\.1 (\d+) typ host", frame)
    }
    assert len(ports) >= 3  # alice's two PCs and bob's subscriber PC
    assert all(PORTS[0] <= port <= PORTS[1] for port in ports), ports
