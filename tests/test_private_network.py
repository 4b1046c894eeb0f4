"""Issue 18.1: a server on a private network accepts its LAN's clients by default, and every
refused candidate names the setting that refused it, in the server's log and to the client."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from aiortc.exceptions import InvalidStateError

from sfu.candidates import (
    DENIED,
    HOSTNAME,
    NOT_RELAY,
    TOO_MANY,
    CandidatePolicy,
    governing_setting,
)
from sfu.config import load_config
from signaling.client import KeyroomClient, SessionClosed
from signaling.media import SyntheticVideoTrack
from tests.conftest import KEY_ID, SECRET, eventually, session_end, stop_server
from tests.deploy_helpers import RUNNABLE_CONFIG, private_network, start_configured

BASE = {"auth": {"keys": {KEY_ID: SECRET}}, "metrics": {"bearer_token": "m" * 32}}


def private_allowed(rtc: dict[str, object]) -> bool | None:
    return load_config(None, {**BASE, "rtc": rtc}, {}).rtc.allow_private_candidates


def test_the_default_follows_where_the_server_runs() -> None:
    assert private_allowed({"ips": ["10.1.2.3"]}) is True
    assert private_allowed({"ips": ["192.168.1.10", "84.17.0.7"]}) is True
    assert private_allowed({"ips": ["100.64.3.4"]}) is True  # carrier-grade NAT space
    assert private_allowed({"ips": ["fd00::5"]}) is True
    assert private_allowed({"ips": ["84.17.0.7"]}) is False  # a public server
    assert private_allowed({"ips": ["127.0.0.1"]}) is False
    # Behind a 1:1 NAT the clients come from outside: the public address decides.
    assert private_allowed({"ips": ["10.1.2.3"], "public_ips": ["84.17.0.7"]}) is False
    # Set explicitly, it wins either way.
    assert private_allowed({"ips": ["10.1.2.3"], "allow_private_candidates": False}) is False
    assert private_allowed({"ips": ["84.17.0.7"], "allow_private_candidates": True}) is True


@pytest.mark.parametrize(
    ("reason", "host", "names"),
    [
        (DENIED, "10.0.0.7", "rtc.allow_private_candidates"),
        (DENIED, "::ffff:192.168.1.4", "rtc.allow_private_candidates"),
        (DENIED, "127.0.0.1", "rtc.ips"),
        (DENIED, "169.254.1.1", "never accepted"),
        (TOO_MANY, "*", "rtc.max_remote_candidates"),
        (NOT_RELAY, "10.0.0.7", "turn.relay_addresses"),
        (HOSTNAME, "x.local", "mDNS"),
    ],
)
def test_each_refusal_names_its_setting(reason: str, host: str, names: str) -> None:
    assert names in governing_setting(reason, host, CandidatePolicy(allow_private=False))


async def test_a_refused_lan_client_is_told_which_setting(tmp_path: Path) -> None:
    with private_network() as lan:
        await refused_lan_client(tmp_path, lan)


async def refused_lan_client(tmp_path: Path, lan: str) -> None:
    config = f'{RUNNABLE_CONFIG}\n[rtc]\nips = ["{lan}"]\nallow_private_candidates = false\n'
    server = start_configured(tmp_path, config)
    client = KeyroomClient(server.ws_url, server.token("alice"))
    try:
        await client.connect()
        # The refused connection may fail, and the session end, while publishing is under way.
        with contextlib.suppress(SessionClosed, InvalidStateError):
            await client.publish(SyntheticVideoTrack(), source="camera")
        assert await session_end(client, timeout=90) == 1000
        assert client.leave_reason == "connection_failed"
        with pytest.raises(SessionClosed, match="rtc.allow_private_candidates") as ended:
            await client.ping()
        assert ended.value.message is not None
        await eventually(
            lambda: "rtc.allow_private_candidates" in server.log(), 10, "the log names it"
        )
        assert "peer connection failed (refused candidates:" in server.log()
    finally:
        await client.close()
        stop_server(server)
