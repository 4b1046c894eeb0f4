"""Start-up rules across options (finalize): dev-mode defaults, and configurations refused
because they would run unsafely or could not work."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from auth.grants import VideoGrant
from sfu.config.checks import ConfigError, boolean, expected, show
from sfu.config.sections import (
    AuthConfig,
    Config,
    LimitsConfig,
    RtcConfig,
    ServerConfig,
    TurnConfig,
    WebhooksConfig,
    room_limits,
)

DEV_KEY_ID = "devkey"
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598: not `is_private`, yet internal
NO_KEYS_MESSAGE = "no signing keys: use --key KEY=SECRET, KEYROOM_KEYS or [auth] keys"
METRICS_TOKEN_MESSAGE = (
    "metrics.bearer_token: required without --dev (/metrics shows every room's load and"
    " traffic to whoever reaches the port); set [metrics] bearer_token (16 or more printable"
    " characters) and give it to Prometheus as its bearer token"
)


def finalize(config: Config) -> Config:
    """Apply the dev-mode defaults and refuse configurations that would run unsafely."""
    server, rtc, auth = config.server, config.rtc, config.auth
    _check_tls(server)
    if server.dev:
        rtc, auth = _dev_defaults(server, rtc, auth)
    else:
        _check_public(server, rtc, auth)
    _check_ports(rtc)
    if rtc.allow_private_candidates is None:
        rtc = replace(rtc, allow_private_candidates=server.dev or serves_private_network(rtc))
    _check_roles(config.roles)
    relay_roles = any(role.get("relay_only") for role in config.roles.values())
    _check_turn(
        config.turn,
        [config.limits, *(room_limits(config, n) for n in config.rooms)],
        relay_roles=relay_roles,
    )
    _check_webhooks(config.webhooks, auth)
    if not server.dev and config.metrics.bearer_token is None:
        # Last: a config wrong in other ways is told about those first.
        raise ConfigError(METRICS_TOKEN_MESSAGE)
    return replace(config, server=server, rtc=rtc, auth=auth)


def serves_private_network(rtc: RtcConfig) -> bool:
    """A server whose advertised media addresses are private serves a private network, whose
    clients have private addresses too. Behind a 1:1 NAT (`public_ips`) it serves the outside."""
    for ip in rtc.public_ips or rtc.ips:
        address = ipaddress.ip_address(ip)
        if not address.is_loopback and (address.is_private or address in _SHARED):
            return True
    return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_tls(server: ServerConfig) -> None:
    if (server.tls_cert is None) != (server.tls_key is None):
        raise ConfigError("server.tls_cert and server.tls_key: set both or neither")
    for name, path in (("server.tls_cert", server.tls_cert), ("server.tls_key", server.tls_key)):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"{name}: file not found: {path}")


def _dev_defaults(
    server: ServerConfig, rtc: RtcConfig, auth: AuthConfig
) -> tuple[RtcConfig, AuthConfig]:
    """--dev serves loopback only: media on 127.0.0.1 and a fresh key unless given others."""
    if not _is_loopback(server.host):
        raise ConfigError(
            f"server.host: --dev serves loopback only, got {show(server.host)};"
            " use 127.0.0.1, or drop --dev and configure TLS"
        )
    outside = [ip for ip in rtc.ips if not ipaddress.ip_address(ip).is_loopback]
    if outside:
        raise ConfigError(f"rtc.ips: --dev serves loopback only, got {show(outside)}")
    if not rtc.ips:
        rtc = replace(rtc, ips=("127.0.0.1",))
    if not auth.keys:
        key = {DEV_KEY_ID: secrets.token_urlsafe(32)}
        auth = replace(auth, keys=key, generated_dev_key=True, key_sources={DEV_KEY_ID: "--dev"})
    return rtc, auth


def _check_public(server: ServerConfig, rtc: RtcConfig, auth: AuthConfig) -> None:
    """Without --dev: keys, a media address and TLS (or a proxy's) are required."""
    if not auth.keys:
        raise ConfigError(NO_KEYS_MESSAGE)
    if not rtc.ips:
        raise ConfigError(
            "rtc.ips: no media address: use --rtc-ip IP (repeatable) or [rtc] ips"
            " with this host's address that peers can reach"
        )
    if not _is_loopback(server.host) and server.tls_cert is None and not server.insecure_plaintext:
        raise ConfigError(
            f"server.host: {show(server.host)} is not loopback and TLS is not configured;"
            " set [server] tls_cert and tls_key, or, behind a TLS-terminating proxy,"
            " --insecure-plaintext (or use --dev on 127.0.0.1)"
        )


def _check_ports(rtc: RtcConfig) -> None:
    if (rtc.port_min == 0) != (rtc.port_max == 0) or rtc.port_min > rtc.port_max:
        raise ConfigError(
            f"rtc.port_min and rtc.port_max: set both, port_min <= port_max (each peer"
            f" connection takes one port per rtc.ips address), got {rtc.port_min}..{rtc.port_max}"
        )
    if rtc.udp_port and rtc.port_min:
        raise ConfigError(
            f"rtc.udp_port: one shared port ({rtc.udp_port}) or a port range"
            f" ({rtc.port_min}..{rtc.port_max}), not both"
        )
    if rtc.fanout_workers and not rtc.udp_port:
        raise ConfigError(
            "rtc.fanout_workers: needs rtc.udp_port (workers send from the one shared port)"
        )
    if rtc.public_ips and len(rtc.public_ips) != len(rtc.ips):
        raise ConfigError(
            f"rtc.public_ips: give one public address per rtc.ips entry, in order"
            f" ({len(rtc.ips)} ips, {len(rtc.public_ips)} public_ips)"
        )


def _check_turn(turn: TurnConfig, limits: list[LimitsConfig], *, relay_roles: bool) -> None:
    if bool(turn.urls) != (turn.secret is not None):
        raise ConfigError("turn.urls and turn.secret: set both or neither")
    if (relay_roles or any(room.relay_only for room in limits)) and not turn.relay_addresses:
        raise ConfigError(
            "turn.relay_addresses: required with relay_only (limits or a role): the TURN relays'"
            " addresses,"
            " the only sources of connectivity checks a relay-only room accepts"
        )


def _check_webhooks(webhooks: WebhooksConfig, auth: AuthConfig) -> None:
    if not webhooks.urls:
        return
    if webhooks.key is None:
        raise ConfigError("webhooks.key: required with webhooks.urls: the id of the signing key")
    if webhooks.key not in auth.keys:
        origin = set(auth.key_sources.values())
        where = f"; the keys in use came from {origin.pop()} alone" if len(origin) == 1 else ""
        raise ConfigError(
            f"webhooks.key: {show(webhooks.key)} is not an HS256 key of the key table"
            f" ([auth] keys, --key or KEYROOM_KEYS: the last one given replaces the others{where})"
        )


def _check_roles(roles: Mapping[str, Any]) -> None:
    for name, grant in roles.items():
        if not isinstance(grant, dict):
            raise expected(f"roles.{name}", "a table of grants (canPublish = false, ...)", grant)
        try:
            VideoGrant.from_claim(grant)
        except ValueError as e:
            raise ConfigError(f"roles.{name}: {e}") from None
        boolean(f"roles.{name}.relay_only", grant.get("relay_only", False))
        boolean(f"roles.{name}.require_bound_tokens", grant.get("require_bound_tokens", False))
