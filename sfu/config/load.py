"""Where the configuration comes from: TOML file < environment < command line, then finalize()."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from sfu.config.checks import ConfigError, show, table, unknown
from sfu.config.rules import finalize
from sfu.config.sections import PLAIN_SECTIONS, TYPED_SECTIONS, Config, check_keys


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
    layers: list[tuple[str, Mapping[str, Mapping[str, Any]]]] = []
    if env.get("KEYROOM_KEYS"):
        keys = parse_keys(env["KEYROOM_KEYS"].split(","), "KEYROOM_KEYS")
        layers.append(("KEYROOM_KEYS", {"auth": {"keys": keys}}))
    layers.append(("--key", overrides))
    origin = KeyOrigin(f"config file {path}" if path else "")
    origin.note(data.get("auth"), origin.first)
    for name, layer in layers:
        origin.note(layer.get("auth"), name)
        for section, options in layer.items():
            base = data.get(section, {})
            # A non-table in the file is reported by _build; do not merge into it.
            if isinstance(base, dict):
                data[section] = {**base, **options}
    config = _build(data)
    auth = replace(config.auth, key_sources=origin.sources(), key_warnings=tuple(origin.warnings))
    return finalize(replace(config, auth=auth))


class KeyOrigin:
    """Where the key table in force came from: a later source replaces it whole, so an
    operator who set keys in two places is warned, naming both."""

    def __init__(self, first: str) -> None:
        self.first = first
        self.source = ""
        self.keys: list[str] = []
        self.warnings: list[str] = []

    def note(self, auth: Any, source: str) -> None:
        keys = auth.get("keys") if isinstance(auth, Mapping) else None
        if not isinstance(keys, Mapping) or not keys:
            return
        if self.keys:
            self.warnings.append(
                f"{source} replaces the signing keys of {self.source} ({', '.join(self.keys)}):"
                f" in use now: {', '.join(map(str, keys))}"
            )
        self.source, self.keys = source, [str(k) for k in keys]

    def sources(self) -> dict[str, str]:
        return {key: self.source for key in self.keys}


def parse_config_file(path: str | None, errors: list[ConfigError] | None = None) -> Config:
    """The file's options, checked one by one but without finalize()'s start-up rules.

    With `errors`, a section that fails its checks is collected there and left at its defaults
    instead of raising, so `keyroom doctor` can report every finding at once.
    """
    return _build(_read_file(path) if path else {}, errors)


def parse_keys(items: Iterable[str], source: str) -> dict[str, str]:
    """Parse `KEY=SECRET` items (one --key each, or KEYROOM_KEYS split on commas)."""
    keys: dict[str, str] = {}
    for item in items:
        key_id, sep, secret = item.strip().partition("=")
        if not sep or not key_id or not secret:
            # Show nothing of the item: without "=" it may be the secret itself.
            raise ConfigError(f"{source}: expected KEY=SECRET")
        if key_id in keys:
            raise ConfigError(f"{source}: key id {show(key_id)} given twice")
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


def _build(data: Mapping[str, Any], errors: list[ConfigError] | None = None) -> Config:
    sections: dict[str, Any] = {}
    for name, value in data.items():
        try:
            sections[name] = _section(name, value)
        except ConfigError as e:
            if errors is None:
                raise
            errors.append(e)
    return Config(**sections)


def _section(name: str, value: Any) -> Any:
    if name in PLAIN_SECTIONS:
        return table(name, value)
    if name in TYPED_SECTIONS:
        cls = TYPED_SECTIONS[name]
        options = table(name, value)
        check_keys(cls, options, name, "key")
        return cls(**options)
    raise unknown(str(name), [*TYPED_SECTIONS, *PLAIN_SECTIONS], "section")
