"""The single-value checks and the key check shared by file sections and limit overrides."""

from __future__ import annotations

from typing import Any

import pytest

from sfu.config import LimitsConfig, ServerConfig, checks, limits_with, load_config
from sfu.config.sections import check_keys


def test_optional_lets_none_through_and_checks_the_rest() -> None:
    assert checks.optional_text("audit.path", None) is None
    assert checks.optional_text("audit.path", "a.log") == "a.log"
    with pytest.raises(
        checks.ConfigError, match=r'^audit\.path: expected a non-empty string, got ""$'
    ):
        checks.optional_text("audit.path", "")


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (checks.url_list, ["http://h:99999"], 'w: expected http(s) URLs, got "http://h:99999"'),
        (checks.url_list, ["ftp://h"], 'w: expected http(s) URLs, got "ftp://h"'),
        (
            checks.origin_list,
            ["https://h:port"],
            'w: expected origins like https://app.example.com, got "https://h:port"',
        ),
        (
            checks.origin_list,
            ["https://u@h"],
            'w: expected origins like https://app.example.com, got "https://u@h"',
        ),
    ],
)
def test_url_checks_name_the_bad_item(check: checks.Check, value: Any, message: str) -> None:
    with pytest.raises(checks.ConfigError) as refused:
        check("w", value)
    assert str(refused.value) == message


def test_unknown_names_the_closest_known_name_only_when_close() -> None:
    known = ["max_participants", "max_publishers"]
    assert str(checks.unknown("limits.max_participant", known, "key")) == (
        "limits.max_participant: unknown key (did you mean max_participants?)"
    )
    assert str(checks.unknown("limits.colour", known, "key")) == "limits.colour: unknown key"


def test_check_keys_allows_file_options_only() -> None:
    check_keys(ServerConfig, {"host": "::1", "port": 1}, "server", "key")
    with pytest.raises(checks.ConfigError, match=r"^server\.prot: unknown key \(did you mean port"):
        check_keys(ServerConfig, {"prot": 1}, "server", "key")


def test_limits_with_names_where_the_overrides_came_from() -> None:
    assert limits_with(LimitsConfig(), {"max_participants": 3}, "limits").max_participants == 3
    with pytest.raises(checks.ConfigError, match=r"^limits: expected a table of limits, got 3$"):
        limits_with(LimitsConfig(), 3, "limits")
    with pytest.raises(checks.ConfigError, match=r"^limits\.relay: unknown limit"):
        limits_with(LimitsConfig(), {"relay": True}, "limits")
    with pytest.raises(checks.ConfigError, match=r"^rooms\.r: limits\.max_publishers: expected"):
        limits_with(LimitsConfig(), {"max_publishers": -1}, "rooms.r")


def test_a_role_relay_only_must_be_a_boolean() -> None:
    runnable = {"auth": {"keys": {"k": "s" * 40}}, "rtc": {"ips": ["127.0.0.1"]}}
    roles = {"v": {"canPublish": False, "relay_only": "yes"}}
    with pytest.raises(checks.ConfigError) as refused:
        load_config(None, {**runnable, "roles": roles}, {})
    assert str(refused.value) == 'roles.v.relay_only: expected true or false, got "yes"'
