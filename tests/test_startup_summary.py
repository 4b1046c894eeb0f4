"""Issue 18.3: the start-up log says what is in force, and keys replaced by another source are
a warning naming both sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfu.config import ConfigError, load_config
from signaling.summary import startup_summary
from tests.conftest import KEY_ID, SECRET, eventually, stop_server
from tests.deploy_helpers import METRICS_TOKEN, start_configured

OTHER_SECRET = "another-secret-that-is-long-enough-987654"
FILE_KEYS = f'[auth]\nkeys = {{ corp-a = "{SECRET}" }}\n'
RUNNABLE = f'[metrics]\nbearer_token = "{METRICS_TOKEN}"\n[rtc]\nips = ["127.0.0.1"]\n'


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "keyroom.toml"
    path.write_text(text)
    return str(path)


def test_keys_replaced_by_the_environment_are_a_warning_naming_both(tmp_path: Path) -> None:
    path = write(tmp_path, FILE_KEYS + RUNNABLE)
    config = load_config(path, {}, {"KEYROOM_KEYS": f"corp-b={OTHER_SECRET}"})
    assert dict(config.auth.key_sources) == {"corp-b": "KEYROOM_KEYS"}
    (warning,) = config.auth.key_warnings
    assert warning.startswith(f"KEYROOM_KEYS replaces the signing keys of config file {path}")
    assert "corp-a" in warning and "corp-b" in warning
    alone = load_config(path, {}, {})
    assert dict(alone.auth.key_sources) == {"corp-a": f"config file {path}"}
    assert alone.auth.key_warnings == ()


def test_the_webhook_key_error_says_where_the_keys_came_from(tmp_path: Path) -> None:
    hooks = '[webhooks]\nurls = ["https://hooks.example.com/k"]\nkey = "corp-a"\n'
    path = write(tmp_path, FILE_KEYS + RUNNABLE + hooks)
    with pytest.raises(ConfigError, match="the keys in use came from KEYROOM_KEYS alone"):
        load_config(path, {}, {"KEYROOM_KEYS": f"corp-b={OTHER_SECRET}"})


def test_the_summary_names_each_configured_thing(tmp_path: Path) -> None:
    text = (
        FILE_KEYS
        + RUNNABLE
        + '[audit]\npath = "/var/log/keyroom/audit.jsonl"\n'
        + '[webhooks]\nurls = ["https://hooks.example.com/k"]\nkey = "corp-a"\n'
        + "[limits]\nmax_participants = 8\n[rooms.board]\nmax_participants = 3\n"
    )
    lines = "\n".join(startup_summary(load_config(write(tmp_path, text), {}, {})))
    for expected in (
        "signaling: http://127.0.0.1:7880 (no TLS",
        "media on 127.0.0.1, UDP ports any; private client addresses refused",
        f"signing keys: corp-a (config file {tmp_path}/keyroom.toml)",
        "audit log: /var/log/keyroom/audit.jsonl",
        "webhooks: webhooks.urls[0] (https://hooks.example.com) (key corp-a)",
        "/metrics: bearer token required",
        "limits: max_participants=8",
        "room overrides: board",
    ):
        assert expected in lines
    assert SECRET not in lines and METRICS_TOKEN not in lines


async def test_serve_logs_the_summary_and_the_key_warning(tmp_path: Path) -> None:
    text = FILE_KEYS + RUNNABLE
    server = start_configured(tmp_path, text, env={"KEYROOM_KEYS": f"{KEY_ID}={SECRET}"})
    try:
        await eventually(lambda: "/metrics: bearer token required" in server.log(), 10)
        log = server.log()
        assert f"signing keys: {KEY_ID} (KEYROOM_KEYS)" in log
        assert (
            "WARNING keyroom.server: KEYROOM_KEYS replaces the signing keys of config file" in log
        )
        assert SECRET not in log
    finally:
        stop_server(server)
