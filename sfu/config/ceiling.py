"""The operator's limits are a ceiling: a room admin (PATCH or POST of a room) may make a room
stricter than `[limits]` and its `[rooms.NAME]` section, never looser.

"Stricter" per option: counts, bitrate and duration where 0 means unlimited are stricter when
limited and lower; sizes and timeouts when lower; a protection (`relay_only`, `e2ee_required`,
`single_use_tokens`) when on; `recording_allowed`, `auto_record`, `simulcast`,
`transport_cc` and `audio_red` when off; `allowed_codecs` when a subset;
`duplicate_identity = "reject"` over `"replace"` (a holder of the identity's token cannot push
the present session out); `bad_frame_window` when longer (more bad frames counted together).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sfu.config.sections import LimitsConfig

Stricter = Callable[[Any, Any], bool]  # (operator's value, wanted value) -> not looser


def _limited_and_lower(ceiling: float, wanted: float) -> bool:
    """0 means unlimited: under a limit, 0 would lift it."""
    return ceiling == 0 or 0 < wanted <= ceiling


def _lower(ceiling: float, wanted: float) -> bool:
    return wanted <= ceiling


def _longer(ceiling: float, wanted: float) -> bool:
    return wanted >= ceiling


def _kept_on(ceiling: bool, wanted: bool) -> bool:
    return wanted or not ceiling


def _kept_off(ceiling: bool, wanted: bool) -> bool:
    return ceiling or not wanted


def _subset(ceiling: tuple[str, ...], wanted: tuple[str, ...]) -> bool:
    return set(wanted) <= set(ceiling)


def _reject_over_replace(ceiling: str, wanted: str) -> bool:
    return wanted in (ceiling, "reject")


# Every option of [limits] (tests/test_ceiling.py holds it to that).
STRICTER: dict[str, Stricter] = {
    "max_participants": _limited_and_lower,
    "max_publishers": _limited_and_lower,
    "max_tracks_per_participant": _limited_and_lower,
    "max_subscriptions_per_participant": _limited_and_lower,
    "max_video_bitrate": _limited_and_lower,
    "max_duration": _limited_and_lower,
    "empty_timeout": _lower,
    "allowed_codecs": _subset,
    "relay_only": _kept_on,
    "e2ee_required": _kept_on,
    "recording_allowed": _kept_off,
    "simulcast": _kept_off,
    "transport_cc": _kept_off,
    "audio_red": _kept_off,
    "single_use_tokens": _kept_on,
    "require_bound_tokens": _kept_on,
    "auto_record": _kept_off,
    "duplicate_identity": _reject_over_replace,
    "max_name_bytes": _lower,
    "max_metadata_bytes": _lower,
    "max_data_message_bytes": _lower,
    "max_bad_frames": _lower,
    "bad_frame_window": _longer,
}


def loosened(ceiling: LimitsConfig, wanted: LimitsConfig) -> list[str]:
    """The options of `wanted` looser than the operator's `ceiling`, in declaration order."""
    return [
        name
        for name, stricter in STRICTER.items()
        if not stricter(getattr(ceiling, name), getattr(wanted, name))
    ]
