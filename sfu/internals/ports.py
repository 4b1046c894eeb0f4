"""Host sockets bound in the configured media port range (aioice binds port 0)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Awaitable, Callable

import aioice
import aioice.ice
import aioice.turn

log = logging.getLogger("keyroom.internals")


def port_order(port_min: int, port_max: int, start: int) -> list[int]:
    """The ports of `port_min..port_max` to try, from `start` on and around (pure).

    A random start spreads connections over the range, so a port just released (its old peer
    may still send to it) is not the first one taken again."""
    span = port_max - port_min + 1
    return [port_min + (start - port_min + i) % span for i in range(span)]


def _bind_in_range(address: str, port_min: int, port_max: int) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for port in port_order(port_min, port_max, random.randint(port_min, port_max)):
        try:
            sock.bind((address, port))
            return sock
        except OSError:
            continue
    sock.close()
    raise OSError(f"no free UDP port in {port_min}..{port_max}")


HostGatherer = Callable[
    [aioice.ice.Connection, int, str], Awaitable[aioice.ice.StunProtocol | None]
]


def host_candidate(component: int, host: str, port: int) -> aioice.Candidate:
    """The host candidate aioice would make for a socket bound on host:port."""
    return aioice.Candidate(
        foundation=aioice.ice.candidate_foundation("host", "udp", host),  # type: ignore[attr-defined]
        component=component,
        transport="udp",
        priority=aioice.ice.candidate_priority(component, "host"),  # type: ignore[attr-defined]
        host=host,
        port=port,
        type="host",
    )


def replace_host_gathering(gather: HostGatherer) -> None:
    """Make every host-only ICE agent of this process gather each address's protocol with
    `gather(connection, component, address)` (None: no candidate there); an agent with a STUN
    or TURN server keeps aioice's gathering. Process-wide, like `sfu.iceaddr`."""
    stock = aioice.ice.Connection.get_component_candidates

    async def get_component_candidates(
        self: aioice.ice.Connection, component: int, addresses: list[str], timeout: int = 5
    ) -> list[aioice.Candidate]:
        if self.stun_server or self.turn_server:
            return await stock(self, component, addresses, timeout)
        candidates = []
        for address in addresses:
            protocol = await gather(self, component, address)
            if protocol is not None:
                self._protocols.append(protocol)
                candidates.append(protocol.local_candidate)
        return candidates

    aioice.ice.Connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]


def bind_media_ports(port_min: int, port_max: int) -> None:
    """Make every ICE agent of this process bind its host sockets in `port_min..port_max`.

    aioice binds port 0 (aiortc#487: no range option). The server gathers host candidates only
    (no STUN or TURN server: `new_peer_connection`), which this replaces with the same steps
    on a socket bound in the range.
    """

    async def gather(
        connection: aioice.ice.Connection, component: int, address: str
    ) -> aioice.ice.StunProtocol | None:
        try:
            sock = _bind_in_range(address, port_min, port_max)
        except OSError as exc:
            # As aioice does for an address it cannot bind: gather on the others.
            log.warning("media port range: %s on %s", exc, address)
            return None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
        _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: aioice.ice.StunProtocol(connection), sock=sock
        )
        host, port = sock.getsockname()[:2]
        protocol.local_candidate = host_candidate(component, host, port)
        return protocol

    replace_host_gathering(gather)
