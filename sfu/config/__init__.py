"""Server configuration: TOML file < environment < command line, validated into frozen dataclasses.

- `sections`: the sections and their options, each with its default and its check.
- `checks`: the checks of single values (error messages name `section.key`, never a secret).
- `rules`: finalize(): dev-mode defaults and the start-up rules across options.
- `load`: reading the file, the environment and the flags, in that order.
"""

from sfu.config.checks import ConfigError
from sfu.config.load import load_config, parse_config_file, parse_keys
from sfu.config.rules import DEV_KEY_ID, NO_KEYS_MESSAGE, finalize
from sfu.config.sections import (
    DUPLICATE_IDENTITY_POLICIES,
    LOG_LEVELS,
    PLAIN_SECTIONS,
    TYPED_SECTIONS,
    AuditConfig,
    AuthConfig,
    ClusterConfig,
    Config,
    LimitsConfig,
    MetricsConfig,
    NodeConfig,
    RecordingConfig,
    RtcConfig,
    SecurityConfig,
    ServerConfig,
    TurnConfig,
    WebhooksConfig,
    limits_with,
    room_limits,
)

__all__ = [
    "DEV_KEY_ID",
    "DUPLICATE_IDENTITY_POLICIES",
    "LOG_LEVELS",
    "NO_KEYS_MESSAGE",
    "PLAIN_SECTIONS",
    "TYPED_SECTIONS",
    "AuditConfig",
    "AuthConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "LimitsConfig",
    "MetricsConfig",
    "NodeConfig",
    "RtcConfig",
    "SecurityConfig",
    "ServerConfig",
    "RecordingConfig",
    "TurnConfig",
    "WebhooksConfig",
    "finalize",
    "limits_with",
    "load_config",
    "parse_config_file",
    "parse_keys",
    "room_limits",
]
