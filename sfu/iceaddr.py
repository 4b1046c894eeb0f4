"""Restrict the host addresses aioice gathers candidates on.

aioice offers every interface address (and never 127.0.0.1); a server must bind and advertise only
its configured addresses, and loopback tests need 127.0.0.1. aioice looks the list up through the
module attribute at gather time, so replacing it is process-wide.
"""

from __future__ import annotations

import ipaddress
import socket

import aioice.ice

from sfu.config import ConfigError

# aioice's own list (every interface address): what a restriction hides, kept so tests can show
# that an address they add would otherwise be offered.
stock_get_host_addresses = aioice.ice.get_host_addresses


def restrict_host_addresses(addresses: list[str]) -> None:
    """Make every ICE agent of this process gather on exactly `addresses`."""
    for address in addresses:
        ipaddress.ip_address(address)
    allowed = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            a
            for a in allowed
            if (use_ipv4 and ipaddress.ip_address(a).version == 4)
            or (use_ipv6 and ipaddress.ip_address(a).version == 6)
        ]

    aioice.ice.get_host_addresses = get_host_addresses


def check_local_addresses(ips: tuple[str, ...]) -> None:
    """Refuse `rtc.ips` entries this host cannot bind: media bound nowhere would leave every
    connection `new` with nothing logged. Binds port 0 of each address once, then lets it go."""
    for ip in ips:
        family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((ip, 0))
        except OSError as exc:
            raise ConfigError(
                f"rtc.ips: {ip} is not an address of this host ({exc.strerror}); list this"
                " host's own addresses in rtc.ips, and behind a 1:1 NAT put the public address"
                " in rtc.public_ips (one per rtc.ips entry, in order)"
            ) from None
