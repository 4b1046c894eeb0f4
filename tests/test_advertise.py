"""[rtc] public_ips: the SDP names the public address of a 1:1 NAT (pure, then end to end)."""

from __future__ import annotations

import re
from pathlib import Path

from sfu.advertise import advertise
from signaling.client import KeyroomClient
from signaling.media import SyntheticAudioTrack
from tests.conftest import start_server, stop_server

SDP = (
    "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 10.0.0.5\r\n"
    "a=candidate:1 1 udp 2130706431 10.0.0.5 40000 typ host\r\n"
    "a=candidate:2 1 udp 2130706431 10.0.0.6 40002 typ host\r\n"
)


def test_rewrites_candidates_and_connection_lines() -> None:
    out = advertise(SDP, {"10.0.0.5": "203.0.113.7"})
    assert "c=IN IP4 203.0.113.7" in out
    assert "203.0.113.7 40000 typ host" in out and "10.0.0.6 40002" in out
    assert "10.0.0.5" not in out
    assert advertise(SDP, {}) == SDP
    assert "c=IN IP6 2001:db8::1" in advertise(SDP, {"10.0.0.5": "2001:db8::1"})


def test_one_public_address_per_bound_address() -> None:
    import pytest

    from sfu.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="rtc.public_ips: give one public address per"):
        load_config(
            None, {"server": {"dev": True}, "rtc": {"public_ips": ["127.0.0.2", "127.0.0.3"]}}, {}
        )


async def test_server_advertises_only_the_public_address(tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text('[rtc]\npublic_ips = ["127.0.0.2"]\n')
    server = start_server(tmp_path, "--config", str(config))
    a = KeyroomClient(server.ws_url, server.token("a"))
    b = KeyroomClient(server.ws_url, server.token("b"))
    try:
        await a.connect()
        await b.connect()
        await a.publish(SyntheticAudioTrack(), source="microphone")
        await b.next_track(timeout=10)
        sdps = [
            pc.remoteDescription.sdp
            for client in (a, b)
            for pc in (client.publisher_pc, client.subscriber_pc)
            if pc is not None and pc.remoteDescription is not None
        ]
        assert len(sdps) == 3
        for sdp in sdps:
            hosts = {line.split()[4] for line in re.findall(r"^a=candidate:.*$", sdp, re.M)}
            assert hosts == {"127.0.0.2"}, hosts
    finally:
        await a.leave()
        await b.leave()
        stop_server(server)
