"""Pure checks of the configuration's options; what they need from the machine (which addresses
bind here, file modes) is gathered by `run` and passed in."""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Mapping
from urllib.parse import urlsplit

from auth.keys import MIN_SECRET_BYTES, KeyTable
from auth.turn import turn_config_lines
from sfu.config import Config, RtcConfig, ServerConfig
from sfu.config.checks import GENERATE_SECRET
from sfu.doctor.coturn import coturn_findings
from sfu.doctor.finding import Finding, error, info, warning

MAX_SANE_TOKEN_TTL = 24 * 3600.0  # a token cannot be revoked before exp outside single-use rooms
MIN_DISTINCT_SECRET_CHARS = 10  # 32 bytes drawn from fewer symbols is a pattern, not a secret


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mode_findings(what: str, mode: int, *, secret: bool) -> list[Finding]:
    """A directory or file others may write to, or a secret others may read."""
    if mode & stat.S_IWOTH:
        return [
            error(what, f"writable by every user (mode {stat.filemode(mode)})", f"chmod o-w {what}")
        ]
    if secret and mode & stat.S_IROTH:
        return [
            error(
                what,
                f"a secret readable by every user (mode {stat.filemode(mode)})",
                f"chmod 600 {what}",
            )
        ]
    return []


def dev_findings(server: ServerConfig) -> list[Finding]:
    if not server.dev:
        return []
    return [
        warning(
            "server.dev",
            "dev mode: plaintext, private candidates and a generated key",
            "remove `dev` for a deployment",
        )
    ]


def tls_findings(server: ServerConfig) -> list[Finding]:
    """Without certificate files (those are checked by `certs`): who provides TLS, if anyone."""
    if server.tls_cert is not None:
        return []
    if server.insecure_plaintext:
        return [
            warning(
                "server.insecure_plaintext",
                "plain HTTP: TLS must be terminated by a proxy in front",
                "check the proxy's certificate with --url https://...",
            )
        ]
    if _loopback(server.host):
        return [info("server.tls_cert", "not set: plain HTTP, served on loopback only")]
    return []  # finalize() refuses this and run reports it


def key_findings(auth_keys: Mapping[str, str], public_keys: Mapping[str, str]) -> list[Finding]:
    """Every key loads as the server loads it; HS256 secrets are not patterns."""
    findings = []
    table = KeyTable()
    for key_id, secret in auth_keys.items():
        try:
            table.add_secret(key_id, secret)
        except ValueError as e:
            findings.append(
                error(f"auth.keys.{key_id}", str(e), "give each key its own id and a long secret")
            )
            continue
        if len(set(secret)) < MIN_DISTINCT_SECRET_CHARS:
            findings.append(
                error(
                    f"auth.keys.{key_id}",
                    f"the secret uses fewer than {MIN_DISTINCT_SECRET_CHARS} distinct characters",
                    f"generate one with: {GENERATE_SECRET}",
                )
            )
    for key_id, pem in public_keys.items():
        try:
            table.add_public_key(key_id, pem)
        except ValueError as e:
            findings.append(
                error(
                    f"auth.public_keys.{key_id}",
                    str(e),
                    "give each key its own id, and EC P-256 or Ed25519 PEM public keys",
                )
            )
    return findings


def token_findings(max_token_ttl: float, leeway: float) -> list[Finding]:
    findings = []
    if max_token_ttl > MAX_SANE_TOKEN_TTL:
        findings.append(
            warning(
                "auth.max_token_ttl",
                f"tokens may live {max_token_ttl / 3600:g} h: a leaked one works that long",
                "lower it to a few hours; clients refresh their token",
            )
        )
    if leeway == 0:
        findings.append(
            warning(
                "auth.leeway", "0 s: a client clock a second off is refused", "keep a few seconds"
            )
        )
    return findings


def origin_findings(server: ServerConfig) -> list[Finding]:
    findings = []
    for origin in server.allowed_origins:
        host = urlsplit(origin).hostname or ""
        if "*" in origin:
            findings.append(
                error(
                    "server.allowed_origins",
                    f"{origin}: origins are compared exactly, a wildcard is no pattern",
                    "list each origin that serves the page, like https://app.example.com",
                )
            )
        elif origin.startswith("http:") and not _loopback(host) and not server.dev:
            findings.append(
                warning(
                    "server.allowed_origins",
                    f"{origin}: a plain-HTTP page can be rewritten in transit and then join",
                    "serve the page over https",
                )
            )
    return findings


def proxy_findings(server: ServerConfig) -> list[Finding]:
    return [
        error(
            "server.trusted_proxies",
            f"{network} trusts every address's X-Forwarded-For: anyone picks their client IP",
            "list only your proxies' addresses",
        )
        for network in server.trusted_proxies
        if ipaddress.ip_network(network).prefixlen == 0
    ]


def address_findings(rtc: RtcConfig, dev: bool, bindable: Mapping[str, bool]) -> list[Finding]:
    """`rtc.ips` bind here; what is advertised (public_ips, else ips) is public outside dev.
    `bindable`: each rtc.ips address, and whether this machine can bind it."""
    findings = [
        error(
            "rtc.ips",
            f"{ip} is not an address of this machine",
            "list this host's own addresses; behind a 1:1 NAT put the public one in rtc.public_ips",
        )
        for ip in rtc.ips
        if not bindable.get(ip, False)
    ]
    if dev:
        return findings
    where = "rtc.public_ips" if rtc.public_ips else "rtc.ips"
    for ip in rtc.public_ips or rtc.ips:
        address = ipaddress.ip_address(ip)
        if address.is_loopback:
            findings.append(
                error(
                    where,
                    f"{ip} is advertised: a loopback address no peer can reach",
                    "advertise a public address",
                )
            )
        elif not address.is_global:
            findings.append(
                warning(
                    where,
                    f"{ip} is advertised: a private address, reachable from its own network only",
                    "behind a 1:1 NAT, put the public address in rtc.public_ips",
                )
            )
    return findings


def sfu_addresses(config: Config, dev: bool) -> tuple[str, ...]:
    """The SFU as a TURN relay reaches it: what `keyroom turn-config` allows (sfu/cli.py)."""
    return (*config.rtc.ips, *config.rtc.public_ips) or (("127.0.0.1",) if dev else ())


def turn_findings(config: Config) -> list[Finding]:
    turn, dev = config.turn, config.server.dev
    if turn.secret is None:
        return []
    findings = []
    if len(turn.secret.encode()) < MIN_SECRET_BYTES:
        findings.append(
            warning(
                "turn.secret",
                f"shorter than {MIN_SECRET_BYTES} bytes: guessing it forges TURN credentials",
                f"generate one with: {GENERATE_SECRET}",
            )
        )
    sfu = sfu_addresses(config, dev)
    lines = turn_config_lines(turn.secret, turn.realm, sfu, dev)
    findings += coturn_findings("keyroom turn-config", lines, sfu, dev=dev, secret=turn.secret)
    return findings


def metrics_findings(config: Config) -> list[Finding]:
    if config.metrics.bearer_token is not None or config.server.dev:
        return []
    return [
        error(
            "metrics.bearer_token",
            "not set: /metrics is open to anyone who can reach the port",
            f"set [metrics] bearer_token (generate one with: {GENERATE_SECRET})",
        )
    ]


def limits_findings(config: Config) -> list[Finding]:
    node = config.node
    if node.max_rooms or node.max_participants or node.max_tracks or node.max_bitrate_in:
        return []
    return [
        warning(
            "node",
            "no node limit (all 0): token holders can load this server until it stalls",
            "set [node] max_participants and max_bitrate_in to what this host carries",
        )
    ]


def config_findings(config: Config, bindable: Mapping[str, bool]) -> list[Finding]:
    """Every pure check of the options (files and the audit log are checked by `run`)."""
    server, auth = config.server, config.auth
    return [
        *dev_findings(server),
        *tls_findings(server),
        *key_findings(auth.keys, auth.public_keys),
        *token_findings(auth.max_token_ttl, auth.leeway),
        *origin_findings(server),
        *proxy_findings(server),
        *address_findings(config.rtc, server.dev, bindable),
        *turn_findings(config),
        *metrics_findings(config),
        *limits_findings(config),
    ]
