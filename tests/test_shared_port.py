"""One UDP port for every peer connection (`[rtc] udp_port`, sfu/internals/sharedport.py).

Unit tests drive the demultiplexer with datagrams; the server tests run a call on the shared
port, with a stranger's junk flood from many addresses and a peer that moves mid-call. The
media-source tests (tests/test_media_sources.py) run in both port modes.
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCPeerConnection

from loadtest import junkflood
from loadtest.procstat import rss_bytes
from sfu.config import ConfigError, load_config
from sfu.internals.sharedport import (
    MAX_ADDRESSES,
    MAX_PENDING,
    Demux,
    SharedTransport,
    follow_local_ufrag,
    local_ufrag,
    stun_class,
    stun_header_ok,
)
from signaling.client import KeyroomClient, count_frames
from signaling.media import SyntheticVideoTrack
from tests.conftest import ServerProcess, stop_server
from tests.sharedport_helpers import PORT_MODES, start_server_in_mode

SUCCEEDED = aioice.ice.CandidatePair.State.SUCCEEDED
PEER = ("127.0.0.1", 50000)

# --- the demultiplexer, without sockets ----------------------------------------------------------


def connection() -> Any:
    return SimpleNamespace(_nominated={}, _check_list=[])


class FakeProtocol:
    """What the demultiplexer reads of an aioice StunProtocol (hashable, like it)."""

    def __init__(self, receiver: Any) -> None:
        self.receiver = receiver


def protocol_of(conn: Any) -> Any:
    return FakeProtocol(conn)


def succeed(conn: Any, protocol: Any, addr: tuple[str, int]) -> None:
    conn._check_list.append(SimpleNamespace(protocol=protocol, remote_addr=addr, state=SUCCEEDED))


def stun_response(transaction_id: bytes) -> bytes:
    return struct.pack("!HH", 0x0101, 0) + junkflood.COOKIE + transaction_id


def test_stun_helpers_read_ufrag_class_and_header() -> None:
    request = junkflood.stun_request(b"abcd")
    assert stun_header_ok(request) and stun_class(request) == 0
    assert local_ufrag(request) == b"abcd"
    assert stun_class(stun_response(b"x" * 12)) == 2
    assert not stun_header_ok(request[:-1])  # the length no longer matches
    assert not stun_header_ok(b"\x00\x01\x00\x00" + b"\x00" * 16)  # no magic cookie
    no_colon = struct.pack("!HH", 6, 4) + b"abcd"
    assert local_ufrag(request[:20] + no_colon) is None


def test_requests_go_by_ufrag_responses_by_transaction() -> None:
    drops: Counter[str] = Counter()
    demux = Demux(drops)
    a, b = protocol_of(connection()), protocol_of(connection())
    demux.attach(b"ufa", a)
    demux.attach(b"ufb", b)
    assert demux.route(junkflood.stun_request(b"ufb"), PEER) is b
    assert demux.route(junkflood.stun_request(b"nobody"), PEER) is None
    demux.sent_request(b"t" * 12, a)
    assert demux.route(stun_response(b"t" * 12), PEER) is a
    assert demux.route(stun_response(b"u" * 12), PEER) is None
    assert demux.route(junkflood.junk(4), PEER) is None  # malformed
    assert drops == {"unknown_ufrag": 1, "unknown_transaction": 1, "malformed_stun": 1}


def test_media_only_from_an_address_that_completed_ice_with_that_connection() -> None:
    drops: Counter[str] = Counter()
    demux = Demux(drops)
    conn = connection()
    a = protocol_of(conn)
    demux.attach(b"ufa", a)
    srtp = junkflood.junk(0)
    assert demux.route(srtp, PEER) is None  # never heard of
    assert demux.route(junkflood.stun_request(b"ufa"), PEER) is a
    assert demux.route(srtp, PEER) is None  # checks, but not yet succeeded
    succeed(conn, a, PEER)
    assert demux.route(srtp, PEER) is a
    assert demux.by_address == {PEER: a}
    assert drops == {"foreign_source": 2}
    # A stranger that knows nothing gets nothing, and leaves nothing behind.
    assert demux.route(srtp, ("127.0.0.9", 1)) is None
    assert PEER not in demux.pending and ("127.0.0.9", 1) not in demux.pending


def test_a_moved_peer_is_mapped_at_its_new_address_and_old_ones_are_bounded() -> None:
    demux = Demux(Counter())
    conn = connection()
    a = protocol_of(conn)
    demux.attach(b"ufa", a)
    addresses = [("127.0.0.1", 50000 + i) for i in range(MAX_ADDRESSES + 3)]
    for addr in addresses:
        demux.route(junkflood.stun_request(b"ufa"), addr)
        succeed(conn, a, addr)
        assert demux.route(junkflood.junk(0), addr) is a
    assert len(demux.by_address) == MAX_ADDRESSES
    assert addresses[-1] in demux.by_address and addresses[0] not in demux.by_address


def test_tables_are_bounded_and_emptied_on_detach() -> None:
    demux = Demux(Counter())
    a = protocol_of(connection())
    demux.attach(b"ufa", a)
    for port in range(MAX_PENDING + 10):
        demux.route(junkflood.stun_request(b"ufa"), ("127.0.0.1", port))
    demux.sent_request(b"t" * 12, a)
    assert len(demux.pending) == MAX_PENDING
    demux.detach(a)
    assert not (demux.pending or demux.transactions or demux.by_ufrag or demux.by_address)
    assert demux.route(junkflood.stun_request(b"ufa"), PEER) is None


def test_an_ice_restart_moves_stun_routing_to_the_new_ufrag() -> None:
    """renew_local_credentials (sfu/internals/icerestart.py) calls follow_local_ufrag: without
    it, the peer's checks and consent under the new ufrag would be dropped as unknown."""
    demux = Demux(Counter())
    conn = SimpleNamespace(_nominated={}, _check_list=[], local_username="old1")
    protocol = protocol_of(conn)
    shared = SimpleNamespace(transport=SimpleNamespace(sendto=None), batch=None, demux=demux)
    protocol.transport = SharedTransport(shared, protocol)  # type: ignore[arg-type]
    demux.attach(b"old1", protocol)
    conn._protocols = [protocol]
    conn.local_username = "new2"
    follow_local_ufrag(conn)  # type: ignore[arg-type]
    assert demux.route(junkflood.stun_request(b"new2"), PEER) is protocol
    assert demux.route(junkflood.stun_request(b"old1"), PEER) is None  # retired by the restart


def test_udp_port_and_a_port_range_are_exclusive() -> None:
    rtc = {"ips": ["127.0.0.1"], "udp_port": 7882, "port_min": 41000, "port_max": 41010}
    with pytest.raises(ConfigError, match="rtc.udp_port"):
        load_config(None, {"rtc": rtc, "auth": {"keys": {"k": "s" * 40}}}, {})


# --- a server on the shared port -----------------------------------------------------------------

CI_FLOOD = (20_000, 100)  # datagrams, source addresses
LONG_FLOOD = (1_000_000, 1_000)


def server_ports(client: KeyroomClient) -> set[int]:
    ports = set()
    for pc in (client.publisher_pc, client.subscriber_pc):
        if pc is not None and pc.remoteDescription is not None:
            sdp = pc.remoteDescription.sdp
            ports |= {int(p) for p in re.findall(r" 127\.0\.0\.1 (\d+) typ host", sdp)}
    return ports


def metrics(server: ServerProcess) -> str:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def counter(server: ServerProcess, name: str) -> float:
    match = re.search(rf"^{name}_total (\S+)", metrics(server), re.M)
    assert match is not None, name
    return float(match.group(1))


def batched_packets(server: ServerProcess) -> float:
    return counter(server, "keyroom_fanout_batched_packets")


def dropped(server: ServerProcess) -> dict[str, float]:
    text = metrics(server)
    pattern = r'keyroom_rtp_packets_dropped_total\{reason="(\w+)"\} (\S+)'
    return {reason: float(value) for reason, value in re.findall(pattern, text)}


async def start_call(alice: KeyroomClient, bob: KeyroomClient) -> Any:
    """Alice publishes a camera, Bob receives it; returns Bob's remote track, flowing."""
    await alice.connect()
    await bob.connect()
    await alice.publish(SyntheticVideoTrack(), source="camera")
    remote = await bob.next_track(timeout=15)
    assert await count_frames(remote.track, 2.0, enough=5) >= 5
    return remote


@pytest.fixture(params=("shared-python", "shared-compiled"))
def shared_server(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    server = start_server_in_mode(tmp_path, request.param)
    try:
        yield server
    finally:
        stop_server(server)


async def test_junk_flood_from_many_addresses_is_counted_without_growth_or_stall(
    shared_server: ServerProcess,
) -> None:
    datagrams, addresses = LONG_FLOOD if os.environ.get("KEYROOM_FLOOD") == "long" else CI_FLOOD
    alice = KeyroomClient(shared_server.ws_url, shared_server.token("alice"))
    bob = KeyroomClient(shared_server.ws_url, shared_server.token("bob"))
    try:
        remote = await start_call(alice, bob)
        ports = server_ports(alice) | server_ports(bob)
        assert len(ports) == 1, ports  # every connection of both clients on the one port
        port = ports.pop()
        pid = shared_server.process.pid
        # A warm-up flood first: the counters' keys and the allocator's arenas settle.
        await junkflood.flood(port, datagrams // 10, addresses)
        before = rss_bytes(pid)
        frames = asyncio.ensure_future(count_frames(remote.track, 600.0))
        sent = await junkflood.flood(port, datagrams, addresses)
        after = rss_bytes(pid)
        frames.cancel()
        # The call kept flowing through the flood and after it.
        assert await count_frames(remote.track, 2.0, enough=10) >= 10
        assert bob.subscriber_pc is not None and bob.subscriber_pc.connectionState == "connected"
    finally:
        await alice.leave()
        await bob.leave()
    drops = dropped(shared_server)
    for reason in ("foreign_source", "unknown_ufrag", "unknown_transaction", "malformed_stun"):
        assert drops.get(reason, 0) > 0, (reason, drops)
    refused = sum(drops.get(r, 0) for r in ("foreign_source", "unknown_ufrag"))
    refused += drops.get("unknown_transaction", 0) + drops.get("malformed_stun", 0)
    # Most of both floods reached the server and was counted (the kernel may drop some).
    assert refused >= 0.5 * (sent + datagrams // 10), (refused, sent, drops)
    assert after - before < 4 * 1024 * 1024, (before, after)


async def move_to_a_new_socket(pc: RTCPeerConnection) -> tuple[tuple[str, int], tuple[str, int]]:
    """What a NAT rebinding or a network change does to a controlling peer (aioice nominates
    aggressively): checks from a new socket, nominated there, and the old socket gone. Returns
    (old, new) local addresses."""
    conn = pc.getTransceivers()[0].sender.transport.transport._connection
    old = conn._nominated[1]
    loop = asyncio.get_running_loop()
    _, moved = await loop.create_datagram_endpoint(
        lambda: aioice.ice.StunProtocol(conn), local_addr=("127.0.0.1", 0)
    )
    host, port = moved.transport.get_extra_info("sockname")[:2]
    moved.local_candidate = aioice.Candidate(
        foundation="moved", component=1, transport="udp", priority=old.local_candidate.priority,
        host=host, port=port, type="host",
    )  # fmt: skip
    conn._protocols.append(moved)
    pair = aioice.ice.CandidatePair(moved, old.remote_candidate)
    conn._check_list.append(pair)
    await conn.check_start(pair)
    assert conn._nominated[1] is pair, "the new path was not nominated"
    old.protocol.transport.close()  # the old address is gone: media can only take the new one
    return old.local_addr, pair.local_addr


@pytest.mark.parametrize("mode", PORT_MODES)
async def test_a_publisher_that_changes_address_mid_call_keeps_publishing(
    tmp_path: Path, mode: str
) -> None:
    server = start_server_in_mode(tmp_path, mode)
    alice = KeyroomClient(server.ws_url, server.token("alice"))
    bob = KeyroomClient(server.ws_url, server.token("bob"))
    try:
        remote = await start_call(alice, bob)
        assert alice.publisher_pc is not None
        old, new = await move_to_a_new_socket(alice.publisher_pc)
        assert old != new
        # Frames decoded after the move travelled from alice's new address.
        assert await count_frames(remote.track, 3.0, enough=20) >= 20
        assert alice.publisher_pc.connectionState == "connected"
        # The copies went through the path the mode names.
        received = counter(server, "keyroom_shared_port_received_datagrams")
        calls = counter(server, "keyroom_shared_port_recvmmsg_calls")
        if mode == "shared-compiled":
            assert batched_packets(server) >= 20
            # Bob's copies were made by the compiled per-copy loop once his track was steady.
            assert counter(server, "keyroom_fanout_compiled_copies") >= 10
            assert received >= 20 and 0 < calls <= received  # read with recvmmsg
        else:
            assert batched_packets(server) == 0
            assert received == calls == counter(server, "keyroom_fanout_compiled_copies") == 0
    finally:
        await alice.leave()
        await bob.leave()
        stop_server(server)
