"""Which remote ICE candidates and connectivity checks the server's ICE agents accept (pure).

A remote candidate makes the server send STUN checks to that address: without limits a client
could point the SFU at link-local, multicast or internal hosts, or make it hold thousands of
candidate pairs. In a relay-only room the server accepts only the TURN relays' addresses, so a
client that ignores `ice_transport_policy: "relay"` cannot connect directly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

# RFC 6598 shared address space (carrier-grade NAT): not `is_private` in Python, yet internal.
_SHARED = ipaddress.ip_network("100.64.0.0/10")

# Reasons, as logged and counted.
TOO_MANY = "too_many_candidates"
DENIED = "denied_address"
NOT_RELAY = "not_a_relay"
# An mDNS (`.local`) or other host name instead of an address: resolving it would bypass the
# address policy (the resolved address is never checked) and let a client make the server
# query names of its choosing. Browsers still connect: their checks teach a peer-reflexive pair.
HOSTNAME = "hostname_candidate"


@dataclass(frozen=True)
class CandidatePolicy:
    max_remote_candidates: int = 32
    allow_private: bool = True
    # Loopback candidates only make sense when the server itself is on loopback.
    allow_loopback: bool = True
    relay_addresses: frozenset[str] = field(default_factory=frozenset)


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def denied_address(host: str, policy: CandidatePolicy) -> bool:
    """True for addresses no remote candidate may point the server at."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True  # not an address at all
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    if address.is_unspecified or address.is_multicast or address.is_link_local:
        return True
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address(
        "255.255.255.255"
    ):
        return True
    if address.is_loopback:
        return not policy.allow_loopback
    if address.is_private or address in _SHARED:
        return not policy.allow_private
    return False


def governing_setting(reason: str, host: str, policy: CandidatePolicy) -> str:
    """What an operator reads beside a refusal: the setting that decided it, or why none does."""
    if reason == TOO_MANY:
        return f"rtc.max_remote_candidates ({policy.max_remote_candidates}) reached"
    if reason == NOT_RELAY:
        return "relay-only room or role (limits.relay_only): only turn.relay_addresses may connect"
    if reason == HOSTNAME:
        return "host-name (mDNS) candidates are never resolved; the peer's checks still connect"
    try:
        address = ipaddress.ip_address(_canonical(host))
    except ValueError:
        return "not an IP address"
    if address.is_loopback:
        return "loopback candidates need a loopback address in rtc.ips"
    if (address.is_private or address in _SHARED) and not address.is_link_local:
        return "private address: set rtc.allow_private_candidates = true to accept it"
    return "link-local, multicast and unspecified addresses are never accepted"


def _canonical(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class RemoteCandidateGuard:
    """The decisions for one ICE connection; `relay_only` is asked each time (rooms change)."""

    def __init__(
        self,
        policy: CandidatePolicy,
        relay_only: Callable[[], bool],
        on_refused: Callable[[str, str], None],
    ) -> None:
        self.policy = policy
        self.relay_only = relay_only
        self.on_refused = on_refused  # (reason, address): called once per reason and address
        self.accepted = 0
        self.refused = 0
        self._reported: set[tuple[str, str]] = set()

    def admit_candidate(self, host: str) -> bool:
        """A signalled (SDP or trickle) remote candidate; counts it when admitted."""
        reason = None
        if not is_address(host):
            reason = HOSTNAME
        elif self.relay_only() and _canonical(host) not in self.policy.relay_addresses:
            reason = NOT_RELAY
        elif denied_address(host, self.policy):
            reason = DENIED
        elif self.accepted >= self.policy.max_remote_candidates:
            reason = TOO_MANY
        if reason is None:
            self.accepted += 1
            return True
        self._refuse(reason, "*" if reason == TOO_MANY else host)
        return False

    def admit_check(self, host: str) -> bool:
        """An incoming connectivity check from `host` (it may teach a peer-reflexive candidate)."""
        if self.relay_only() and _canonical(host) not in self.policy.relay_addresses:
            self._refuse(NOT_RELAY, host)
            return False
        if denied_address(host, self.policy):
            self._refuse(DENIED, host)
            return False
        return True

    def _refuse(self, reason: str, host: str) -> None:
        self.refused += 1
        key = (reason, host)
        # Once per reason and address: a flood of candidates must not become a flood of logs.
        if key not in self._reported and len(self._reported) < 16:
            self._reported.add(key)
            self.on_refused(reason, host)
