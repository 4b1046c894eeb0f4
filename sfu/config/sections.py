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
    # One UDP port for every peer connection (0: one socket per connection, as above).
    udp_port: int = option(0, checks.port)
    # With udp_port: one incoming packet's copies sent in one sendmmsg (compiled, sfu/fastpath);
    # "auto" falls back to the pure-Python path when the extension cannot be built.
    fanout: str = option("auto", checks.choice("auto", "compiled", "python"))
    # With udp_port: N worker processes forward to one room's subscribers (sfu/fanout/); 0 off.
    fanout_workers: int = option(0, checks.integer(0, "an integer from 0 to 64", 64))
    # With udp_port: the shared sockets' receive buffer, bytes (0: 4 MiB asked); forced past
    # net.core.rmem_max where the server may (sfu/sockbuf.py).
    udp_receive_buffer: int = option(
        0, checks.integer(0, "0 or a size in bytes up to 1 GiB", 1 << 30)
    )
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
    # Set by load_config() only: key id -> where it came from (config file, KEYROOM_KEYS,
    # --key), and a warning for each source whose keys a later one replaced.
    key_sources: Mapping[str, str] = field(default_factory=dict)
    key_warnings: tuple[str, ...] = ()

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
    # Subscribers are offered transport-wide congestion control (sfu/twcc.py); off: REMB only.
    transport_cc: bool = option(True, checks.boolean)
    # Audio as RFC 2198 redundancy (red/48000/2 over Opus) where publisher and subscriber can.
    audio_red: bool = option(True, checks.boolean)
    single_use_tokens: bool = option(False, checks.boolean)
    # Only tokens bound to a client key (`cnf.jkt`), with a proof of possession (issue 15).
    require_bound_tokens: bool = option(False, checks.boolean)
    # Record every track of the room from its publication on (needs recording_allowed).
    auto_record: bool = option(False, checks.boolean)
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
    # Past this size the log is renamed PATH.000001, ... and continues in PATH, one chain
    # across the files (auth/auditfiles.py); 0: never rotated.
    rotate_bytes: int = option(0, checks.non_negative_int)


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


@dataclass(frozen=True)
class SecurityConfig(_Section):
    """Key binding nonces, the security-event stream and its detection rules (issue 15)."""

    section: ClassVar[str] = "security"
    # Proof-of-possession nonces (GET /rtc/nonce): lifetime, and how many may be outstanding.
    nonce_ttl: float = option(30.0, checks.positive_seconds)
    max_nonces: int = option(10000, checks.positive_int)
    # One security alert per kind and subject per window, with the count of what it sums up.
    alert_window: float = option(60.0, checks.positive_seconds)
    # Alerts also go to [webhooks] urls as `security_alert` (LiveKit's receiver refuses them).
    webhook_alerts: bool = option(True, checks.boolean)
    # Rules (docs/incident-response.md): N distinct things within a window.
    identity_addresses: int = option(4, checks.positive_int)
    identity_addresses_window: float = option(300.0, checks.positive_seconds)
    address_identities: int = option(20, checks.positive_int)
    address_identities_window: float = option(300.0, checks.positive_seconds)
    room_refusals: int = option(20, checks.positive_int)
    room_refusals_window: float = option(60.0, checks.positive_seconds)
    # A track sending this many times its room's max_video_bitrate (rooms that set one).
    uplink_factor: float = option(3.0, checks.factor_above_one)
    # Bits per second one participant may send in all before an alert, whatever the room; 0: off.
    max_uplink_bitrate: int = option(0, checks.non_negative_int)
    # Datagrams per second dropped for one reason (foreign source, NACK budget, data overflow).
    drop_spike: int = option(500, checks.positive_int)
    # Room -> "HH:MM-HH:MM" (UTC): joins outside these hours raise an alert.
    room_hours: Mapping[str, tuple[int, int]] = option({}, checks.room_hours)


def _recording_key(name: str, value: Any) -> str:
    from sfu.recording.keys import RecordingKeyError, load_public

    text = checks.text(name, value)
    try:
        load_public(text)
    except RecordingKeyError as e:
        raise checks.ConfigError(f"{name}: {e}") from None
    return text


@dataclass(frozen=True)
class RecordingConfig(_Section):
    """Encrypted recordings (docs/recording.md); files go to data_dir/recordings only."""

    section: ClassVar[str] = "recording"
    # The operator's X25519 public key (PEM, or the path of a PEM file): unset, nothing records.
    public_key: str | None = option(None, checks.optional(_recording_key))
    max_bytes: int = option(2 * 1024**3, checks.positive_int)  # per recording
    max_duration: float = option(4 * 3600.0, checks.positive_seconds)  # per recording
    quota_bytes: int = option(20 * 1024**3, checks.positive_int)  # all of data_dir/recordings
    chunk_bytes: int = option(
        64 * 1024, checks.integer(1024, "a size from 1024 to 4194304", 4194304)
    )
    flush_interval: float = option(1.0, checks.positive_seconds)  # a crash loses at most this


@dataclass(frozen=True, repr=False)
class ClusterConfig(_Section):
    """Many nodes sharing one Redis (docs/cluster.md); without `redis_url`, one process alone."""

    section: ClassVar[str] = "cluster"
    redis_url: str | None = option(None, checks.optional_redis_url)
    node_id: str | None = option(None, checks.optional_text)  # default: host:port, random suffix
    # The signaling URL other nodes redirect joins to (default: ws://host:port/rtc).
    advertise_url: str | None = option(None, checks.optional_ws_url)
    region: str = option("default", checks.text)
    capacity: int = option(1000, checks.positive_int)  # participants this node should hold
    heartbeat: float = option(2.0, checks.positive_seconds)
    node_ttl: float = option(6.0, checks.positive_seconds)  # a silent node is gone after this
    drain_timeout: float = option(300.0, checks.positive_seconds)
    prefix: str = option("keyroom", checks.text)  # of every Redis key and channel

    def __repr__(self) -> str:
        shown = None if self.redis_url is None else "<redis url>"  # may carry a password
        return (
            f"ClusterConfig(redis_url={shown}, node_id={self.node_id!r},"
            f" advertise_url={self.advertise_url!r}, region={self.region!r},"
            f" capacity={self.capacity!r}, heartbeat={self.heartbeat!r},"
            f" node_ttl={self.node_ttl!r}, drain_timeout={self.drain_timeout!r},"
            f" prefix={self.prefix!r})"
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
    "security": SecurityConfig,
    "recording": RecordingConfig,
    "cluster": ClusterConfig,
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
    security: SecurityConfig = field(default_factory=SecurityConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
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
            f" security={self.security!r}, recording={self.recording!r},"
            f" cluster={self.cluster!r}, {plain})"
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
