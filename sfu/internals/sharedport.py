"""One UDP port for every ICE connection of the process (`[rtc] udp_port`).

aioice binds a socket per connection; here every connection gathers a host candidate on one
socket per `[rtc] ips` address, bound on the configured port. Each connection still gets a real
aioice `StunProtocol` (so its pairs, consent checks, the media-source guard and the fast path
work unchanged on it) whose transport is the shared socket. Incoming datagrams are handed to the
right one by `Demux`:

- a STUN request by the USERNAME's first part (our ufrag: RFC 8445 7.2.2);
- a STUN response by its transaction id, recorded when the connection sent the request;
- anything else (DTLS, SRTP, SRTCP) by source address, once that address has completed ICE
  with the connection (the same test `MediaSourceGuard` applies); an address that has not is
  dropped as `foreign_source`, as the guard drops it in port-range mode.

Nothing is remembered for a datagram that matches no connection: a junk flood from any number
of addresses grows no table. A peer that moves (NAT rebinding, a new network) sends checks from
its new address; once a check there succeeds and the peer nominates that pair, its media is
taken from there (aioice replaces the nominated pair) and the old address stays mapped until the
connection closes, bounded per connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import Counter
from types import ModuleType
from typing import Any

import aioice
import aioice.ice
from aioice import stun

from sfu.fastpath.batch import FanoutBatch
from sfu.fastpath.receive import BatchedSocket
from sfu.internals.icepolicy import verified_source
from sfu.internals.ports import host_candidate, replace_host_gathering
from sfu.sockbuf import DEFAULT_RECEIVE_BUFFER, set_receive_buffer
from sfu.stats import DropReason, Stats

log = logging.getLogger("keyroom.internals")

COOKIE = b"\x21\x12\xa4\x42"
USERNAME = 0x0006
# Addresses that sent STUN for a connection but have not (yet) sent it anything else.
MAX_PENDING = 4096
# Requests our agents sent whose responses are still expected (consent, checks).
MAX_TRANSACTIONS = 16384
# Media addresses kept per connection (its current one and those it moved from).
MAX_ADDRESSES = 8
SOCKET_BUFFER = 4 * 1024 * 1024

Address = tuple[Any, ...]
Protocol = aioice.ice.StunProtocol


def stun_header_ok(data: bytes) -> bool:
    """A STUN header (RFC 8489 5): magic cookie, and a length that is the rest of the datagram."""
    return len(data) >= 20 and data[4:8] == COOKIE and int.from_bytes(data[2:4]) + 20 == len(data)


def stun_class(data: bytes) -> int:
    """0 request, 1 indication, 2 success response, 3 error response (class bits C1, C0)."""
    return ((data[0] & 0x01) << 1) | ((data[1] >> 4) & 0x01)


def local_ufrag(data: bytes) -> bytes | None:
    """The receiver's ufrag: USERNAME's part before the colon; None without one (pure)."""
    position, size = 20, len(data)
    while position + 4 <= size:
        kind = int.from_bytes(data[position : position + 2])
        length = int.from_bytes(data[position + 2 : position + 4])
        if kind == USERNAME:
            ufrag, colon, _ = data[position + 4 : position + 4 + length].partition(b":")
            return ufrag if colon and ufrag else None
        position += 4 + length + (-length % 4)
    return None


class Demux:
    """Which connection's protocol takes a datagram that reached the shared socket (no I/O)."""

    __slots__ = ("drops", "by_ufrag", "by_address", "pending", "transactions", "mapped")

    def __init__(self, drops: Counter[str]) -> None:
        self.drops = drops
        self.by_ufrag: dict[bytes, Protocol] = {}
        # Addresses that completed ICE, per connection protocol: the media path's one lookup.
        self.by_address: dict[Address, Protocol] = {}
        self.pending: dict[Address, Protocol] = {}
        self.transactions: dict[bytes, Protocol] = {}
        self.mapped: dict[Protocol, list[Address]] = {}

    def attach(self, ufrag: bytes, protocol: Protocol) -> None:
        self.by_ufrag[ufrag] = protocol
        self.mapped[protocol] = []

    def detach(self, protocol: Protocol) -> None:
        for ufrag in [u for u, p in self.by_ufrag.items() if p is protocol]:
            del self.by_ufrag[ufrag]
        for address in self.mapped.pop(protocol, []):
            if self.by_address.get(address) is protocol:
                del self.by_address[address]
        for address in [a for a, p in self.pending.items() if p is protocol]:
            del self.pending[address]
        for transaction in [t for t, p in self.transactions.items() if p is protocol]:
            del self.transactions[transaction]

    def sent_request(self, transaction_id: bytes, protocol: Protocol) -> None:
        _bounded_put(self.transactions, transaction_id, protocol, MAX_TRANSACTIONS)

    def route(self, data: bytes, addr: Address) -> Protocol | None:
        """The protocol `data` from `addr` belongs to; None: dropped and counted."""
        if not data:
            self.drops[DropReason.MALFORMED.value] += 1
            return None
        if data[0] < 4:  # RFC 7983: STUN
            return self._route_stun(data, addr)
        protocol = self.by_address.get(addr)
        if protocol is not None:
            return protocol
        protocol = self.pending.get(addr)
        if protocol is None or not verified_source(protocol.receiver, protocol, addr):
            self.drops[DropReason.FOREIGN_SOURCE.value] += 1
            return None
        del self.pending[addr]
        self._map(addr, protocol)
        return protocol

    def _route_stun(self, data: bytes, addr: Address) -> Protocol | None:
        protocol = None
        if not stun_header_ok(data):
            reason = DropReason.MALFORMED_STUN
        elif (kind := stun_class(data)) == 0:
            ufrag = local_ufrag(data)
            protocol = self.by_ufrag.get(ufrag) if ufrag is not None else None
            reason = DropReason.UNKNOWN_UFRAG
        elif kind >= 2:
            protocol = self.transactions.get(data[8:20])
            reason = DropReason.UNKNOWN_TRANSACTION
        else:
            reason = DropReason.MALFORMED_STUN  # an indication: ICE sends none to us
        if protocol is None:
            self.drops[reason.value] += 1
            return None
        if self.by_address.get(addr) is not protocol:
            _bounded_put(self.pending, addr, protocol, MAX_PENDING)
        return protocol

    def _map(self, addr: Address, protocol: Protocol) -> None:
        previous = self.by_address.get(addr)
        if previous is not None and previous is not protocol:
            self.mapped[previous].remove(addr)
        self.by_address[addr] = protocol
        addresses = self.mapped.setdefault(protocol, [])
        addresses.append(addr)
        if len(addresses) > MAX_ADDRESSES:
            oldest = addresses.pop(0)
            if self.by_address.get(oldest) is protocol:
                del self.by_address[oldest]


def _bounded_put(table: dict[Any, Protocol], key: Any, protocol: Protocol, limit: int) -> None:
    table.pop(key, None)  # re-inserted last: the oldest entry is the one evicted
    table[key] = protocol
    if len(table) > limit:
        del table[next(iter(table))]


class SharedSocket(asyncio.DatagramProtocol):
    """The one socket of an address: its datagrams go to the protocol `Demux` names.

    With the compiled fan-out the socket is read in batches (`BatchedSocket`: recvmmsg), and the
    RTP a batch of datagrams makes the forwarder send is queued in `batch` and leaves in one
    `sendmmsg` after it; without it, asyncio's datagram transport calls `datagram_received`."""

    def __init__(self, demux: Demux, stats: Stats, fanout: ModuleType | None = None) -> None:
        self.demux = demux
        self._stats = stats
        self._by_address = demux.by_address
        self._fanout = fanout
        self.batch: FanoutBatch | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._fanout is not None:
            fd = transport.get_extra_info("socket").fileno()
            self.batch = FanoutBatch(self._fanout, fd, self._stats)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.dispatch(data, addr)

    def dispatch(self, data: bytes, addr: Address) -> None:
        # Media from a mapped address: one dict lookup, then the connection's own callback.
        if data and data[0] > 3:
            protocol = self._by_address.get(addr)
            if protocol is not None:
                protocol.datagram_received(data, addr)
                return
        protocol = self.demux.route(data, addr)
        if protocol is not None:
            protocol.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("shared media port: %s", exc)


class SharedTransport:
    """A connection's view of the shared socket: its `sendto`, and a `close` that detaches."""

    def __init__(self, shared: SharedSocket, protocol: Protocol) -> None:
        assert shared.transport is not None
        self.sendto = shared.transport.sendto
        self.batch = shared.batch  # read by `RtpSink`: None sends RTP one datagram at a time
        self._transport = shared.transport
        self._demux = shared.demux
        self._protocol: Protocol | None = protocol

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            self._demux.detach(protocol)
            asyncio.get_running_loop().call_soon(protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self._protocol is None

    def rename(self, ufrag: bytes) -> None:
        """An ICE restart gave the connection a new local ufrag: STUN naming it (and no longer
        the old one, which the restart retired) reaches this protocol."""
        if self._protocol is not None:
            self._demux.detach(self._protocol)
            self._demux.attach(ufrag, self._protocol)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._transport.get_extra_info("sockname")
        return default  # never the shared socket itself: nobody closes or tunes it per peer


class SharedPort:
    """The shared sockets, one per address, all on `port`; `fanout`: the compiled extension
    (sfu/fastpath), or None for the pure-Python path."""

    def __init__(
        self,
        port: int,
        stats: Stats,
        fanout: ModuleType | None = None,
        receive_buffer: int = 0,
    ) -> None:
        self.port = port
        self.stats = stats
        self.fanout = fanout
        self.receive_buffer = receive_buffer or DEFAULT_RECEIVE_BUFFER
        self.sockets: dict[str, SharedSocket] = {}

    async def open(self, addresses: list[str]) -> None:
        loop = asyncio.get_running_loop()
        for address in addresses:
            family = (
                socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
            )
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((address, self.port))
            except OSError as exc:
                sock.close()
                raise OSError(
                    f"rtc.udp_port: cannot bind {address} port {self.port}: {exc}"
                ) from exc
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            obtained = set_receive_buffer(sock, self.receive_buffer)
            # The kernel doubles what it grants; less than asked: capped by net.core.rmem_max.
            log.log(
                logging.WARNING if obtained < self.receive_buffer else logging.INFO,
                "shared media port %s:%d: receive buffer %d bytes (%d asked)",
                *(address, self.port, obtained, self.receive_buffer),
            )
            self.stats.udp_sockets.append(sock)
            shared = SharedSocket(Demux(self.stats.dropped), self.stats, self.fanout)
            if self.fanout is None:
                await loop.create_datagram_endpoint(lambda s=shared: s, sock=sock)  # type: ignore[misc]
            else:  # read in batches (recvmmsg), each batch's copies sent in one sendmmsg
                batched = BatchedSocket(self.fanout, sock, self.stats)
                shared.connection_made(batched)  # type: ignore[arg-type]
                batched.start(shared.dispatch, shared.batch)
            self.sockets[address] = shared

    def close(self) -> None:
        self.stats.udp_sockets.clear()
        for shared in self.sockets.values():
            if shared.transport is not None:
                shared.transport.close()
        self.sockets.clear()

    def attach(self, connection: aioice.ice.Connection, component: int, address: str) -> Protocol:
        """A protocol of `connection` on the shared socket of `address`, with its candidate."""
        shared = self.sockets[address]
        protocol = aioice.ice.StunProtocol(connection)
        protocol.connection_made(SharedTransport(shared, protocol))  # type: ignore[arg-type]
        stock_send = protocol.send_stun
        demux = shared.demux

        def send_stun(message: stun.Message, addr: tuple[str, int]) -> None:
            if message.message_class == stun.Class.REQUEST:
                demux.sent_request(message.transaction_id, protocol)
            stock_send(message, addr)

        protocol.send_stun = send_stun  # type: ignore[method-assign]
        protocol.local_candidate = host_candidate(component, address, self.port)
        demux.attach(connection.local_username.encode(), protocol)
        return protocol


def follow_local_ufrag(connection: aioice.ice.Connection) -> None:
    """After `renew_local_credentials`: the shared port's STUN routing follows the new ufrag."""
    for protocol in connection._protocols:
        transport = protocol.transport
        if isinstance(transport, SharedTransport):
            transport.rename(connection.local_username.encode())


def share_media_port(shared: SharedPort) -> None:
    """Make every host-only ICE agent of this process gather on `shared` (process-wide, like
    `bind_media_ports`); an agent with a STUN or TURN server keeps aioice's gathering."""

    async def gather(
        connection: aioice.ice.Connection, component: int, address: str
    ) -> aioice.ice.StunProtocol | None:
        if address not in shared.sockets:
            log.warning("shared media port: no socket on %s", address)
            return None
        return shared.attach(connection, component, address)

    replace_host_gathering(gather)


async def open_shared_port(
    addresses: list[str],
    port: int,
    stats: Stats,
    fanout: ModuleType | None = None,
    receive_buffer: int = 0,
) -> SharedPort:
    """Bind `port` on every address and make every ICE agent gather on it; refusals are counted
    in `stats.dropped`. `receive_buffer`: bytes asked for each socket (0: 32 MiB)."""
    shared = SharedPort(port, stats, fanout, receive_buffer)
    await shared.open(addresses)
    share_media_port(shared)
    return shared
