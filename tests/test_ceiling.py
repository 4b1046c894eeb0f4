"""The operator's limits are a ceiling room admins cannot lift (issue 11 item 5)."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from sfu.config import LimitsConfig
from sfu.config.ceiling import STRICTER, loosened
from sfu.config.sections import file_options
from tests.admin_helpers import call
from tests.conftest import start_server, stop_server

# option -> (operator's value, tighter values allowed, looser values refused)
CASES: dict[str, tuple[Any, list[Any], list[Any]]] = {
    "max_participants": (10, [10, 1], [11, 0]),
    "max_publishers": (4, [4, 3], [5, 0]),
    "max_tracks_per_participant": (8, [8, 1], [9, 0]),
    "max_subscriptions_per_participant": (20, [20, 2], [21, 0]),
    "max_video_bitrate": (1_000_000, [1_000_000, 300_000], [1_000_001, 0]),
    "max_duration": (3600.0, [3600.0, 60.0], [3600.5, 0.0]),
    "empty_timeout": (300.0, [300.0, 0.0], [301.0]),
    "allowed_codecs": (("opus", "vp8"), [("opus", "vp8"), ("opus",)], [("opus", "h264")]),
    "relay_only": (True, [True], [False]),
    "e2ee_required": (True, [True], [False]),
    "recording_allowed": (False, [False], [True]),
    "simulcast": (False, [False], [True]),
    "transport_cc": (False, [False], [True]),
    "audio_red": (False, [False], [True]),
    "single_use_tokens": (True, [True], [False]),
    "require_bound_tokens": (True, [True], [False]),
    "auto_record": (False, [False], [True]),
    "duplicate_identity": ("reject", ["reject"], ["replace"]),
    "max_name_bytes": (64, [64, 10], [65]),
    "max_metadata_bytes": (1024, [1024, 1], [1025]),
    "max_data_message_bytes": (16384, [16384, 100], [16385]),
    "max_bad_frames": (5, [5, 1], [6]),
    "bad_frame_window": (10.0, [10.0, 60.0], [9.0]),
}


def test_every_limit_says_which_way_is_stricter() -> None:
    assert set(STRICTER) == set(file_options(LimitsConfig)) == set(CASES)
    assert [f.name for f in fields(LimitsConfig) if f.name in STRICTER] == list(STRICTER)


@pytest.mark.parametrize("option", sorted(CASES))
def test_tighter_is_allowed_and_looser_is_named(option: str) -> None:
    ceiling_value, tighter, looser = CASES[option]
    ceiling = replace(LimitsConfig(), **{option: ceiling_value})
    for value in tighter:
        assert loosened(ceiling, replace(ceiling, **{option: value})) == [], value
    for value in looser:
        assert loosened(ceiling, replace(ceiling, **{option: value})) == [option], value


def test_unlimited_operator_limits_allow_any_limit() -> None:
    ceiling = LimitsConfig()  # counts, bitrate and duration unlimited (0)
    wanted = replace(ceiling, max_participants=1000, max_video_bitrate=5, max_duration=1.0)
    assert loosened(ceiling, wanted) == []
    assert loosened(replace(ceiling, duplicate_identity="replace"), ceiling) == []


def test_several_looser_options_are_all_named() -> None:
    ceiling = replace(LimitsConfig(), relay_only=True, max_participants=5)
    wanted = replace(ceiling, relay_only=False, max_participants=0)
    assert loosened(ceiling, wanted) == ["max_participants", "relay_only"]


async def test_a_room_admin_cannot_lift_the_operator_policy(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.jsonl"
    config = tmp_path / "keyroom.toml"
    config.write_text(
        f'[audit]\npath = "{audit_path}"\n'
        '[auth]\nmax_failures = 100\n[turn]\nrelay_addresses = ["127.0.0.1"]\n'
        "[limits]\nmax_participants = 10\n"
        "[rooms.locked]\nsingle_use_tokens = true\nrelay_only = true\n"
        'e2ee_required = true\nallowed_codecs = ["opus", "vp8"]\n'
    )
    server = start_server(tmp_path, "--config", str(config))
    try:
        ops = server.token("ops", room="locked", grants={"roomAdmin": True, "roomCreate": True})
        looser: list[dict[str, Any]] = [
            {"single_use_tokens": False},
            {"relay_only": False},
            {"e2ee_required": False},
            {"duplicate_identity": "replace"},
            {"max_participants": 11},
            {"max_participants": 0},
            {"allowed_codecs": ["opus", "vp8", "h264"]},
        ]
        for limits in looser:
            status, body = await call(
                server, "POST", "/api/rooms", ops, {"name": "locked", "limits": limits}
            )
            assert status == 403 and body["error"]["code"] == "forbidden", limits
            assert f"limits.{next(iter(limits))}" in body["error"]["message"]
        status, body = await call(
            server, "POST", "/api/rooms", ops, {"name": "locked", "limits": {"max_participants": 4}}
        )
        assert status == 201
        for limits in looser:
            status, body = await call(server, "PATCH", "/api/rooms/locked", ops, {"limits": limits})
            assert status == 403 and body["error"]["code"] == "forbidden", limits
        # Back up to the operator's limit, not past it; a protection may be turned on.
        tighter = {"max_participants": 10, "allowed_codecs": ["opus"], "max_duration": 60}
        status, body = await call(server, "PATCH", "/api/rooms/locked", ops, {"limits": tighter})
        assert status == 200
        room = body["room"]["limits"]
        assert room["single_use_tokens"] and room["relay_only"] and room["e2ee_required"]
        assert room["max_participants"] == 10 and room["allowed_codecs"] == ["opus"]
    finally:
        stop_server(server)
    # Audited, each option named (repeats of one reason are aggregated by the audit log).
    reasons = {
        record["reason"]
        for record in map(json.loads, audit_path.read_text().splitlines())
        if record.get("event") == "admin_refused"
    }
    for limits in looser:
        assert any(f"limits.{next(iter(limits))}" in reason for reason in reasons), limits
