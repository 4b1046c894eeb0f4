"""Configuration: precedence, validation messages, secret hygiene, dev and non-dev rules."""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sfu.config import (
    DEV_KEY_ID,
    NO_KEYS_MESSAGE,
    AuthConfig,
    ClusterConfig,
    Config,
    ConfigError,
    LimitsConfig,
    RecordingConfig,
    RtcConfig,
    SecurityConfig,
    ServerConfig,
    TurnConfig,
    finalize,
    load_config,
    room_limits,
)

SECRET = "s" * 40
OTHER_SECRET = "o" * 40
# Enough for a non-dev config to pass finalize(); tests override what they look at.
RUNNABLE: dict[str, dict[str, Any]] = {
    "auth": {"keys": {"k": SECRET}},
    "rtc": {"ips": ["127.0.0.1"]},
    "metrics": {"bearer_token": "m" * 32},
}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "keyroom.toml"
    path.write_text(text)
    return str(path)


def load(overrides: dict[str, dict[str, Any]], env: dict[str, str] | None = None) -> Config:
    merged = {s: {**RUNNABLE.get(s, {}), **overrides.get(s, {})} for s in {*RUNNABLE, *overrides}}
    return load_config(None, merged, env or {})


def test_defaults_match_the_protocol() -> None:
    config = load({})
    assert config.server == ServerConfig()
    assert (config.server.host, config.server.port) == ("127.0.0.1", 7880)
    assert config.server.max_frame_bytes == 65536
    assert config.server.join_timeout == 10.0
    assert config.auth.leeway == 60.0
    assert config.auth.max_token_ttl == 6 * 3600
    assert config.limits == LimitsConfig()
    assert config.limits.duplicate_identity == "reject"
    assert config.limits.empty_timeout == 300.0
    assert (config.limits.max_name_bytes, config.limits.max_metadata_bytes) == (256, 4096)
    assert (config.limits.max_bad_frames, config.limits.bad_frame_window) == (20, 10.0)
    assert config.turn == TurnConfig() and config.turn.ttl == 300.0
    assert config.rooms == {}


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[server]
port = 9000
join_timeout = 3
[rtc]
ips = ["127.0.0.1"]
[auth]
keys = {{ file = "{SECRET}" }}
[limits]
max_participants = 4
[metrics]
bearer_token = "{"m" * 32}"
""",
    )
    from_file = load_config(path, {}, {})
    assert from_file.server.port == 9000
    assert from_file.server.join_timeout == 3.0 and isinstance(from_file.server.join_timeout, float)
    assert dict(from_file.auth.keys) == {"file": SECRET}

    env = {"KEYROOM_KEYS": f"env1={SECRET},env2={OTHER_SECRET}"}
    from_env = load_config(path, {}, env)
    # A later source replaces the key table as a whole: the file's key is gone.
    assert dict(from_env.auth.keys) == {"env1": SECRET, "env2": OTHER_SECRET}
    assert from_env.server.port == 9000

    overrides: dict[str, dict[str, Any]] = {
        "server": {"port": 9100},
        "auth": {"keys": {"flag": OTHER_SECRET}},
    }
    from_flags = load_config(path, overrides, env)
    assert from_flags.server.port == 9100
    assert dict(from_flags.auth.keys) == {"flag": OTHER_SECRET}
    # Options no later source sets keep the file's value.
    assert from_flags.server.join_timeout == 3.0
    assert from_flags.limits.max_participants == 4


def test_config_path_from_env_unless_given(tmp_path: Path) -> None:
    env_file = tmp_path / "env.toml"
    env_file.write_text("[server]\nport = 7001\n")
    flag_file = tmp_path / "flag.toml"
    flag_file.write_text("[server]\nport = 7002\n")
    env = {"KEYROOM_CONFIG": str(env_file)}
    assert load_config(None, RUNNABLE, env).server.port == 7001
    assert load_config(str(flag_file), RUNNABLE, env).server.port == 7002


def test_a_key_secret_may_contain_equals_signs() -> None:
    secret = "A" * 40 + "=="
    runnable = {"rtc": RUNNABLE["rtc"], "metrics": RUNNABLE["metrics"]}
    config = load_config(None, runnable, {"KEYROOM_KEYS": f"k={secret}"})
    assert dict(config.auth.keys) == {"k": secret}


BAD_VALUES = [
    ("rtc", "public_ips", ["not-an-ip"]),
    ("auth", "public_keys", {"k": "not a pem"}),
    ("auth", "refresh_notice", 0),
    ("auth", "max_failures", 0),
    ("auth", "failure_window", -1),
    ("audit", "path", ""),
    ("node", "max_rooms", -1),
    ("node", "max_participants", "x"),
    ("node", "max_tracks", 1.5),
    ("node", "max_bitrate_in", -5),
    ("server", "host", ""),
    ("server", "host", 5),
    ("server", "port", "x"),
    ("server", "port", 65536),
    ("server", "port", -1),
    ("server", "port", True),
    ("server", "dev", "yes"),
    ("server", "allowed_origins", "https://a.example"),
    ("server", "allowed_origins", ["*"]),
    ("server", "allowed_origins", ["https://a.example/path"]),
    ("server", "allowed_origins", ["ftp://a.example"]),
    ("server", "max_frame_bytes", 0),
    ("server", "max_outbox_frames", 0),
    ("server", "max_outbox_bytes", -1),
    ("audit", "checkpoint_interval", 0),
    ("audit", "refusal_window", -1),
    ("audit", "rotate_bytes", -1),
    ("server", "join_timeout", 0),
    ("server", "join_timeout", math.nan),
    ("server", "max_outbox_frames", 0),
    ("server", "max_outbox_bytes", -1),
    ("server", "max_pending_per_ip", 0),
    ("server", "max_pending", "many"),
    ("server", "keepalive_timeout", 0),
    ("server", "resume_window", -1),
    ("server", "shutdown_timeout", "5s"),
    ("server", "data_dir", ""),
    ("server", "tls_cert", 1),
    ("server", "tls_key", ""),
    ("server", "insecure_plaintext", 1),
    ("server", "log_level", "verbose"),
    ("rtc", "ips", "127.0.0.1"),
    ("rtc", "ips", ["not-an-ip"]),
    ("rtc", "ips", ["0.0.0.0"]),
    ("rtc", "ips", ["224.0.0.1"]),
    ("rtc", "keyframe_interval", 0),
    ("rtc", "max_remote_candidates", 0),
    ("rtc", "allow_private_candidates", "yes"),
    ("rtc", "port_min", 70000),
    ("rtc", "port_max", -1),
    ("rtc", "udp_port", 65536),
    ("rtc", "fanout", "fast"),
    ("rtc", "fanout_workers", -1),
    ("rtc", "fanout_workers", 65),
    ("rtc", "udp_receive_buffer", -1),
    ("rtc", "udp_receive_buffer", "8M"),
    ("rtc", "udp_receive_buffer", (1 << 30) + 1),
    ("server", "trusted_proxies", ["10.0.0.0/33"]),
    ("auth", "max_token_ttl", 0),
    ("auth", "leeway", 61),
    ("auth", "leeway", -1),
    ("auth", "auto_create_rooms", "false"),
    ("limits", "max_participants", "x"),
    ("limits", "max_publishers", -1),
    ("limits", "max_tracks_per_participant", 1.5),
    ("limits", "max_subscriptions_per_participant", None),
    ("limits", "max_video_bitrate", -1),
    ("limits", "max_duration", -1),
    ("limits", "empty_timeout", math.inf),
    ("limits", "allowed_codecs", ["vp9"]),
    ("limits", "allowed_codecs", []),
    ("limits", "relay_only", "no"),
    ("limits", "e2ee_required", 0),
    ("limits", "recording_allowed", 1),
    ("limits", "simulcast", "yes"),
    ("limits", "transport_cc", "yes"),
    ("limits", "audio_red", "yes"),
    ("limits", "single_use_tokens", "true"),
    ("limits", "auto_record", "yes"),
    ("recording", "public_key", 5),
    ("recording", "max_bytes", 0),
    ("recording", "max_duration", 0),
    ("recording", "quota_bytes", -1),
    ("recording", "chunk_bytes", 10),
    ("recording", "flush_interval", 0),
    ("limits", "duplicate_identity", "kick"),
    ("limits", "max_name_bytes", 0),
    ("limits", "max_metadata_bytes", -1),
    ("limits", "max_data_message_bytes", 0),
    ("limits", "max_bad_frames", 0),
    ("limits", "bad_frame_window", 0),
    ("limits", "require_bound_tokens", "yes"),
    ("security", "nonce_ttl", 0),
    ("security", "max_nonces", 0),
    ("security", "alert_window", -1),
    ("security", "webhook_alerts", "on"),
    ("security", "identity_addresses", 0),
    ("security", "identity_addresses_window", 0),
    ("security", "address_identities", 1.5),
    ("security", "address_identities_window", "5m"),
    ("security", "room_refusals", -1),
    ("security", "room_refusals_window", 0),
    ("security", "uplink_factor", 1),
    ("security", "max_uplink_bitrate", -1),
    ("security", "room_hours", "9-17"),
    ("security", "drop_spike", 0),
    ("cluster", "redis_url", "http://r:6379"),
    ("cluster", "redis_url", "redis://r:99999"),
    ("cluster", "node_id", ""),
    ("cluster", "advertise_url", "http://node1/rtc"),
    ("cluster", "region", 3),
    ("cluster", "capacity", 0),
    ("cluster", "heartbeat", 0),
    ("cluster", "node_ttl", -1),
    ("cluster", "drain_timeout", 0),
    ("cluster", "prefix", ""),
]


@pytest.mark.parametrize(("section", "key", "value"), BAD_VALUES)
def test_bad_value_is_refused_naming_its_key(section: str, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^{section}\.{key}: expected "):
        load({section: {key: value}})


def test_every_typed_option_has_a_bad_value_case() -> None:
    tested = {f"{s}.{k}" for s, k, _ in BAD_VALUES}
    options = {
        f"{cls.section}.{f.name}"
        for cls in (
            ServerConfig,
            RtcConfig,
            AuthConfig,
            LimitsConfig,
            SecurityConfig,
            RecordingConfig,
            ClusterConfig,
        )
        for f in dataclasses.fields(cls)
        if "check" in f.metadata and f.name != "keys"
    }
    assert options - tested == set()


def test_message_shows_the_bad_value() -> None:
    with pytest.raises(ConfigError) as caught:
        load({"limits": {"max_participants": "x"}})
    assert str(caught.value) == 'limits.max_participants: expected a non-negative integer, got "x"'


def test_bad_value_in_file_names_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[limits]\nduplicate_identity = "kick"\n')
    with pytest.raises(ConfigError, match=r"^limits\.duplicate_identity: expected one of"):
        load_config(path, RUNNABLE, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nhots = 1\n", r"^server\.hots: unknown key \(did you mean host\?\)"),
        ("[servr]\n", r"^servr: unknown section \(did you mean server\?\)"),
        ("[auth]\ngenerated_dev_key = true\n", r"^auth\.generated_dev_key: unknown key"),
        ("server = 1\n", r"^server: expected a table, got 1"),
        ('turn = "x"\n', r'^turn: expected a table, got "x"'),
        ("[server\n", r"invalid TOML"),
    ],
)
def test_file_structure_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), RUNNABLE, {})


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=f"^config file {missing}: "):
        load_config(missing, RUNNABLE, {})


def test_later_sections_are_kept_as_tables(tmp_path: Path) -> None:
    text = "[roles.viewer]\ncanPublish = false\n[rooms.r1]\nmax_participants = 3\n"
    config = load_config(write(tmp_path, text), RUNNABLE, {})
    assert config.roles == {"viewer": {"canPublish": False}}
    assert config.rooms == {"r1": {"max_participants": 3}}
    assert room_limits(config, "r1").max_participants == 3
    assert room_limits(config, "r2") == config.limits


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[rooms.r1]\nmax_participantz = 3\n", "rooms.r1.max_participantz: unknown limit"),
        ("[rooms.r1]\nmax_participants = -3\n", "rooms.r1: limits.max_participants: expected"),
        ("[roles.v]\ncanPublish = 3\n", "roles.v: video.canPublish must be true or false"),
        ("[roles]\nv = 3\n", "roles.v: expected a table"),
    ],
)
def test_roles_and_rooms_are_checked_at_start_up(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(error)):
        load_config(write(tmp_path, text), RUNNABLE, {})


def test_values_are_normalised() -> None:
    config = load(
        {
            "server": {
                "allowed_origins": ["HTTPS://App.Example:8443/", "https://app.example:8443"]
            },
            "rtc": {"ips": ["127.0.0.1", "::0001", "127.0.0.1"]},
            "limits": {"allowed_codecs": ["OPUS", "vp8"], "max_duration": 60},
        }
    )
    assert config.server.allowed_origins == ("https://app.example:8443",)
    assert config.rtc.ips == ("127.0.0.1", "::1")
    assert config.limits.allowed_codecs == ("opus", "vp8")
    assert config.limits.max_duration == 60.0


def test_direct_construction_is_validated_and_frozen() -> None:
    with pytest.raises(ConfigError, match=r"^limits\.max_participants: "):
        LimitsConfig(max_participants=-1)
    with pytest.raises(ConfigError, match=r"^rooms: expected a table"):
        Config(rooms=[])  # type: ignore[arg-type]
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server = ServerConfig()  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.auth.keys["x"] = SECRET  # type: ignore[index]


# --- secrets -----------------------------------------------------------------------------------


def test_secrets_are_not_in_repr() -> None:
    config = load(
        {
            "turn": {"secret": "turn-shared-secret", "urls": ["turn:127.0.0.1"]},
            "metrics": {"bearer_token": "metrics-bearer-0123"},
        }
    )
    for text in (repr(config), str(config), repr(config.auth), str(config.auth)):
        assert SECRET not in text
        assert "'k'" in text
    assert "turn-shared-secret" not in repr(config)
    assert "metrics-bearer-0123" not in repr(config)


def test_short_secret_names_the_key_not_the_secret() -> None:
    short = "hunter2-is-short"
    with pytest.raises(ConfigError) as caught:
        load({"auth": {"keys": {"prod": short}}})
    assert str(caught.value).startswith("auth.keys.prod: HS256 secret is shorter than 32 bytes")
    assert short not in str(caught.value)


@pytest.mark.parametrize("value", [SECRET, f"k={SECRET},{SECRET}", f"={SECRET}", "k=", ","])
def test_malformed_env_keys_do_not_echo_secrets(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^KEYROOM_KEYS: expected KEY=SECRET") as caught:
        load_config(None, {"rtc": RUNNABLE["rtc"]}, {"KEYROOM_KEYS": value})
    assert SECRET not in str(caught.value)


def test_duplicate_env_key_id_is_refused() -> None:
    env = {"KEYROOM_KEYS": f"k={SECRET},k={OTHER_SECRET}"}
    with pytest.raises(ConfigError, match=r'^KEYROOM_KEYS: key id "k" given twice') as caught:
        load_config(None, {"rtc": RUNNABLE["rtc"]}, env)
    assert SECRET not in str(caught.value) and OTHER_SECRET not in str(caught.value)


@pytest.mark.parametrize("key_id", ["", "a=b", "a,b", "tab\there", "x" * 129])
def test_bad_key_ids_are_refused(key_id: str) -> None:
    with pytest.raises(ConfigError, match=r"^auth\.keys: expected key ids"):
        AuthConfig(keys={key_id: SECRET})


def test_non_string_secret_is_refused_without_echo() -> None:
    with pytest.raises(ConfigError, match=r"^auth\.keys\.k: expected a secret string$"):
        AuthConfig(keys={"k": 12345678901234567890123456789012345})  # type: ignore[dict-item]


# --- dev mode ----------------------------------------------------------------------------------


def test_dev_defaults() -> None:
    config = load_config(None, {"server": {"dev": True}}, {})
    assert config.rtc.ips == ("127.0.0.1",)
    assert config.auth.generated_dev_key
    assert list(config.auth.keys) == [DEV_KEY_ID]
    assert len(config.auth.keys[DEV_KEY_ID]) >= 32
    assert config.auth.keys[DEV_KEY_ID] not in repr(config)
    # A fresh key per process: nothing predictable.
    again = load_config(None, {"server": {"dev": True}}, {})
    assert again.auth.keys[DEV_KEY_ID] != config.auth.keys[DEV_KEY_ID]


def test_dev_uses_given_keys_and_ips() -> None:
    overrides: dict[str, dict[str, Any]] = {"server": {"dev": True}, "rtc": {"ips": ["::1"]}}
    config = load_config(None, overrides, {"KEYROOM_KEYS": f"k={SECRET}"})
    assert dict(config.auth.keys) == {"k": SECRET}
    assert not config.auth.generated_dev_key
    assert config.rtc.ips == ("::1",)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_dev_accepts_loopback_hosts(host: str) -> None:
    assert load_config(None, {"server": {"dev": True, "host": host}}, {}).server.host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.com"])
def test_dev_refuses_non_loopback_host(host: str) -> None:
    with pytest.raises(ConfigError, match=r"^server\.host: --dev serves loopback only"):
        load_config(None, {"server": {"dev": True, "host": host}}, {})


def test_dev_refuses_non_loopback_media_address() -> None:
    with pytest.raises(ConfigError, match=r"^rtc\.ips: --dev serves loopback only"):
        load_config(None, {"server": {"dev": True}, "rtc": {"ips": ["192.0.2.1"]}}, {})


# --- refusals without dev ----------------------------------------------------------------------


def test_no_keys_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"rtc": RUNNABLE["rtc"]}, {})
    assert str(caught.value) == NO_KEYS_MESSAGE


def test_no_media_address_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^rtc\.ips: no media address: use --rtc-ip"):
        load_config(None, {"auth": RUNNABLE["auth"]}, {})


def test_plaintext_on_a_public_address_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^server\.host: .*tls_cert.*--insecure-plaintext"):
        load({"server": {"host": "0.0.0.0"}})
    config = load({"server": {"host": "0.0.0.0", "insecure_plaintext": True}})
    assert config.server.host == "0.0.0.0"


def test_tls_files_allow_a_public_address(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert")
    key.write_text("key")
    server = {"host": "0.0.0.0", "tls_cert": str(cert), "tls_key": str(key)}
    assert load({"server": server}).server.tls_cert == str(cert)
    with pytest.raises(ConfigError, match=r"^server\.tls_cert and server\.tls_key: set both"):
        load({"server": {"host": "0.0.0.0", "tls_cert": str(cert)}})
    with pytest.raises(ConfigError, match=r"^server\.tls_key: file not found"):
        load({"server": {**server, "tls_key": str(tmp_path / "missing.pem")}})


def test_documented_example_sets_every_option_and_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    example = doc.split("## Complete example `keyroom.toml`")[1].split("```toml\n")[1]
    example = example.split("```")[0]
    for cls in (
        ServerConfig, RtcConfig, AuthConfig, LimitsConfig, SecurityConfig, RecordingConfig,
        ClusterConfig,
    ):  # fmt: skip
        written = set(tomllib.loads(example)[cls.section])
        assert written == {f.name for f in dataclasses.fields(cls) if "check" in f.metadata}
    with pytest.raises(ConfigError, match=r"^auth\.keys\.prod-2024: HS256 secret is shorter"):
        load_config(write(tmp_path, example), {}, {})
    for name in ("fullchain.pem", "privkey.pem"):
        (tmp_path / name).write_text("pem")
    example = example.replace("CHANGE-ME", SECRET).replace("/etc/keyroom/tls", str(tmp_path))
    config = load_config(write(tmp_path, example), {}, {})
    assert config.server.tls_key == str(tmp_path / "privkey.pem")
    assert config.limits.max_video_bitrate == 2500000


def test_finalize_checks_configs_built_in_code() -> None:
    with pytest.raises(ConfigError, match="no signing keys"):
        finalize(Config())
    dev = finalize(Config(server=ServerConfig(dev=True)))
    assert dev.auth.generated_dev_key and dev.rtc.ips == ("127.0.0.1",)


# --- [turn] and [rtc] candidate options --------------------------------------------------------


@pytest.mark.parametrize(
    ("turn", "error"),
    [
        ({"urls": ["http://x"], "secret": "s" * 16}, "turn.urls: expected TURN/STUN URLs"),
        ({"urls": ["turns:x?transport=udp"], "secret": "s" * 16}, "turn.urls: expected"),
        ({"urls": ["turn:x"]}, "turn.urls and turn.secret: set both or neither"),
        ({"secret": "s" * 16}, "turn.urls and turn.secret: set both or neither"),
        ({"urls": ["turn:x"], "secret": "short-turn-sec"}, "turn.secret: expected a string of"),
        ({"ttl": 0}, "turn.ttl: expected a positive number"),
        ({"relay_addresses": ["nope"]}, "turn.relay_addresses: expected IP addresses"),
        (
            {"urls": ["turn:x"], "secret": "s" * 16, "ttll": 3},
            "turn.ttll: unknown key (did you mean ttl?)",
        ),
    ],
)
def test_turn_section_is_checked(turn: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(error)) as refused:
        load({"turn": turn})
    assert "short-turn-sec" not in str(refused.value)


def test_turn_section_accepts_turn_turns_and_stun() -> None:
    urls = [
        "turn:turn.example.com:3478?transport=udp",
        "turns:turn.example.com:5349",
        "stun:a:3478",
    ]
    config = load({"turn": {"urls": urls, "secret": "s" * 16, "relay_addresses": ["192.0.2.1"]}})
    assert config.turn.urls == tuple(urls) and config.turn.relay_addresses == ("192.0.2.1",)
    assert "s" * 16 not in repr(config.turn)


def test_relay_only_needs_relay_addresses() -> None:
    with pytest.raises(
        ConfigError, match=r"^turn\.relay_addresses: required with relay_only \(limits or a role\)"
    ):
        load({"limits": {"relay_only": True}})
    with pytest.raises(ConfigError, match=r"^turn\.relay_addresses: required"):
        load({"rooms": {"r": {"relay_only": True}}})


def test_candidate_options() -> None:
    assert load({}).rtc.allow_private_candidates is False  # a public deployment
    assert load({"server": {"dev": True}}).rtc.allow_private_candidates is True
    assert load({"rtc": {"allow_private_candidates": True}}).rtc.allow_private_candidates is True
    assert load({}).rtc.max_remote_candidates == 32
    with pytest.raises(ConfigError, match=r"^rtc\.max_remote_candidates: expected a positive"):
        load({"rtc": {"max_remote_candidates": 0}})
    assert load({"server": {"trusted_proxies": ["10.0.0.1/8"]}}).server.trusted_proxies == (
        "10.0.0.0/8",
    )
    with pytest.raises(ConfigError, match=r"^server\.trusted_proxies: expected IP addresses"):
        load({"server": {"trusted_proxies": ["proxy.example"]}})


def test_metrics_need_a_bearer_token_outside_dev() -> None:
    """/metrics shows every room's load: without --dev it is never served without a token."""
    with pytest.raises(ConfigError, match=r"^metrics\.bearer_token: required without --dev"):
        load_config(None, {"auth": RUNNABLE["auth"], "rtc": RUNNABLE["rtc"]}, {})
    dev = load_config(None, {"server": {"dev": True}}, {})
    assert dev.metrics.bearer_token is None  # loopback only, open to the developer
