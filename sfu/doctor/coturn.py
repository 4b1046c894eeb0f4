"""coturn config lines checked for an open relay: a relay keyroom's clients use has one legitimate
peer, the SFU (`auth/turn.py` writes such lines; an operator's own turnserver.conf may not be).
Pure over the lines."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from auth.keys import MIN_SECRET_BYTES
from sfu.doctor.finding import Finding, error, warning

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
ALL_IPV4 = (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("255.255.255.255"))
ALL_IPV6 = (
    ipaddress.ip_address("::"),
    ipaddress.ip_address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
)
TURN_CONFIG = "write the relay's peer rules from `keyroom turn-config`"


def parse_lines(lines: Iterable[str]) -> list[tuple[str, str]]:
    """(option, value) pairs of turnserver.conf lines: `name`, `name=value` or `--name value`."""
    options = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("--")
        name, sep, value = line.partition("=")
        if not sep:
            name, _, value = line.partition(" ")
        options.append((name.strip(), value.strip().strip('"')))
    return options


def _range(text: str) -> tuple[Address, Address] | None:
    """coturn's peer-ip forms: an address, `first-last`, or (newer coturn) a CIDR network."""
    try:
        if "/" in text:
            network = ipaddress.ip_network(text, strict=False)
            return network[0], network[-1]
        first, _, last = text.partition("-")
        start, end = ipaddress.ip_address(first), ipaddress.ip_address(last or first)
    except ValueError:
        return None
    return (start, end) if start.version == end.version else None


def _covers(
    ranges: Sequence[tuple[Address, Address] | None], span: tuple[Address, Address]
) -> bool:
    return any(
        r is not None
        and r[0].version == span[0].version
        and int(r[0]) <= int(span[0])
        and int(r[1]) >= int(span[1])
        for r in ranges
    )


def coturn_findings(
    what: str, lines: Iterable[str], sfu_ips: Sequence[str], *, dev: bool, secret: str | None
) -> list[Finding]:
    """Everything that lets a credential holder relay beyond the SFU, or breaks keyroom's
    credentials. `sfu_ips`: the SFU's bound and NAT addresses; `secret`: keyroom's turn.secret."""
    options = parse_lines(lines)
    names = {name for name, _ in options}
    values = {name: value for name, value in options}
    findings = _auth_findings(what, names, values, secret)
    findings += _peer_findings(what, options, sfu_ips)
    if "no-multicast-peers" not in names:
        findings.append(error(what, "no `no-multicast-peers`: relays to multicast", TURN_CONFIG))
    if "allow-loopback-peers" in names and not dev:
        findings.append(
            error(what, "`allow-loopback-peers`: relays to the relay host itself", TURN_CONFIG)
        )
    elif "no-loopback-peers" not in names and not dev:
        findings.append(
            error(what, "no `no-loopback-peers`: older coturn relays to loopback", TURN_CONFIG)
        )
    if "no-cli" not in names:
        findings.append(
            warning(what, "no `no-cli`: coturn's admin CLI listens on port 5766", "add `no-cli`")
        )
    return findings


def _auth_findings(
    what: str, names: set[str], values: dict[str, str], secret: str | None
) -> list[Finding]:
    if "no-auth" in names or not names & {"use-auth-secret", "lt-cred-mech"}:
        return [error(what, "no authentication: anyone may allocate relays", TURN_CONFIG)]
    if "use-auth-secret" not in names:
        return []
    configured = values.get("static-auth-secret", "")
    # Never show either secret.
    if secret is not None and configured != secret:
        return [
            error(
                what,
                "static-auth-secret differs from turn.secret: keyroom's credentials are refused",
                "use the same secret in both (`keyroom turn-config` prints it)",
            )
        ]
    # With keyroom's secret given, its length is turn.secret's finding; do not repeat it.
    if secret is None and len(configured.encode()) < MIN_SECRET_BYTES:
        return [
            warning(
                what,
                f"static-auth-secret is shorter than {MIN_SECRET_BYTES} bytes",
                "use a longer random secret in both coturn and turn.secret",
            )
        ]
    return []


def _peer_findings(
    what: str, options: list[tuple[str, str]], sfu_ips: Sequence[str]
) -> list[Finding]:
    denied = [_range(v) for n, v in options if n == "denied-peer-ip"]
    allowed = [v for n, v in options if n == "allowed-peer-ip"]
    sfu = {ipaddress.ip_address(ip) for ip in sfu_ips}
    findings = []
    if not _covers(denied, ALL_IPV4):
        findings.append(
            error(
                what, "no `denied-peer-ip=0.0.0.0-255.255.255.255`: an open IPv4 relay", TURN_CONFIG
            )
        )
    elif not allowed:
        findings.append(
            error(what, "no allowed-peer-ip: the relay cannot reach the SFU", TURN_CONFIG)
        )
    if not _covers(denied, ALL_IPV6):
        findings.append(warning(what, "IPv6 peers are not all denied", TURN_CONFIG))
    for value in allowed:
        span = _range(value)
        if span is None or span[0] != span[1] or span[0] not in sfu:
            findings.append(
                error(what, f"allowed-peer-ip={value} reaches more than the SFU", TURN_CONFIG)
            )
    return findings
