"""The `keyroom` command line: `token` output, `serve` flags and its config errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest

from sfu.cli import main
from sfu.config import DEV_KEY_ID, Config

SECRET = "cli-test-secret-" + "x" * 32
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "keyroom")
# The same command two ways: the module and the installed console script.
COMMANDS = [[sys.executable, "-m", "sfu"], [CONSOLE_SCRIPT]]


def run(command: list[str], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # Start from a clean slate: a KEYROOM_* variable from the caller's shell must not leak in.
    base = {k: v for k, v in os.environ.items() if not k.startswith("KEYROOM_")}
    return subprocess.run(
        [*command, *args], env={**base, **env}, capture_output=True, text=True, timeout=60
    )


def decode(token: str) -> dict:
    return jwt.decode(token, SECRET, algorithms=["HS256"])


@pytest.mark.parametrize("command", COMMANDS, ids=["module", "console-script"])
def test_token_prints_one_jwt_line(command: list[str]) -> None:
    before = time.time()
    result = run(
        command,
        "token",
        "--key",
        "k1",
        "--secret",
        SECRET,
        "--identity",
        "alice",
        "--room",
        "standup",
        "--ttl",
        "10m",
        "--name",
        "Alice",
        "--metadata",
        '{"team":"a"}',
        "--grant",
        "canPublish=false",
        "--grant",
        "canSubscribe=true",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and result.stdout.endswith("\n")
    token = result.stdout.strip()
    claims = decode(token)
    assert "k1" in (claims.get("iss"), jwt.get_unverified_header(token).get("kid"))
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert claims["sub"] == "alice"
    assert claims["name"] == "Alice"
    assert claims["metadata"] == '{"team":"a"}'
    assert before + 600 - 5 <= claims["exp"] <= time.time() + 600 + 5
    video = claims["video"]
    assert video["room"] == "standup"
    assert video["roomJoin"] is True
    assert video["canPublish"] is False
    assert video["canSubscribe"] is True


def test_token_secret_from_env_and_role() -> None:
    result = run(
        COMMANDS[0],
        "token",
        "--key",
        "k1",
        "--identity",
        "bob",
        "--room",
        "r",
        "--role",
        "viewer",
        KEYROOM_SECRET=SECRET,
    )
    assert result.returncode == 0, result.stderr
    claims = decode(result.stdout.strip())
    assert claims["sub"] == "bob"
    assert claims["role"] == "viewer"


def test_token_without_secret_exits_2() -> None:
    result = run(COMMANDS[0], "token", "--key", "k1", "--identity", "a", "--room", "r")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("keyroom: error: no secret: use --secret")


def test_token_with_bad_ttl_exits_2() -> None:
    args = ["token", "--key", "k1", "--identity", "a", "--room", "r", "--ttl", "soon"]
    result = run(COMMANDS[0], *args, KEYROOM_SECRET=SECRET)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("keyroom: error: ")
    assert SECRET not in result.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=["module", "console-script"])
def test_serve_with_a_bad_config_exits_2_naming_the_key(command: list[str], tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text('[limits]\nmax_participants = "x"\n')
    result = run(command, "serve", "--dev", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr == (
        'keyroom: error: limits.max_participants: expected a non-negative integer, got "x"\n'
    )


def test_serve_config_from_env_path(tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text("[server]\nport = -5\n")
    result = run(COMMANDS[0], "serve", "--dev", KEYROOM_CONFIG=str(config))
    assert result.returncode == 2
    assert "server.port: expected a port number" in result.stderr


def test_serve_refuses_to_run_without_keys() -> None:
    result = run(COMMANDS[0], "serve", "--rtc-ip", "127.0.0.1")
    assert result.returncode == 2
    assert "no signing keys: use --key KEY=SECRET, KEYROOM_KEYS or [auth] keys" in result.stderr


def test_serve_short_key_is_named_not_shown() -> None:
    result = run(COMMANDS[0], "serve", "--dev", "--key", "short=tooshortsecret")
    assert result.returncode == 2
    assert "auth.keys.short: HS256 secret is shorter than 32 bytes" in result.stderr
    assert "tooshortsecret" not in result.stderr


def test_serve_malformed_key_is_not_shown() -> None:
    result = run(COMMANDS[0], "serve", "--dev", "--key", SECRET)
    assert result.returncode == 2
    assert result.stderr == "keyroom: error: --key: expected KEY=SECRET\n"


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """Stands in for signaling.server so `serve` can be checked without starting anything."""
    seen: list[Config] = []

    def run_server(config: Config, source: Callable[[], Config] | None = None) -> int:
        seen.append(config)
        if source is not None:
            assert source().server == config.server  # SIGHUP reads the same sources again
        return 7

    module = types.ModuleType("signaling.server")
    module.run_server = run_server  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "signaling.server", module)
    for name in ("KEYROOM_KEYS", "KEYROOM_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return seen


def test_serve_maps_flags_to_config(
    fake_server: list[Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "keyroom.toml"
    config_file.write_text(
        "[server]\nport = 9000\njoin_timeout = 4\n[limits]\nmax_publishers = 2\n"
        f'[metrics]\nbearer_token = "{"m" * 32}"\n'
    )
    monkeypatch.setenv("KEYROOM_KEYS", f"env={SECRET}")
    argv = ["serve", "--config", str(config_file), "--host", "0.0.0.0", "--port", "9001"]
    argv += ["--rtc-ip", "192.0.2.10", "--rtc-ip", "192.0.2.11", "--key", f"a={SECRET}"]
    # One --key per key: unlike KEYROOM_KEYS, its secret may hold a comma.
    argv += ["--key", f"b={SECRET},2", "--allow-origin", "https://app.example"]
    argv += ["--insecure-plaintext", "--log-level", "warning"]
    assert main(argv) == 7
    (config,) = fake_server
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9001)
    assert config.server.join_timeout == 4.0
    assert config.server.insecure_plaintext and not config.server.dev
    assert config.server.allowed_origins == ("https://app.example",)
    assert config.server.log_level == "warning"
    assert config.rtc.ips == ("192.0.2.10", "192.0.2.11")
    assert dict(config.auth.keys) == {"a": SECRET, "b": f"{SECRET},2"}
    assert config.limits.max_publishers == 2


def test_serve_dev_hands_over_a_generated_key(fake_server: list[Config]) -> None:
    assert main(["serve", "--dev", "--port", "0"]) == 7
    (config,) = fake_server
    assert config.server.dev and config.server.port == 0
    assert config.rtc.ips == ("127.0.0.1",)
    # run_server prints it (with a join link) when this flag is set.
    assert config.auth.generated_dev_key
    assert list(config.auth.keys) == [DEV_KEY_ID]
