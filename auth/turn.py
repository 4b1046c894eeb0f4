"""coturn "TURN REST API" credentials (use-auth-secret), and the coturn lines that match them.

The server and coturn share one secret; nothing is stored per user. A credential is valid until
the Unix time at the start of its username, so a leaked one is useless after `ttl` seconds
(draft-uberti-behave-turn-rest-00, coturn's `use-auth-secret`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TurnCredential:
    username: str  # "<expiry unix time>:<identity>"
    password: str  # base64(HMAC-SHA1(secret, username))
    expires_at: int


def turn_password(secret: str, username: str) -> str:
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def turn_credential(secret: str, identity: str, *, now: float, ttl: float) -> TurnCredential:
    """A credential for `identity` that coturn accepts until `now + ttl` (rounded up)."""
    if not ttl > 0:
        raise ValueError("ttl must be positive")
    expires_at = math.ceil(now + ttl)
    username = f"{expires_at}:{identity}"
    return TurnCredential(username, turn_password(secret, username), expires_at)


def credential_valid(secret: str, username: str, password: str, *, now: float) -> bool:
    """What coturn checks: the password matches and the expiry in the username is not past."""
    expiry, sep, _ = username.partition(":")
    if not sep or not expiry.isdigit():
        return False
    return int(expiry) >= now and hmac.compare_digest(password, turn_password(secret, username))


def ice_servers(
    urls: tuple[str, ...], secret: str | None, identity: str, *, now: float, ttl: float
) -> list[dict[str, Any]]:
    """`joined.ice_servers`: one entry with every configured URL, or none without TURN."""
    if not urls or secret is None:
        return []
    credential = turn_credential(secret, identity, now=now, ttl=ttl)
    return [
        {"urls": list(urls), "username": credential.username, "credential": credential.password}
    ]


# A relay for keyroom's clients has one legitimate peer: the SFU. Everything else is denied, so
# a credential holder cannot use the relay as an open proxy to the internet or the LAN; the
# IPv4-mapped block is listed too, as ::ffff:127.0.0.1 once bypassed IPv4 rules (CVE-2026-27624).
DENIED_PEER_RANGES = (
    "0.0.0.0-255.255.255.255",
    "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "::ffff:0.0.0.0-::ffff:255.255.255.255",
)


def turn_config_lines(secret: str, realm: str, sfu_ips: Sequence[str], dev: bool) -> list[str]:
    """coturn lines for keyroom's [turn]: REST credentials, and relays to the SFU only."""
    lines = [
        "use-auth-secret",
        f"static-auth-secret={secret}",
        f"realm={realm}",
        "fingerprint",
        "no-cli",
        "no-multicast-peers",
        # A dev SFU listens on loopback, so the relay must reach loopback; nothing else does.
        "allow-loopback-peers" if dev else "no-loopback-peers",
    ]
    lines += [f"denied-peer-ip={r}" for r in DENIED_PEER_RANGES]
    # coturn lets allowed-peer-ip win over a denied range: the SFU's addresses, and only them.
    lines += [f"allowed-peer-ip={ip}" for ip in dict.fromkeys(sfu_ips)]
    return lines
