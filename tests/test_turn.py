"""TURN REST credentials, and relay-only rooms enforced by the server with a real coturn."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioice.stun
import aioice.turn
import pytest

from auth.audit import verify_file
from auth.turn import credential_valid, ice_servers, turn_config_lines, turn_credential
from sfu.candidates import NOT_RELAY
from signaling.client import KeyroomClient, count_frames
from signaling.media import SyntheticVideoTrack
from tests.conftest import ServerProcess, free_port, start_server, stop_server
from tests.test_candidates import ice_refusals

TURN_SECRET = "turn-test-secret-0123456789"
RELAY_IP = "127.0.0.2"  # coturn relays from here; clients and the SFU use 127.0.0.1


def test_credential_is_coturn_rest_format() -> None:
    cred = turn_credential(TURN_SECRET, "alice", now=1000.2, ttl=300)
    assert cred.username == "1301:alice" and cred.expires_at == 1301
    digest = hmac.new(TURN_SECRET.encode(), b"1301:alice", hashlib.sha1).digest()
    assert cred.password == base64.b64encode(digest).decode()


def test_credentials_expire_after_ttl() -> None:
    cred = turn_credential(TURN_SECRET, "alice", now=1000, ttl=300)
    assert credential_valid(TURN_SECRET, cred.username, cred.password, now=1299)
    assert not credential_valid(TURN_SECRET, cred.username, cred.password, now=1301)
    assert not credential_valid("other-secret-0123456", cred.username, cred.password, now=1000)
    assert not credential_valid(TURN_SECRET, "1301:mallory", cred.password, now=1000)
    with pytest.raises(ValueError):
        turn_credential(TURN_SECRET, "alice", now=1000, ttl=0)


def test_ice_servers_entry() -> None:
    assert ice_servers((), None, "alice", now=0, ttl=300) == []
    urls = ("turn:127.0.0.1:3478", "turns:turn.example:5349")
    [entry] = ice_servers(urls, TURN_SECRET, "alice", now=0, ttl=300)
    assert entry["urls"] == list(urls) and entry["username"] == "300:alice"


# --- coturn in this test's namespace ------------------------------------------------------------


@contextlib.contextmanager
def running_coturn(tmp_path: Path) -> Iterator[int]:
    """coturn on 127.0.0.1 (relaying from RELAY_IP) until the block ends; yields its port."""
    if shutil.which("turnserver") is None:
        pytest.skip("coturn is not installed (scripts/test installs it)")
    port = free_port()
    conf = tmp_path / "turnserver.conf"
    conf.write_text(
        "\n".join(
            [
                "listening-ip=127.0.0.1", f"relay-ip={RELAY_IP}", f"listening-port={port}",
                "min-port=49152", "max-port=49200", "no-tls", "no-dtls",
                # What `keyroom turn-config --dev` prints for this setup.
                *turn_config_lines(TURN_SECRET, "keyroom", ["127.0.0.1"], dev=True),
                f"userdb={tmp_path}/turndb", f"pidfile={tmp_path}/turn.pid", "log-file=stdout", "",
            ]
        )
    )  # fmt: skip
    log = open(tmp_path / "coturn.log", "wb")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(["turnserver", "-c", str(conf)], stdout=log, stderr=log)
    try:
        wait_answering(port, tmp_path / "coturn.log")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_answering(port: int, log_path: Path, timeout: float = 10) -> None:
    """Send STUN Binding requests to 127.0.0.1:`port` until one is answered."""
    request = bytes(
        aioice.stun.Message(
            message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.REQUEST
        )
    )
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.1)  # the wait before asking again
        while time.monotonic() < deadline:
            sock.sendto(request, ("127.0.0.1", port))
            try:
                sock.recv(2048)
                return
            except OSError:  # no answer yet
                continue
    raise RuntimeError(f"coturn did not answer:\n{log_path.read_text(errors='replace')}")


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[int]:
    with running_coturn(tmp_path) as port:
        yield port


def relay_server(tmp_path: Path, turn_port: int) -> ServerProcess:
    config = tmp_path / "keyroom.toml"
    config.write_text(
        f'[turn]\nurls = ["turn:127.0.0.1:{turn_port}?transport=udp"]\n'
        f'secret = "{TURN_SECRET}"\nttl = 300\nrelay_addresses = ["{RELAY_IP}"]\n'
        '[limits]\nrelay_only = true\n[audit]\npath = "audit.jsonl"\n'
    )
    return start_server(tmp_path, "--config", str(config))


class JoinedServersClient(KeyroomClient):
    """Uses the `ice_servers` the server hands out in `joined`, as a browser would."""

    def _on_joined(self, frame: dict[str, Any]) -> None:
        self.ice_servers = frame.get("ice_servers") or []
        super()._on_joined(frame)


class PolicyIgnoringClient(KeyroomClient):
    """Offers direct host candidates whatever `joined` says, and uses no TURN server."""

    def _on_joined(self, frame: dict[str, Any]) -> None:
        super()._on_joined({**frame, "ice_transport_policy": "all"})


def selected_pair_types(client: KeyroomClient) -> tuple[set[str], str]:
    assert client.publisher_pc is not None
    connection = client.publisher_pc.getTransceivers()[0].sender.transport.transport._connection
    local = {c.type for c in connection.local_candidates}
    pair = connection._nominated[1]
    return local, pair.local_candidate.type


async def test_relay_only_room_connects_through_turn_only(tmp_path: Path, coturn: int) -> None:
    server = relay_server(tmp_path, coturn)
    alice = JoinedServersClient(server.ws_url, server.token("alice"))
    bob = JoinedServersClient(server.ws_url, server.token("bob"))
    try:
        joined = await alice.connect()
        await bob.connect()
        assert joined["ice_transport_policy"] == "relay"
        [entry] = joined["ice_servers"]
        assert entry["username"].endswith(":alice")
        assert credential_valid(
            TURN_SECRET, entry["username"], entry["credential"], now=time.time()
        )
        await alice.publish(SyntheticVideoTrack(), source="camera")
        remote = await bob.next_track(timeout=20)
        assert await count_frames(remote.track, 2.0) > 10
        local, selected = selected_pair_types(alice)
        assert local == {"relay"} and selected == "relay"
    finally:
        await alice.leave()
        await bob.leave()
        stop_server(server)


async def test_a_client_ignoring_the_relay_policy_cannot_connect(
    tmp_path: Path, coturn: int
) -> None:
    server = relay_server(tmp_path, coturn)
    rogue = PolicyIgnoringClient(server.ws_url, server.token("rogue"))
    try:
        joined = await rogue.connect()
        assert joined["ice_transport_policy"] == "relay"
        assert rogue.subscriber_pc is not None
        await asyncio.sleep(8)  # an absence over a while (aiortc gives up only after 30 s)
        assert rogue.subscriber_pc.connectionState != "connected"
        audited = ice_refusals((tmp_path / "audit.jsonl").read_text())
        assert {(r["reason"], r["address"]) for r in audited} >= {(NOT_RELAY, "127.0.0.1")}
        key = (tmp_path / "data" / "audit.key").read_bytes().strip()
        assert verify_file(str(tmp_path / "audit.jsonl"), key).intact
    finally:
        await rogue.close()
        stop_server(server)


def test_turn_config_for_a_public_deployment(tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text(
        f'[turn]\nurls = ["turn:t"]\nsecret = "{TURN_SECRET}"\n'
        '[rtc]\nips = ["10.0.0.5"]\npublic_ips = ["203.0.113.5"]\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "sfu", "turn-config", "--config", str(config)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[:3] == ["use-auth-secret", f"static-auth-secret={TURN_SECRET}", "realm=keyroom"]
    assert "no-loopback-peers" in lines and "allow-loopback-peers" not in lines
    # Every peer denied, the IPv4-mapped block too (the CVE bypass); only the SFU allowed.
    assert "denied-peer-ip=0.0.0.0-255.255.255.255" in lines
    assert "denied-peer-ip=::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" in lines
    assert "denied-peer-ip=::ffff:0.0.0.0-::ffff:255.255.255.255" in lines
    allowed = [line for line in lines if line.startswith("allowed-peer-ip=")]
    assert allowed == ["allowed-peer-ip=10.0.0.5", "allowed-peer-ip=203.0.113.5"]


async def relays_to(turn_port: int, peer: str) -> bool:
    """Whether coturn relays a datagram from a client holding a valid credential to `peer`."""
    loop = asyncio.get_running_loop()
    credential = turn_credential(TURN_SECRET, "alice", now=time.time(), ttl=60)
    transport, _ = await aioice.turn.create_turn_endpoint(
        asyncio.DatagramProtocol, ("127.0.0.1", turn_port), credential.username, credential.password
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind((peer, 0))
        sink.setblocking(False)
        try:
            transport.sendto(b"through the relay", sink.getsockname())
            data = await asyncio.wait_for(loop.sock_recv(sink, 100), 2)
        except TimeoutError:
            return False
        finally:
            transport.close()
    return data == b"through the relay"


async def test_the_relay_reaches_the_sfu_and_nothing_else(coturn: int) -> None:
    """Issue 11.15: with `keyroom turn-config`'s lines a credential holder cannot use the relay
    as an open proxy: it reaches the SFU's address (127.0.0.1 here), not another host."""
    assert await relays_to(coturn, "127.0.0.1")
    assert not await relays_to(coturn, "127.0.0.3")


async def allocates(port: int, username: str, password: str) -> bool:
    """Whether coturn grants a relay allocation for this credential."""
    try:
        transport, _ = await aioice.turn.create_turn_endpoint(
            asyncio.DatagramProtocol, ("127.0.0.1", port), username, password
        )
    except aioice.stun.TransactionFailed:
        return False
    transport.close()
    return True


async def test_coturn_refuses_a_credential_once_its_ttl_is_over(coturn: int) -> None:
    now = time.time()
    fresh = turn_credential(TURN_SECRET, "alice", now=now, ttl=2)
    assert await allocates(coturn, fresh.username, fresh.password)
    # The same credential issued 4.1 s earlier (the expiry is rounded up to a whole second), so
    # past it by more than a second: coturn checks the timestamp in the username.
    expired = turn_credential(TURN_SECRET, "alice", now=now - 4.1, ttl=2)
    assert expired.expires_at + 1 < now
    assert not await allocates(coturn, expired.username, expired.password)
    forged = f"{fresh.expires_at + 3600}:alice"  # a later expiry without the secret's HMAC
    assert not await allocates(coturn, forged, fresh.password)
