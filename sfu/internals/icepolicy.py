"""ICE policy on each connection: which remote candidates and checks are taken, and which
sources' datagrams reach DTLS and SRTP."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import aioice
import aioice.ice
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport

from sfu.candidates import RemoteCandidateGuard
from sfu.internals.sockets import wrap_host_sockets
from sfu.stats import DropReason


def guard_remote_candidates(pc: RTCPeerConnection, guard: RemoteCandidateGuard) -> None:
    """Let `guard` decide which remote candidates and incoming checks each ICE agent of `pc` takes.

    aiortc creates the aioice Connection when a description is applied, so the filter is put on
    every DTLS transport as it is created. Signalled candidates (SDP and trickle alike) pass
    through `Connection.add_remote_candidate`, before any mDNS lookup, and every incoming check
    through `request_received`, before aioice answers or learns a peer-reflexive candidate.
    """
    _on_each_connection(pc, lambda connection: _guard_connection(connection, guard))


def _guard_connection(connection: aioice.ice.Connection, guard: RemoteCandidateGuard) -> None:
    add = connection.add_remote_candidate
    received = connection.request_received

    async def add_remote_candidate(candidate: aioice.Candidate | None) -> None:
        if candidate is None or guard.admit_candidate(candidate.host):
            await add(candidate)

    def request_received(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        if guard.admit_check(addr[0]):
            received(message, addr, protocol)

    connection.add_remote_candidate = add_remote_candidate  # type: ignore[method-assign, assignment]
    connection.request_received = request_received  # type: ignore[method-assign]


class MediaSourceGuard:
    """Drops datagrams that are not STUN from addresses that have not completed ICE here.

    aioice hands every datagram it cannot parse as STUN to the DTLS transport's queue, whatever
    its source: a stranger's forged ClientHellos during the handshake fail the connection
    (tests/test_media_sources.py), and its junk reaches OpenSSL and SRTP. STUN itself
    passes (aioice authenticates checks; they are how an address gets verified). An address is
    verified on a socket once a connectivity check between them succeeded in either direction as
    aioice sees it: a nominated pair, or a pair of the check list in state SUCCEEDED. The peer's
    first DTLS flight only follows ICE success on its side, which needs our answer to its check
    and, for the nominated pair, our own check's success (RFC 8445 7.3.1.5), so it is not lost.
    """

    __slots__ = ("_connection", "_drops")

    def __init__(self, connection: aioice.ice.Connection, drops: Counter[str]) -> None:
        self._connection = connection
        self._drops = drops

    def install(self) -> int:
        """Wrap every host socket's callback gathered so far; returns how many.

        The server gathers host candidates only (no STUN or TURN server), so these are all its
        sockets; a TURN client's own protocol is left alone (its relay filters peers itself).
        """
        return wrap_host_sockets(
            self._connection,
            MediaSourceGuard,
            lambda protocol, stock: partial(self._datagram_received, protocol, stock),
        )

    def verified(self, protocol: aioice.ice.StunProtocol, addr: tuple[Any, ...]) -> bool:
        return verified_source(self._connection, protocol, addr)

    def _datagram_received(
        self,
        protocol: aioice.ice.StunProtocol,
        stock: Callable[[bytes, tuple[Any, ...]], None],
        data: bytes,
        addr: tuple[Any, ...],
    ) -> None:
        # RFC 7983 demultiplexing: a first byte of 0-3 is STUN.
        if (data and data[0] < 4) or self.verified(protocol, addr):
            stock(data, addr)
        else:
            self._drops[DropReason.FOREIGN_SOURCE.value] += 1


def verified_source(
    connection: aioice.ice.Connection, protocol: aioice.ice.StunProtocol, addr: tuple[Any, ...]
) -> bool:
    """Whether `addr` completed ICE with `connection` on `protocol`'s socket (see the guard)."""
    source = addr[:2]
    for pair in connection._nominated.values():
        if pair.protocol is protocol and pair.remote_addr[:2] == source:
            return True
    succeeded = aioice.ice.CandidatePair.State.SUCCEEDED
    return any(
        pair.state == succeeded and pair.protocol is protocol and pair.remote_addr == source
        for pair in connection._check_list
    )


def guard_media_sources(pc: RTCPeerConnection, drops: Counter[str]) -> None:
    """Put a `MediaSourceGuard` on every ICE connection of `pc`, counting drops in `drops`.

    aiortc creates the aioice Connection with each DTLS transport and gathers (binds the sockets)
    in `setLocalDescription`: the guard goes on the sockets as soon as gathering returns, before
    the description carrying their ports is sent to anyone.
    """

    def guard_after_gathering(connection: aioice.ice.Connection) -> None:
        guard = MediaSourceGuard(connection, drops)
        gather = connection.gather_candidates

        async def gather_then_guard() -> None:
            await gather()
            guard.install()

        connection.gather_candidates = gather_then_guard  # type: ignore[method-assign]

    _on_each_connection(pc, guard_after_gathering)


def _on_each_connection(
    pc: RTCPeerConnection, setup: Callable[[aioice.ice.Connection], None]
) -> None:
    """Run `setup` on the ICE connection of every DTLS transport `pc` creates from now on."""
    create = pc._RTCPeerConnection__createDtlsTransport  # type: ignore[attr-defined]

    def create_and_set_up() -> RTCDtlsTransport:
        dtls: RTCDtlsTransport = create()
        setup(dtls.transport._connection)
        return dtls

    pc._RTCPeerConnection__createDtlsTransport = create_and_set_up  # type: ignore[attr-defined]
