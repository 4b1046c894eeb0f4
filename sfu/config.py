"""Server configuration: TOML file < environment < command line, validated into frozen dataclasses.

Every time value is in seconds (float) and every size in bytes. Each option is checked where its
dataclass is built, so a config built in code is held to the same rules as one read from a file,
and every error names the option as it is written in the file (`section.key`).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import secrets
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import urlsplit

DEV_KEY_ID = "devkey"
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key must be at least as long as the hash output
MAX_LEEWAY = 60.0
MIN_TURN_SECRET_BYTES = 16  # HMAC-SHA1 key: guessing it forges TURN credentials for anyone
MIN_BEARER_TOKEN_CHARS = 16
KNOWN_CODECS = frozenset({"opus", "g722", "pcmu", "pcma", "vp8", "h264"})  # what aiortc negotiates
LOG_LEVELS = ("debug", "info", "warning", "error")
DUPLICATE_IDENTITY_POLICIES = ("reject", "replace")
NO_KEYS_MESSAGE = "no signing keys: use --key KEY=SECRET, KEYROOM_KEYS or [auth] keys"


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the option, never a secret."""


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _expected(name: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"{name}: expected {what}, got {_show(value)}")


# Checks: each takes the option's dotted name and its raw value and returns the normalised value.
Check = Callable[[str, Any], Any]


def _integer(minimum: int, what: str, maximum: int | None = None) -> Check:
    def check(name: str, value: Any) -> int:
        # bool is an int subclass; `true` where a number belongs is a mistake, not 1.
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            raise _expected(name, what, value)
        return value

    return check


def _number(
    what: str, minimum: float = 0.0, *, allow_minimum: bool = True, maximum: float = math.inf
) -> Check:
    def check(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _expected(name, what, value)
        number = float(value)
        if (
            not math.isfinite(number)
            or number < minimum
            or (number == minimum and not allow_minimum)
            or number > maximum
        ):
            raise _expected(name, what, value)
        return number

    return check


_non_negative_int = _integer(0, "a non-negative integer")
_positive_int = _integer(1, "a positive integer")
_port = _integer(0, "a port number from 0 to 65535", 65535)
_non_negative_seconds = _number("a non-negative number of seconds")
_positive_seconds = _number("a positive number of seconds", allow_minimum=False)
_leeway = _number(f"a number of seconds from 0 to {MAX_LEEWAY:g}", maximum=MAX_LEEWAY)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _expected(name, "true or false", value)
    return value


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _expected(name, "a non-empty string", value)
    return value


def _optional_bool(name: str, value: Any) -> bool | None:
    return None if value is None else _bool(name, value)


def _network_list(name: str, value: Any) -> tuple[str, ...]:
    networks = []
    for item in _string_list(name, value):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise _expected(name, "IP addresses or networks like 10.0.0.0/8", item) from None
    return _unique(networks)


def _turn_urls(name: str, value: Any) -> tuple[str, ...]:
    what = "TURN/STUN URLs like turn:turn.example.com:3478?transport=udp or turns:host:5349"
    for item in _string_list(name, value):
        scheme, sep, rest = item.partition(":")
        host = rest.partition("?")[0].rpartition(":")[0] or rest.partition("?")[0]
        query = rest.partition("?")[2]
        if (
            not sep
            or scheme not in ("turn", "turns", "stun")
            or not host
            or "/" in rest
            or query not in ("", "transport=udp", "transport=tcp")
            or (scheme == "turns" and query == "transport=udp")
        ):
            raise _expected(name, what, item)
    return _unique(list(value))


def _optional_secret(name: str, value: Any) -> str | None:
    # Never show the value: it is a secret.
    if value is None:
        return None
    if not isinstance(value, str) or len(value.encode()) < MIN_TURN_SECRET_BYTES:
        raise ConfigError(
            f"{name}: expected a string of at least {MIN_TURN_SECRET_BYTES} bytes;"
            " generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return value


def _optional_path(name: str, value: Any) -> str | None:
    return None if value is None else _text(name, value)


def _choice(*options: str) -> Check:
    def check(name: str, value: Any) -> str:
        if value not in options:
            raise _expected(name, "one of " + ", ".join(f'"{o}"' for o in options), value)
        return value

    return check


def _string_list(name: str, value: Any) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _expected(name, "a list of strings", value)
    return list(value)


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _ip_list(name: str, value: Any) -> tuple[str, ...]:
    addresses = []
    for item in _string_list(name, value):
        try:
            address = ipaddress.ip_address(item)
        except ValueError:
            raise _expected(name, "IP addresses", item) from None
        # An address that cannot be a candidate (0.0.0.0, multicast) must not be advertised.
        if address.is_unspecified or address.is_multicast:
            raise _expected(name, "unicast IP addresses of this host", item)
        addresses.append(str(address))
    return _unique(addresses)


def _origin_list(name: str, value: Any) -> tuple[str, ...]:
    origins = []
    for item in _string_list(name, value):
        try:
            parts = urlsplit(item)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise _expected(name, "origins like https://app.example.com", item) from None
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.username is not None
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise _expected(name, "origins like https://app.example.com", item)
        # Browsers send the scheme and host in lower case; compare against that form.
        origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return _unique(origins)


def _codec_list(name: str, value: Any) -> tuple[str, ...]:
    codecs = [c.lower() for c in _string_list(name, value)]
    unknown = [c for c in codecs if c not in KNOWN_CODECS]
    if unknown or not codecs:
        what = "a non-empty list of " + ", ".join(sorted(KNOWN_CODECS))
        raise _expected(name, what, unknown or value)
    return _unique(codecs)


def _keys(name: str, value: Any) -> Mapping[str, str]:
    # Never show a value here: it is a secret.
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected a table of key id = secret")
    for key_id, secret in value.items():
        if not isinstance(key_id, str) or not key_id.isprintable() or not 0 < len(key_id) <= 128:
            raise _expected(name, "key ids of 1 to 128 printable characters", key_id)
        if "=" in key_id or "," in key_id:
            raise _expected(name, 'key ids without "=" or ","', key_id)
        if not isinstance(secret, str):
            raise ConfigError(f"{name}.{key_id}: expected a secret string")
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"{name}.{key_id}: HS256 secret is shorter than {MIN_SECRET_BYTES} bytes;"
                " generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
    return MappingProxyType(dict(value))


def _public_keys(name: str, value: Any) -> Mapping[str, str]:
    table = _table(name, value)
    for key_id, pem in table.items():
        if not isinstance(pem, str) or "BEGIN PUBLIC KEY" not in pem:
            raise ConfigError(f"{name}: expected a PEM public key for key id {_show(key_id)}")
    return MappingProxyType(dict(table))


def _table(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _expected(name, "a table", value)
    return dict(value)


def _option(default: Any, check: Check) -> Any:
    if isinstance(default, dict):
        return field(default_factory=lambda: check("", default), metadata={"check": check})
    return field(default=default, metadata={"check": check})


class _Section:
    """Runs each field's check at construction, so direct construction is validated too."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            if check is not None:
                name = f"{self.section}.{f.name}" if self.section else f.name
                value = check(name, getattr(self, f.name))
                object.__setattr__(self, f.name, value)


@dataclass(frozen=True)
class ServerConfig(_Section):
    section: ClassVar[str] = "server"
    host: str = _option("127.0.0.1", _text)
    port: int = _option(7880, _port)
    dev: bool = _option(False, _bool)
    allowed_origins: tuple[str, ...] = _option((), _origin_list)
    max_frame_bytes: int = _option(65536, _positive_int)
    join_timeout: float = _option(10.0, _positive_seconds)
    resume_window: float = _option(30.0, _non_negative_seconds)
    shutdown_timeout: float = _option(5.0, _positive_seconds)
    data_dir: str = _option("data", _text)
    tls_cert: str | None = _option(None, _optional_path)
    tls_key: str | None = _option(None, _optional_path)
    insecure_plaintext: bool = _option(False, _bool)
    # Proxies whose X-Forwarded-For is believed (signaling/netpolicy.py); others' is ignored.
    trusted_proxies: tuple[str, ...] = _option((), _network_list)
    log_level: str = _option("info", _choice(*LOG_LEVELS))


@dataclass(frozen=True)
class RtcConfig(_Section):
    section: ClassVar[str] = "rtc"
    ips: tuple[str, ...] = _option((), _ip_list)  # the only media addresses bound and advertised
    keyframe_interval: float = _option(0.5, _positive_seconds)
    max_remote_candidates: int = _option(32, _positive_int)  # per ICE connection
    # None: true with --dev, false otherwise (finalize); a public SFU has no business there.
    allow_private_candidates: bool | None = _option(None, _optional_bool)
    # UDP ports media sockets bind, both or neither (0: the kernel picks); finalize checks them.
    port_min: int = _option(0, _port)
    port_max: int = _option(0, _port)
    # Behind a 1:1 NAT: the address to advertise for each entry of `ips`, in order.
    public_ips: tuple[str, ...] = _option((), _ip_list)


@dataclass(frozen=True, repr=False)
class AuthConfig(_Section):
    section: ClassVar[str] = "auth"
    keys: Mapping[str, str] = _option({}, _keys)
    max_token_ttl: float = _option(21600.0, _positive_seconds)
    leeway: float = _option(60.0, _leeway)
    auto_create_rooms: bool = _option(True, _bool)
    # PEM public keys by key id (ES256 for P-256, EdDSA for Ed25519): no secret, shown in repr.
    public_keys: Mapping[str, str] = _option({}, _public_keys)
    # `token_refresh_required` goes out this long before the token expires.
    refresh_notice: float = _option(60.0, _positive_seconds)
    # Brute-force brake: this many refused joins or admin calls within the window, per client IP
    # and per identity, and further attempts get `rate_limited` until the window moves on.
    max_failures: int = _option(10, _positive_int)
    failure_window: float = _option(60.0, _positive_seconds)
    # Set by finalize() only (not a file option): the server then prints the generated dev key.
    generated_dev_key: bool = False

    def __repr__(self) -> str:
        return (
            f"AuthConfig(keys={{{', '.join(f'{k!r}: <secret>' for k in self.keys)}}},"
            f" max_token_ttl={self.max_token_ttl!r}, leeway={self.leeway!r},"
            f" auto_create_rooms={self.auto_create_rooms!r},"
            f" public_keys={sorted(self.public_keys)!r},"
            f" refresh_notice={self.refresh_notice!r}, max_failures={self.max_failures!r},"
            f" failure_window={self.failure_window!r},"
            f" generated_dev_key={self.generated_dev_key!r})"
        )


@dataclass(frozen=True)
class LimitsConfig(_Section):
    """Room limit defaults; 0 means unlimited for the counts, the bitrate and max_duration."""

    section: ClassVar[str] = "limits"
    max_participants: int = _option(0, _non_negative_int)
    max_publishers: int = _option(0, _non_negative_int)
    max_tracks_per_participant: int = _option(0, _non_negative_int)
    max_subscriptions_per_participant: int = _option(0, _non_negative_int)
    max_video_bitrate: int = _option(0, _non_negative_int)  # bits per second, per track
    max_duration: float = _option(0.0, _non_negative_seconds)
    empty_timeout: float = _option(300.0, _non_negative_seconds)
    allowed_codecs: tuple[str, ...] = _option(("opus", "vp8", "h264"), _codec_list)
    relay_only: bool = _option(False, _bool)
    e2ee_required: bool = _option(False, _bool)
    recording_allowed: bool = _option(False, _bool)
    single_use_tokens: bool = _option(False, _bool)
    duplicate_identity: str = _option("reject", _choice(*DUPLICATE_IDENTITY_POLICIES))
    max_name_bytes: int = _option(256, _positive_int)
    max_metadata_bytes: int = _option(4096, _positive_int)
    max_data_message_bytes: int = _option(65536, _positive_int)
    max_bad_frames: int = _option(20, _positive_int)
    bad_frame_window: float = _option(10.0, _positive_seconds)


@dataclass(frozen=True)
class AuditConfig(_Section):
    section: ClassVar[str] = "audit"
    # Append-only, hash-chained JSON lines; unset: records go to the `keyroom.audit` logger only.
    path: str | None = _option(None, _optional_path)


@dataclass(frozen=True)
class NodeConfig(_Section):
    """Limits for this whole server; 0 means unlimited."""

    section: ClassVar[str] = "node"
    max_rooms: int = _option(0, _non_negative_int)
    max_participants: int = _option(0, _non_negative_int)
    max_tracks: int = _option(0, _non_negative_int)
    max_bitrate_in: int = _option(0, _non_negative_int)  # bits per second, all publishers


def _optional_token(name: str, value: Any) -> str | None:
    # Never show the value: it is a secret.
    if value is None:
        return None
    if not isinstance(value, str) or len(value) < MIN_BEARER_TOKEN_CHARS or not value.isprintable():
        raise ConfigError(
            f"{name}: expected a printable string of at least {MIN_BEARER_TOKEN_CHARS} characters"
        )
    return value


@dataclass(frozen=True, repr=False)
class MetricsConfig(_Section):
    section: ClassVar[str] = "metrics"
    # Unset: /metrics is open to anyone who can reach the port.
    bearer_token: str | None = _option(None, _optional_token)

    def __repr__(self) -> str:
        shown = None if self.bearer_token is None else "<secret>"
        return f"MetricsConfig(bearer_token={shown})"


def _url_list(name: str, value: Any) -> tuple[str, ...]:
    for item in _string_list(name, value):
        try:
            parts = urlsplit(item)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise _expected(name, "http(s) URLs", item) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _expected(name, "http(s) URLs", item)
    return _unique(list(value))


@dataclass(frozen=True)
class WebhooksConfig(_Section):
    section: ClassVar[str] = "webhooks"
    urls: tuple[str, ...] = _option((), _url_list)
    key: str | None = _option(None, _optional_path)  # an [auth] keys id; its secret signs
    timeout: float = _option(5.0, _positive_seconds)
    queue_size: int = _option(1000, _positive_int)  # per URL; when full the oldest event goes
    max_attempts: int = _option(5, _positive_int)
    retry_delay: float = _option(1.0, _positive_seconds)  # doubles after each failed attempt


@dataclass(frozen=True, repr=False)
class TurnConfig(_Section):
    """coturn with `use-auth-secret`: keyroom hands out short-lived credentials (auth/turn.py)."""

    section: ClassVar[str] = "turn"
    urls: tuple[str, ...] = _option((), _turn_urls)
    secret: str | None = _option(None, _optional_secret)  # coturn's static-auth-secret
    ttl: float = _option(300.0, _positive_seconds)  # how long a handed-out credential works
    # The relays' addresses as the SFU sees them: the only check sources of a relay-only room.
    relay_addresses: tuple[str, ...] = _option((), _ip_list)
    realm: str = _option("keyroom", _text)  # for `keyroom turn-config`

    def __repr__(self) -> str:
        shown = None if self.secret is None else "<secret>"
        return (
            f"TurnConfig(urls={self.urls!r}, secret={shown}, ttl={self.ttl!r},"
            f" relay_addresses={self.relay_addresses!r}, realm={self.realm!r})"
        )


TYPED_SECTIONS: dict[str, type[_Section]] = {
    "server": ServerConfig,
    "rtc": RtcConfig,
    "auth": AuthConfig,
    "limits": LimitsConfig,
    "audit": AuditConfig,
    "node": NodeConfig,
    "metrics": MetricsConfig,
    "webhooks": WebhooksConfig,
    "turn": TurnConfig,
}
# Kept as tables: [roles.NAME] grant sets and [rooms.NAME] limit overrides are checked in
# finalize().
PLAIN_SECTIONS = ("roles", "rooms")


@dataclass(frozen=True, repr=False)
class Config(_Section):
    section: ClassVar[str] = ""
    server: ServerConfig = field(default_factory=ServerConfig)
    rtc: RtcConfig = field(default_factory=RtcConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    roles: dict[str, Any] = _option({}, _table)
    rooms: dict[str, Any] = _option({}, _table)

    def __repr__(self) -> str:
        # The plain sections may hold secrets (TURN shared secret, webhook keys): show keys only.
        plain = ", ".join(
            f"{n}={{{', '.join(f'{k!r}: ...' for k in getattr(self, n))}}}" for n in PLAIN_SECTIONS
        )
        return (
            f"Config(server={self.server!r}, rtc={self.rtc!r}, auth={self.auth!r},"
            f" limits={self.limits!r}, audit={self.audit!r}, node={self.node!r},"
            f" metrics={self.metrics!r}, webhooks={self.webhooks!r}, turn={self.turn!r},"
            f" {plain})"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def finalize(config: Config) -> Config:
    """Apply the dev-mode defaults and refuse configurations that would run unsafely."""
    server, rtc, auth = config.server, config.rtc, config.auth
    if (server.tls_cert is None) != (server.tls_key is None):
        raise ConfigError("server.tls_cert and server.tls_key: set both or neither")
    for name, path in (("server.tls_cert", server.tls_cert), ("server.tls_key", server.tls_key)):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"{name}: file not found: {path}")
    if server.dev:
        if not _is_loopback(server.host):
            raise ConfigError(
                f"server.host: --dev serves loopback only, got {_show(server.host)};"
                " use 127.0.0.1, or drop --dev and configure TLS"
            )
        outside = [ip for ip in rtc.ips if not ipaddress.ip_address(ip).is_loopback]
        if outside:
            raise ConfigError(f"rtc.ips: --dev serves loopback only, got {_show(outside)}")
        if not rtc.ips:
            rtc = replace(rtc, ips=("127.0.0.1",))
        if not auth.keys:
            key = {DEV_KEY_ID: secrets.token_urlsafe(32)}
            auth = replace(auth, keys=key, generated_dev_key=True)
    else:
        if not auth.keys:
            raise ConfigError(NO_KEYS_MESSAGE)
        if not rtc.ips:
            raise ConfigError(
                "rtc.ips: no media address: use --rtc-ip IP (repeatable) or [rtc] ips"
                " with this host's address that peers can reach"
            )
        if (
            not _is_loopback(server.host)
            and server.tls_cert is None
            and not server.insecure_plaintext
        ):
            raise ConfigError(
                f"server.host: {_show(server.host)} is not loopback and TLS is not configured;"
                " set [server] tls_cert and tls_key, or, behind a TLS-terminating proxy,"
                " --insecure-plaintext (or use --dev on 127.0.0.1)"
            )
    if (rtc.port_min == 0) != (rtc.port_max == 0) or rtc.port_min > rtc.port_max:
        raise ConfigError(
            f"rtc.port_min and rtc.port_max: set both, port_min <= port_max (each peer"
            f" connection takes one port per rtc.ips address), got {rtc.port_min}..{rtc.port_max}"
        )
    if rtc.public_ips and len(rtc.public_ips) != len(rtc.ips):
        raise ConfigError(
            f"rtc.public_ips: give one public address per rtc.ips entry, in order"
            f" ({len(rtc.ips)} ips, {len(rtc.public_ips)} public_ips)"
        )
    if rtc.allow_private_candidates is None:
        rtc = replace(rtc, allow_private_candidates=server.dev)
    _check_roles(config.roles)
    relay_roles = any(role.get("relay_only") for role in config.roles.values())
    _check_turn(
        config.turn,
        [config.limits, *(room_limits(config, n) for n in config.rooms)],
        relay_roles=relay_roles,
    )
    _check_webhooks(config.webhooks, auth)
    for name in config.rooms:
        room_limits(config, name)
    return replace(config, server=server, rtc=rtc, auth=auth)


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
        raise ConfigError(
            f"webhooks.key: {_show(webhooks.key)} is not an HS256 key of the key table"
            " ([auth] keys, --key or KEYROOM_KEYS)"
        )


def _check_roles(roles: Mapping[str, Any]) -> None:
    from auth.grants import VideoGrant

    for name, grant in roles.items():
        if not isinstance(grant, dict):
            raise _expected(f"roles.{name}", "a table of grants (canPublish = false, ...)", grant)
        try:
            VideoGrant.from_claim(grant)
        except ValueError as e:
            raise ConfigError(f"roles.{name}: {e}") from None
        if not isinstance(grant.get("relay_only", False), bool):
            raise _expected(f"roles.{name}.relay_only", "true or false", grant["relay_only"])


def room_limits(config: Config, room: str) -> LimitsConfig:
    """The limits a room starts with: [limits] overridden by its [rooms.NAME] section."""
    overrides = config.rooms.get(room)
    if overrides is None:
        return config.limits
    return limits_with(config.limits, overrides, f"rooms.{room}")


def limits_with(base: LimitsConfig, overrides: Any, where: str) -> LimitsConfig:
    """`base` with some limits replaced (config sections, admin API bodies); errors name `where`."""
    if not isinstance(overrides, Mapping):
        raise _expected(where, "a table of limits", overrides)
    options = _file_options(LimitsConfig)
    for key in overrides:
        if key not in options:
            raise _unknown(f"{where}.{key}", options, "limit")
    try:
        return replace(base, **overrides)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def parse_keys(items: Iterable[str], source: str) -> dict[str, str]:
    """Parse `KEY=SECRET` items (one --key each, or KEYROOM_KEYS split on commas)."""
    keys: dict[str, str] = {}
    for item in items:
        key_id, sep, secret = item.strip().partition("=")
        if not sep or not key_id or not secret:
            # Show nothing of the item: without "=" it may be the secret itself.
            raise ConfigError(f"{source}: expected KEY=SECRET")
        if key_id in keys:
            raise ConfigError(f"{source}: key id {_show(key_id)} given twice")
        keys[key_id] = secret
    return keys


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: invalid TOML: {e}") from None


def _unknown(name: str, known: list[str], kind: str) -> ConfigError:
    leaf = name.rpartition(".")[2]
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"{name}: unknown {kind}{hint}")


def _file_options(cls: type[_Section]) -> list[str]:
    return [f.name for f in fields(cls) if "check" in f.metadata]  # type: ignore[arg-type]


def parse_config_file(path: str | None) -> Config:
    """The file's options, checked one by one but without finalize()'s start-up rules."""
    return _build(_read_file(path) if path else {})


def _build(data: Mapping[str, Any]) -> Config:
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name in PLAIN_SECTIONS:
            sections[name] = _table(name, value)
        elif name in TYPED_SECTIONS:
            cls = TYPED_SECTIONS[name]
            table = _table(name, value)
            options = _file_options(cls)
            for key in table:
                if key not in options:
                    raise _unknown(f"{name}.{key}", options, "key")
            sections[name] = cls(**table)
        else:
            raise _unknown(str(name), [*TYPED_SECTIONS, *PLAIN_SECTIONS], "section")
    return Config(**sections)


def load_config(
    path: str | None,
    overrides: Mapping[str, Mapping[str, Any]],
    env: Mapping[str, str] = os.environ,
) -> Config:
    """Read the TOML file, then the environment, then `overrides` (shaped like the file).

    A later source replaces an option of an earlier one as a whole: lists and the key table are
    not merged. `path` None falls back to KEYROOM_CONFIG; no file at all is fine.
    """
    path = path or env.get("KEYROOM_CONFIG") or None
    data: dict[str, Any] = _read_file(path) if path else {}
    layers: list[Mapping[str, Mapping[str, Any]]] = []
    if env.get("KEYROOM_KEYS"):
        layers.append(
            {"auth": {"keys": parse_keys(env["KEYROOM_KEYS"].split(","), "KEYROOM_KEYS")}}
        )
    layers.append(overrides)
    for layer in layers:
        for section, options in layer.items():
            base = data.get(section, {})
            # A non-table in the file is reported by _build; do not merge into it.
            if isinstance(base, dict):
                data[section] = {**base, **options}
    return finalize(_build(data))
