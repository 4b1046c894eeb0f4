"""Media-source hygiene: datagrams from an address that has not completed ICE are dropped.

aioice hands every non-STUN datagram that reaches a media socket to DTLS, wherever it came from:
a stranger who learns the port (it is in the SDP) can send forged DTLS ClientHellos while a
connection is being set up and fail it. The server drops them (`sfu.internals.MediaSourceGuard`)
and counts them as `foreign_source` in `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection
from OpenSSL import SSL

from signaling.client import KeyroomClient, count_frames
from signaling.media import SyntheticVideoTrack
from tests.conftest import ServerProcess, stop_server
from tests.sharedport_helpers import PORT_MODES, start_server_in_mode

FORGED_HELLOS = 22  # what failed a connection during setup before the guard


def forged_client_hello() -> bytes:
    """A genuine DTLS ClientHello, as any OpenSSL DTLS client sends it first."""
    client = SSL.Connection(SSL.Context(SSL.DTLS_METHOD), None)
    client.set_connect_state()
    with contextlib.suppress(SSL.WantReadError):
        client.do_handshake()
    hello: bytes = client.bio_read(4096)
    assert hello[0] == 22  # a DTLS handshake record
    return hello


def junk_srtp(seq: int) -> bytes:
    # Version 2, payload type 96: shaped like the SRTP the fast path takes, but from a stranger.
    return bytes([0x80, 96]) + seq.to_bytes(2, "big") + os.urandom(8) + os.urandom(100)


def server_ports(pc: RTCPeerConnection | None) -> set[int]:
    """The server's media ports, from the description it sent this PC."""
    if pc is None or pc.remoteDescription is None:
        return set()
    return {
        int(port) for port in re.findall(r" 127\.0\.0\.1 (\d+) typ host", pc.remoteDescription.sdp)
    }


async def stranger(clients: list[KeyroomClient], stop: asyncio.Event) -> int:
    """Send forged ClientHellos and junk SRTP to every server port as soon as the server names
    it, and keep sending until `stop`; returns the datagrams sent."""
    hello = forged_client_hello()
    sent = 0
    started: set[int] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        while not stop.is_set():
            ports = set().union(
                *(server_ports(pc) for c in clients for pc in (c.publisher_pc, c.subscriber_pc))
            )
            for port in ports:
                # A burst the moment the port is known, i.e. while ICE and DTLS are starting.
                burst = FORGED_HELLOS if port not in started else 1
                started.add(port)
                for _ in range(burst):
                    sock.sendto(hello, ("127.0.0.1", port))
                    sock.sendto(junk_srtp(sent), ("127.0.0.1", port))
                    sent += 2
            # The pace of the attack; `stop` ends it at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.002 if len(started) < 2 else 0.02)
    return sent


def foreign_source_drops(server: ServerProcess) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r'keyroom_rtp_packets_dropped_total\{reason="foreign_source"\} (\S+)', text)
    assert match is not None, "foreign_source is not exported"
    return float(match.group(1))


@pytest.fixture(params=PORT_MODES)
def media_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    server = start_server_in_mode(tmp_path, request.param)
    try:
        yield server
    finally:
        stop_server(server)


async def test_forged_client_hellos_neither_fail_setup_nor_reach_dtls(
    media_server: ServerProcess,
) -> None:
    alice = KeyroomClient(media_server.ws_url, media_server.token("alice"))
    bob = KeyroomClient(media_server.ws_url, media_server.token("bob"))
    stop = asyncio.Event()
    attack = asyncio.ensure_future(stranger([alice, bob], stop))
    try:
        await alice.connect()
        await bob.connect()
        await alice.publish(SyntheticVideoTrack(), source="camera")
        remote = await bob.next_track(timeout=15)
        assert await count_frames(remote.track, 2.0) > 10
        await bob.wait_ready(timeout=10)
        assert alice.publisher_pc is not None and bob.subscriber_pc is not None
        assert alice.publisher_pc.connectionState == "connected"
        assert bob.subscriber_pc.connectionState == "connected"
    finally:
        stop.set()
        sent = await attack
        await alice.leave()
        await bob.leave()
    # Both connections were attacked from setup on: every stranger datagram is counted.
    assert sent > 4 * FORGED_HELLOS
    assert foreign_source_drops(media_server) >= 4 * FORGED_HELLOS
