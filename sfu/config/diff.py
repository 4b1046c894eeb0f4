"""What an admin change changed, for its audit record: option -> [before, after]."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from sfu.config.sections import LimitsConfig


def limit_changes(before: LimitsConfig, after: LimitsConfig) -> dict[str, list[Any]]:
    changes: dict[str, list[Any]] = {}
    for option in fields(LimitsConfig):
        old, new = getattr(before, option.name), getattr(after, option.name)
        if old != new:
            changes[option.name] = [list(old), list(new)] if isinstance(old, tuple) else [old, new]
    return changes
