"""Checks of single option values: each takes the option's dotted name and its raw value and
returns the normalised value, or raises ConfigError naming the option (never a secret's value).

msgspec (`msgspec.convert` into Structs) was tried for these: it validates on decoding only (not
a section built in code or by `dataclasses.replace`, as the admin API does), its errors name a
type (`Expected int, got str`) rather than the rule and the value given, and an unknown key gets
no closest name; most rules here (addresses, origins, URLs, codecs, secrets) are not types.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import SplitResult, urlsplit

from auth.keys import MIN_SECRET_BYTES
from auth.tokens import MAX_LEEWAY

MIN_TURN_SECRET_BYTES = 16  # HMAC-SHA1 key: guessing it forges TURN credentials for anyone
MIN_BEARER_TOKEN_CHARS = 16
KNOWN_CODECS = frozenset({"opus", "g722", "pcmu", "pcma", "vp8", "h264"})  # what aiortc negotiates
GENERATE_SECRET = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"

Check = Callable[[str, Any], Any]


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the option, never a secret."""


def show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def expected(name: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"{name}: expected {what}, got {show(value)}")


def integer(minimum: int, what: str, maximum: int | None = None) -> Check:
    def check(name: str, value: Any) -> int:
        # bool is an int subclass; `true` where a number belongs is a mistake, not 1.
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            raise expected(name, what, value)
        return value

    return check


def number(
    what: str, minimum: float = 0.0, *, allow_minimum: bool = True, maximum: float = math.inf
) -> Check:
    def check(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise expected(name, what, value)
        result = float(value)
        if (
            not math.isfinite(result)
            or result < minimum
            or (result == minimum and not allow_minimum)
            or result > maximum
        ):
            raise expected(name, what, value)
        return result

    return check


non_negative_int = integer(0, "a non-negative integer")
positive_int = integer(1, "a positive integer")
port = integer(0, "a port number from 0 to 65535", 65535)
non_negative_seconds = number("a non-negative number of seconds")
factor_above_one = number("a number above 1", 1.0, allow_minimum=False)
positive_seconds = number("a positive number of seconds", allow_minimum=False)
leeway = number(f"a number of seconds from 0 to {MAX_LEEWAY:g}", maximum=MAX_LEEWAY)


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise expected(name, "true or false", value)
    return value


def text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise expected(name, "a non-empty string", value)
    return value


def optional(check: Check) -> Check:
    """`check`, with None (the option unset) let through."""

    def check_unless_none(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return check_unless_none


optional_bool = optional(boolean)
optional_text = optional(text)


def choice(*options: str) -> Check:
    def check(name: str, value: Any) -> str:
        if value not in options:
            raise expected(name, "one of " + ", ".join(f'"{o}"' for o in options), value)
        chosen: str = value
        return chosen

    return check


def table(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise expected(name, "a table", value)
    return dict(value)


def room_hours(name: str, value: Any) -> dict[str, tuple[int, int]]:
    """Room name -> "HH:MM-HH:MM" (UTC) as minutes of the day (start, end); end may wrap."""
    rooms = table(name, value)
    hours: dict[str, tuple[int, int]] = {}
    for room, span in rooms.items():
        if isinstance(span, tuple):  # already checked (a config built in code)
            span = f"{span[0] // 60:02d}:{span[0] % 60:02d}-{span[1] // 60:02d}:{span[1] % 60:02d}"
        parts = span.split("-") if isinstance(span, str) else []
        try:
            start, end = (_minutes(part) for part in parts)
        except ValueError:
            raise expected(f"{name}.{room}", '"HH:MM-HH:MM" (UTC)', span) from None
        hours[room] = (start, end)
    return hours


def _minutes(text: str) -> int:
    hour, sep, minute = text.strip().partition(":")
    if not sep or not (hour.isdigit() and minute.isdigit()):
        raise ValueError(text)
    if not (0 <= int(hour) <= 23 and 0 <= int(minute) <= 59):
        raise ValueError(text)
    return int(hour) * 60 + int(minute)


def string_list(name: str, value: Any) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise expected(name, "a list of strings", value)
    return list(value)


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def ip_list(name: str, value: Any) -> tuple[str, ...]:
    addresses = []
    for item in string_list(name, value):
        try:
            address = ipaddress.ip_address(item)
        except ValueError:
            raise expected(name, "IP addresses", item) from None
        # An address that cannot be a candidate (0.0.0.0, multicast) must not be advertised.
        if address.is_unspecified or address.is_multicast:
            raise expected(name, "unicast IP addresses of this host", item)
        addresses.append(str(address))
    return _unique(addresses)


def network_list(name: str, value: Any) -> tuple[str, ...]:
    networks = []
    for item in string_list(name, value):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise expected(name, "IP addresses or networks like 10.0.0.0/8", item) from None
    return _unique(networks)


def _http_url(name: str, item: str, what: str) -> SplitResult:
    """`item` split, if it is an http(s) URL with a host and a valid port."""
    try:
        parts = urlsplit(item)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise expected(name, what, item) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise expected(name, what, item)
    return parts


def url_list(name: str, value: Any) -> tuple[str, ...]:
    for item in string_list(name, value):
        _http_url(name, item, "http(s) URLs")
    return _unique(list(value))


def _url_of(name: str, value: Any, schemes: tuple[str, ...], what: str) -> SplitResult:
    """`value` split, if it is a URL of one of `schemes` with a valid port."""
    try:
        parts = urlsplit(text(name, value))
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise expected(name, what, value) from None
    if parts.scheme not in schemes:
        raise expected(name, what, value)
    return parts


def redis_url(name: str, value: Any) -> str:
    what = "a Redis URL like redis://host:6379/0"
    parts = _url_of(name, value, ("redis", "rediss", "unix"), what)
    if not (parts.hostname or parts.path):
        raise expected(name, what, value)
    return str(value)


def ws_url(name: str, value: Any) -> str:
    what = "a WebSocket URL like wss://node1.example.com/rtc"
    if not _url_of(name, value, ("ws", "wss"), what).hostname:
        raise expected(name, what, value)
    return str(value)


optional_redis_url = optional(redis_url)
optional_ws_url = optional(ws_url)


def origin_list(name: str, value: Any) -> tuple[str, ...]:
    what = "origins like https://app.example.com"
    origins = []
    for item in string_list(name, value):
        parts = _http_url(name, item, what)
        if (
            parts.username is not None
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise expected(name, what, item)
        # Browsers send the scheme and host in lower case; compare against that form.
        origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return _unique(origins)


def turn_urls(name: str, value: Any) -> tuple[str, ...]:
    what = "TURN/STUN URLs like turn:turn.example.com:3478?transport=udp or turns:host:5349"
    for item in string_list(name, value):
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
            raise expected(name, what, item)
    return _unique(list(value))


def codec_list(name: str, value: Any) -> tuple[str, ...]:
    codecs = [c.lower() for c in string_list(name, value)]
    unknown = [c for c in codecs if c not in KNOWN_CODECS]
    if unknown or not codecs:
        what = "a non-empty list of " + ", ".join(sorted(KNOWN_CODECS))
        raise expected(name, what, unknown or value)
    return _unique(codecs)


def signing_keys(name: str, value: Any) -> Mapping[str, str]:
    # Never show a value here: it is a secret.
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected a table of key id = secret")
    for key_id, secret in value.items():
        if not isinstance(key_id, str) or not key_id.isprintable() or not 0 < len(key_id) <= 128:
            raise expected(name, "key ids of 1 to 128 printable characters", key_id)
        if "=" in key_id or "," in key_id:
            raise expected(name, 'key ids without "=" or ","', key_id)
        if not isinstance(secret, str):
            raise ConfigError(f"{name}.{key_id}: expected a secret string")
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"{name}.{key_id}: HS256 secret is shorter than {MIN_SECRET_BYTES} bytes;"
                f" generate one with: {GENERATE_SECRET}"
            )
    return MappingProxyType(dict(value))


def public_keys(name: str, value: Any) -> Mapping[str, str]:
    keys = table(name, value)
    for key_id, pem in keys.items():
        if not isinstance(pem, str) or "BEGIN PUBLIC KEY" not in pem:
            raise ConfigError(f"{name}: expected a PEM public key for key id {show(key_id)}")
    return MappingProxyType(keys)


def turn_secret(name: str, value: Any) -> str:
    # Never show the value: it is a secret.
    if not isinstance(value, str) or len(value.encode()) < MIN_TURN_SECRET_BYTES:
        raise ConfigError(
            f"{name}: expected a string of at least {MIN_TURN_SECRET_BYTES} bytes;"
            f" generate one with: {GENERATE_SECRET}"
        )
    return value


optional_turn_secret = optional(turn_secret)


def bearer_token(name: str, value: Any) -> str:
    # Never show the value: it is a secret.
    if not isinstance(value, str) or len(value) < MIN_BEARER_TOKEN_CHARS or not value.isprintable():
        raise ConfigError(
            f"{name}: expected a printable string of at least {MIN_BEARER_TOKEN_CHARS} characters"
        )
    return value


optional_bearer_token = optional(bearer_token)


def unknown(name: str, known: list[str], kind: str) -> ConfigError:
    """`name` is not one of `known`: say so, with the closest known name if one is close."""
    leaf = name.rpartition(".")[2]
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"{name}: unknown {kind}{hint}")
