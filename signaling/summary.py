"""What the server says when it starts: one line per thing an operator configured, so a first
deployment can be checked from its log alone (no secret is ever shown, only key ids)."""

from __future__ import annotations

from dataclasses import fields

from sfu.config import Config, LimitsConfig, NodeConfig
from signaling.webhooks import target_name


def startup_summary(config: Config) -> list[str]:
    """The lines, in the order an operator checks them: where, media, keys, records, limits."""
    server = config.server
    scheme = "https" if server.tls_cert else "http"
    tls = f"TLS certificate {server.tls_cert}" if server.tls_cert else "no TLS"
    if server.tls_cert is None and server.insecure_plaintext:
        tls += " (--insecure-plaintext: a TLS-terminating proxy in front)"
    proxies = ", ".join(server.trusted_proxies) or "none"
    lines = [
        f"signaling: {scheme}://{server.host}:{server.port} ({tls}; trusted proxies: {proxies})"
    ]
    return lines + _media(config) + _keys(config) + _records(config) + _limits(config)


def _media(config: Config) -> list[str]:
    rtc = config.rtc
    ports = f"UDP ports {rtc.port_min}-{rtc.port_max}" if rtc.port_min else "UDP ports any"
    addresses = ", ".join(
        f"{ip} (advertised as {public})" if public else ip
        for ip, public in zip(rtc.ips, rtc.public_ips or [None] * len(rtc.ips), strict=True)
    )
    private = "accepted" if rtc.allow_private_candidates else "refused"
    lines = [
        f"media on {addresses}, {ports}; private client addresses {private}"
        " (rtc.allow_private_candidates)"
    ]
    turn = config.turn
    if turn.urls:
        lines.append(f"TURN: {', '.join(turn.urls)} (credentials valid {turn.ttl:g} s)")
    return lines


def _keys(config: Config) -> list[str]:
    auth = config.auth
    keys = ", ".join(f"{k} ({auth.key_sources.get(k, 'config')})" for k in auth.keys)
    lines = [f"signing keys: {keys or 'none'}"]
    if auth.public_keys:
        lines.append(f"public keys: {', '.join(auth.public_keys)} (config file)")
    lines.append(f"tokens: at most {auth.max_token_ttl:g} s, leeway {auth.leeway:g} s")
    return lines


def _records(config: Config) -> list[str]:
    audit = config.audit
    lines = [
        f"audit log: {audit.path}" if audit.path else "audit log: none (keyroom.audit logger only)"
    ]
    hooks = config.webhooks
    targets = ", ".join(target_name(i, url) for i, url in enumerate(hooks.urls))
    lines.append(f"webhooks: {targets} (key {hooks.key})" if targets else "webhooks: none")
    metrics = config.metrics.bearer_token
    lines.append("/metrics: bearer token required" if metrics else "/metrics: open (no token)")
    return lines


def _changed(current: object, default: object) -> str:
    names = [f.name for f in fields(default)]  # type: ignore[arg-type]
    parts = [
        f"{n}={getattr(current, n)!r}" for n in names if getattr(current, n) != getattr(default, n)
    ]
    return ", ".join(parts) or "defaults"


def _limits(config: Config) -> list[str]:
    lines = [
        f"limits: {_changed(config.limits, LimitsConfig())}",
        f"node limits: {_changed(config.node, NodeConfig())}",
    ]
    if config.rooms:
        lines.append(f"room overrides: {', '.join(sorted(config.rooms))}")
    return lines
