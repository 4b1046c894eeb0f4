"""Issue 18.5 and 18.6: `keyroom token --config FILE` signs with the server's own key and holds
its max_token_ttl; `--admin` mints the admin tokens the admin API takes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from tests.admin_helpers import call
from tests.conftest import KEY_ID, SECRET, ServerProcess
from tests.conftest import server as server  # noqa: F401 - the fixture

OTHER = "another-secret-that-is-long-enough-987654"


def keyroom(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("KEYROOM_KEYS", "KEYROOM_SECRET")
    }
    return subprocess.run(
        [sys.executable, "-m", "sfu", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**environment, **env},
    )


def config_file(tmp_path: Path, keys: str = f'{KEY_ID} = "{SECRET}"', ttl: str = "") -> str:
    path = tmp_path / "keyroom.toml"
    path.write_text(f"[auth]\nkeys = {{ {keys} }}\n{ttl}")
    return str(path)


def claims(result: subprocess.CompletedProcess[str], secret: str = SECRET) -> dict:
    assert result.returncode == 0, result.stderr
    return jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])  # type: ignore[no-any-return]


def test_config_gives_the_key_and_its_secret(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    result = keyroom("token", "--config", path, "--identity", "alice", "--room", "r")
    assert claims(result)["video"]["room"] == "r"
    assert jwt.get_unverified_header(result.stdout.strip())["kid"] == KEY_ID
    # Two keys: the operator picks one by id.
    two = config_file(tmp_path, f'a = "{SECRET}", b = "{OTHER}"')
    refused = keyroom("token", "--config", two, "--identity", "alice", "--room", "r")
    assert refused.returncode == 2
    assert "--key: choose one of the config's signing keys (a, b)" in refused.stderr
    picked = keyroom("token", "--config", two, "--key", "b", "--identity", "x", "--room", "r")
    assert claims(picked, OTHER)["sub"] == "x"
    # KEYROOM_KEYS replaces the file's keys, as for the server.
    env = keyroom(
        "token", "--config", path, "--identity", "x", "--room", "r", KEYROOM_KEYS=f"e={OTHER}"
    )
    assert claims(env, OTHER)["iss"] == "e"


def test_a_ttl_over_the_servers_maximum_is_refused_or_warned(tmp_path: Path) -> None:
    path = config_file(tmp_path, ttl="max_token_ttl = 3600\n")
    args = ["token", "--identity", "a", "--room", "r", "--ttl", "2h"]
    refused = keyroom(*args, "--config", path)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "exceeds auth.max_token_ttl of" in refused.stderr and "(3600 s)" in refused.stderr
    assert claims(keyroom(*args[:-1], "1h", "--config", path))["sub"] == "a"
    # Without the config: the default maximum (6 h), a warning, and the token.
    warned = keyroom(*args[:-1], "1d", "--key", KEY_ID, KEYROOM_SECRET=SECRET)
    assert "warning: --ttl 1d (86400 s) exceeds the default auth.max_token_ttl" in warned.stderr
    assert claims(warned)["sub"] == "a"


@pytest.mark.parametrize(
    ("room", "granted"),
    [(None, {"roomList": True, "roomCreate": True}), ("board", {"roomAdmin": True})],
)
def test_admin_tokens_carry_the_admin_grants(room: str | None, granted: dict) -> None:
    where = ["--room", room] if room else []
    result = keyroom(
        "token", "--key", KEY_ID, "--identity", "ops", "--admin", *where, KEYROOM_SECRET=SECRET
    )
    video = claims(result)["video"]
    assert video["roomJoin"] is False
    assert {k: video[k] for k in granted} == granted
    assert video.get("room") == room


def test_without_room_or_admin_the_room_is_required() -> None:
    result = keyroom("token", "--key", KEY_ID, "--identity", "a", KEYROOM_SECRET=SECRET)
    assert result.returncode == 2
    assert "--room is required (or --admin" in result.stderr


async def test_admin_tokens_work_against_a_server(server: ServerProcess) -> None:  # noqa: F811
    def mint(*where: str) -> str:
        result = keyroom(
            "token", "--key", KEY_ID, "--identity", "ops", "--admin", *where, KEYROOM_SECRET=SECRET
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    server_admin, board_admin = mint(), mint("--room", "board")
    assert (await call(server, "POST", "/api/rooms", server_admin, {"name": "board"}))[0] == 201
    status, body = await call(server, "GET", "/api/rooms", server_admin)
    assert status == 200 and [r["name"] for r in body["rooms"]] == ["board"]
    assert (await call(server, "GET", "/api/rooms/board", board_admin))[0] == 200
    # A room admin of one room is not the server's, nor another room's.
    assert (await call(server, "GET", "/api/rooms", board_admin))[0] == 403
    assert (await call(server, "GET", "/api/rooms/board", server_admin))[0] == 403
