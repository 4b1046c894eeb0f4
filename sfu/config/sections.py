"""The configuration's sections: each option with its default and its check.

Every time value is in seconds (float) and every size in bytes. Each option is checked where its
dataclass is built, so a config built in code (or by `dataclasses.replace`) is held to the same
rules as one read from a file, and every error names the option as it is written in the file
(`section.key`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

from sfu.config import checks

LOG_LEVELS = ("debug", "info", "warning", "error")
DUPLICATE_IDENTITY_POLICIES = ("reject", "replace")


def option(default: Any, check: checks.Check) -> Any:
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


def file_options(cls: type) -> list[str]:
    """The options a file may set in `cls`'s section (not those only finalize() sets)."""
    return [f.name for f in fields(cls) if "check" in f.metadata]


@dataclass(frozen=True)
class ServerConfig(_Section):
    section: ClassVar[str] = "server"
    host: str = option("127.0.0.1", checks.text)
    port: int = option(7880, checks.port)
    dev: bool = option(False, checks.boolean)
    allowed_origins: tuple[str, ...] = option((), checks.origin_list)
    max_frame_bytes: int = option(65536, checks.positive_int)
    # What a client that does not read may make the server hold for it (signaling/outbox.py).
    max_outbox_frames: int = option(1000, checks.positive_int)
    max_outbox_bytes: int = option(2 * 1024 * 1024, checks.positive_int)
    # The first frame must be a complete join or resume this long after the socket opens;
    # pings and anything else do not extend it.
    join_timeout: float = option(10.0, checks.positive_seconds)
    # Sockets not yet admitted (upgraded, no join accepted yet), per client address and in all:
    # beyond these the upgrade is refused (429, 503) before any WebSocket state exists.
    max_pending_per_ip: int = option(100, checks.positive_int)
    max_pending: int = option(1000, checks.positive_int)
    # An HTTP connection idle between requests, or whose request headers are still incomplete,
    # is closed this long after it opened or its last response (aiohttp's keep-alive timer).
    keepalive_timeout: float = option(15.0, checks.positive_seconds)
    resume_window: float = option(30.0, checks.non_negative_seconds)
    shutdown_timeout: float = option(5.0, checks.positive_seconds)
    data_dir: str = option("data", checks.text)
    tls_cert: str | None = option(None, checks.optional_text)
    tls_key: str | None = option(None, checks.optional_text)
    insecure_plaintext: bool = option(False, checks.boolean)
    # Proxies whose X-Forwarded-For is believed (signaling/netpolicy.py); others' is ignored.
    trusted_proxies: tuple[str, ...] = option((), checks.network_list)
    log_level: str = option("info", checks.choice(*LOG_LEVELS))


@dataclass(frozen=True)
class RtcConfig(_Section):
    section: ClassVar[str] = "rtc"
    ips: tuple[str, ...] = option((), checks.ip_list)  # the only media addresses bound, advertised
    keyframe_interval: float = option(0.5, checks.positive_seconds)
    max_remote_candidates: int = option(32, checks.positive_int)  # per ICE connection
    # None: true with --dev, false otherwise (finalize); a public SFU has no business there.
    allow_private_candidates: bool | None = option(None, checks.optional_bool)
    # UDP ports media sockets bind, both or neither (0: the kernel picks); finalize checks them.
    port_min: int = option(0, checks.port)
    port_max: int = option(0, checks.port)
    # Behind a 1:1 NAT: the address to advertise for each entry of `ips`, in order.
    public_ips: tuple[str, ...] = option((), checks.ip_list)


@dataclass(frozen=True, repr=False)
class AuthConfig(_Section):
    section: ClassVar[str] = "auth"
    keys: Mapping[str, str] = option({}, checks.signing_keys)
    max_token_ttl: float = option(21600.0, checks.positive_seconds)
    leeway: float = option(60.0, checks.leeway)
    auto_create_rooms: bool = option(True, checks.boolean)
    # PEM public keys by key id (ES256 for P-256, EdDSA for Ed25519): no secret, shown in repr.
    public_keys: Mapping[str, str] = option({}, checks.public_keys)
    # `token_refresh_required` goes out this long before the token expires.
    refresh_notice: float = option(60.0, checks.positive_seconds)
    # Brute-force brake: this many refused joins or admin calls within the window, per client IP
    # and per identity, and further attempts get `rate_limited` until the window moves on.
    max_failures: int = option(10, checks.positive_int)
    failure_window: float = option(60.0, checks.positive_seconds)
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
    max_participants: int = option(0, checks.non_negative_int)
    max_publishers: int = option(0, checks.non_negative_int)
    # Bounded by default: each track costs every subscriber an m-line and the node a forwarder.
    max_tracks_per_participant: int = option(16, checks.non_negative_int)
    max_subscriptions_per_participant: int = option(0, checks.non_negative_int)
    max_video_bitrate: int = option(0, checks.non_negative_int)  # bits per second, per track
    max_duration: float = option(0.0, checks.non_negative_seconds)
    empty_timeout: float = option(300.0, checks.non_negative_seconds)
    allowed_codecs: tuple[str, ...] = option(("opus", "vp8", "h264"), checks.codec_list)
    relay_only: bool = option(False, checks.boolean)
    e2ee_required: bool = option(False, checks.boolean)
    recording_allowed: bool = option(False, checks.boolean)
    # Publishers may send video in up to three simulcast layers (a=simulcast, RIDs).
    simulcast: bool = option(True, checks.boolean)
    single_use_tokens: bool = option(False, checks.boolean)
    duplicate_identity: str = option("reject", checks.choice(*DUPLICATE_IDENTITY_POLICIES))
    max_name_bytes: int = option(256, checks.positive_int)
    max_metadata_bytes: int = option(4096, checks.positive_int)
    max_data_message_bytes: int = option(65536, checks.positive_int)
    max_bad_frames: int = option(20, checks.positive_int)
    bad_frame_window: float = option(10.0, checks.positive_seconds)


@dataclass(frozen=True)
class AuditConfig(_Section):
    section: ClassVar[str] = "audit"
    # Append-only, keyed and chained JSON lines; unset: records go to the `keyroom.audit` logger
    # only. Checkpoints go beside it, to PATH.checkpoints.
    path: str | None = option(None, checks.optional_text)
    # The HMAC key (created on first start when missing); unset: data_dir/audit.key.
    key_file: str | None = option(None, checks.optional_text)
    checkpoint_interval: float = option(60.0, checks.positive_seconds)
    refusal_window: float = option(10.0, checks.positive_seconds)


@dataclass(frozen=True)
class NodeConfig(_Section):
    """Limits for this whole server; 0 means unlimited."""

    section: ClassVar[str] = "node"
    max_rooms: int = option(0, checks.non_negative_int)
    max_participants: int = option(0, checks.non_negative_int)
    max_tracks: int = option(0, checks.non_negative_int)
    max_bitrate_in: int = option(0, checks.non_negative_int)  # bits per second, all publishers


@dataclass(frozen=True, repr=False)
class MetricsConfig(_Section):
    section: ClassVar[str] = "metrics"
    # Required without --dev (finalize): /metrics shows every room's load and traffic. With
    # --dev and unset, /metrics is open on the loopback address the server serves.
    bearer_token: str | None = option(None, checks.optional_bearer_token)

    def __repr__(self) -> str:
        shown = None if self.bearer_token is None else "<secret>"
        return f"MetricsConfig(bearer_token={shown})"


@dataclass(frozen=True)
class WebhooksConfig(_Section):
    section: ClassVar[str] = "webhooks"
    urls: tuple[str, ...] = option((), checks.url_list)
    key: str | None = option(None, checks.optional_text)  # an [auth] keys id; its secret signs
    timeout: float = option(5.0, checks.positive_seconds)
    queue_size: int = option(1000, checks.positive_int)  # per URL; when full the oldest event goes
    max_attempts: int = option(5, checks.positive_int)
    retry_delay: float = option(1.0, checks.positive_seconds)  # doubles after each failed attempt


@dataclass(frozen=True, repr=False)
class TurnConfig(_Section):
    """coturn with `use-auth-secret`: keyroom hands out short-lived credentials (auth/turn.py)."""

    section: ClassVar[str] = "turn"
    urls: tuple[str, ...] = option((), checks.turn_urls)
    secret: str | None = option(None, checks.optional_turn_secret)  # coturn's static-auth-secret
    ttl: float = option(300.0, checks.positive_seconds)  # how long a handed-out credential works
    # The relays' addresses as the SFU sees them: the only check sources of a relay-only room.
    relay_addresses: tuple[str, ...] = option((), checks.ip_list)
    realm: str = option("keyroom", checks.text)  # for `keyroom turn-config`

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
    roles: dict[str, Any] = option({}, checks.table)
    rooms: dict[str, Any] = option({}, checks.table)

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


def check_keys(cls: type, keys: Mapping[str, Any], where: str, kind: str) -> None:
    """Refuse a key of `keys` that is not an option of `cls`, naming it as `where.key`."""
    options = file_options(cls)
    for key in keys:
        if key not in options:
            raise checks.unknown(f"{where}.{key}", options, kind)


def room_limits(config: Config, room: str) -> LimitsConfig:
    """The limits a room starts with: [limits] overridden by its [rooms.NAME] section."""
    overrides = config.rooms.get(room)
    if overrides is None:
        return config.limits
    return limits_with(config.limits, overrides, f"rooms.{room}")


def limits_with(base: LimitsConfig, overrides: Any, where: str) -> LimitsConfig:
    """`base` with some limits replaced (config sections, admin API bodies); errors name `where`."""
    if not isinstance(overrides, Mapping):
        raise checks.expected(where, "a table of limits", overrides)
    check_keys(LimitsConfig, overrides, where, "limit")
    try:
        return replace(base, **overrides)
    except checks.ConfigError as e:
        raise checks.ConfigError(f"{where}: {e}") from None
