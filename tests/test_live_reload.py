"""Issue 18.4: keys, limits, room overrides, webhooks and TURN reload without dropping a call,
by SIGHUP, `POST /api/reload` or `keyroom reload`; what cannot change live is listed; a bad file
keeps the old configuration with one clear log line."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from auth.grants import VideoGrant
from sfu.config import load_config
from signaling.client import KeyroomClient, KeyroomError, count_frames
from signaling.liveconfig import changed_options, may_reload
from signaling.media import SyntheticVideoTrack
from tests.admin_helpers import call
from tests.conftest import KEY_ID, SECRET, ServerProcess, eventually, stop_server, wait_logged
from tests.deploy_helpers import METRICS_TOKEN, start_configured
from tests.test_webhooks import Receiver
from tests.test_webhooks import serve as serve  # noqa: F401 - the fixture

OLD = "old-secret-that-is-long-enough-0123456789ab"
TURN_URL = "turn:turn.example.com:3478?transport=udp"
BASE = f'[metrics]\nbearer_token = "{METRICS_TOKEN}"\n[rtc]\nips = ["127.0.0.1"]\n'
BEFORE = (
    f'{BASE}[auth]\nkeys = {{ {KEY_ID} = "{SECRET}", old = "{OLD}" }}\n'
    "[limits]\nmax_participants = 5\n[rooms.board]\nmax_participants = 3\n"
)


def after(receiver_url: str) -> str:
    return (
        f'{BASE}[auth]\nkeys = {{ {KEY_ID} = "{SECRET}" }}\n'
        "[limits]\nmax_participants = 5\n[rooms.board]\nmax_participants = 2\n"
        f'[webhooks]\nurls = ["{receiver_url}"]\nkey = "{KEY_ID}"\n'
        f'[turn]\nurls = ["{TURN_URL}"]\nsecret = "{"t" * 32}"\n'
        "[server]\nresume_window = 10\n"
    )


def test_changed_options_name_sections_options_and_rooms(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    path.write_text(BEFORE)
    old = load_config(str(path), {}, {})
    path.write_text(after("http://127.0.0.1:9/hook"))
    new = load_config(str(path), {}, {})
    assert changed_options(old, new) == [
        "server.resume_window",
        "auth.keys",
        "webhooks.urls",
        "webhooks.key",
        "turn.urls",
        "turn.secret",
        "rooms.board",
    ]


def test_reload_needs_the_server_admin_token() -> None:
    server_admin = VideoGrant(room_list=True, room_create=True)
    assert may_reload(server_admin).allowed
    assert not may_reload(VideoGrant(room_list=True)).allowed
    assert not may_reload(VideoGrant(room="r", room_list=True, room_create=True)).allowed


def keyroom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sfu", *args], capture_output=True, text=True, timeout=30
    )


def admin_token(*where: str) -> str:
    result = keyroom(
        "token", "--key", KEY_ID, "--secret", SECRET, "--identity", "ops", "--admin", *where
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


async def test_reload_during_a_call(
    tmp_path: Path,
    serve: Callable[[Receiver], Awaitable[None]],  # noqa: F811
) -> None:
    receiver = Receiver()
    await serve(receiver)
    server = start_configured(tmp_path, BEFORE)
    alice = KeyroomClient(server.ws_url, server.token("alice", "board"))
    bob = KeyroomClient(server.ws_url, server.token("bob", "board"))
    try:
        await alice.connect()
        await bob.connect()
        await alice.publish(SyntheticVideoTrack(), source="camera")
        remote = await bob.next_track(timeout=20)
        assert await count_frames(remote.track, 10, enough=5) >= 5

        (tmp_path / "keyroom.toml").write_text(after(receiver.url))
        server.process.send_signal(signal.SIGHUP)
        await wait_logged(server, "SIGHUP: configuration reloaded; changed: auth.keys, webhooks")
        assert "SIGHUP: not applied until a restart (they cannot change live):" in server.log()
        assert "server.resume_window" in server.log()
        assert SECRET not in server.log() and OLD not in server.log()
        await check_applied(server, receiver)
        # The call went on through it all.
        assert await count_frames(remote.track, 10, enough=5) >= 5
        assert alice.close_code is None and bob.close_code is None

        # A broken file: nothing changes, one line says why.
        (tmp_path / "keyroom.toml").write_text(BASE + "[auth]\nkeys = 5\n")
        server.process.send_signal(signal.SIGHUP)
        await wait_logged(
            server,
            "ERROR keyroom.server: SIGHUP: configuration not reloaded, the old one stays in use:"
            " auth.keys: expected a table",
        )
        await alice.ping()
        await remote_and_admin_reloads(server, tmp_path, receiver)
    finally:
        await alice.close()
        await bob.close()
        stop_server(server)


async def check_applied(server: ServerProcess, receiver: Receiver) -> None:
    # Keys: the removed one is refused, the kept one admits.
    with pytest.raises(KeyroomError, match="unauthorized"):
        await KeyroomClient(server.ws_url, server.token("x", key_id="old", secret=OLD)).connect()
    # The live room took its new override (3 -> 2): alice and bob fill it.
    with pytest.raises(KeyroomError, match="room_full"):
        await KeyroomClient(server.ws_url, server.token("carol", "board")).connect()
    # TURN and webhooks: a newcomer elsewhere gets the TURN server, the receiver hears of it.
    dave = KeyroomClient(server.ws_url, server.token("dave", "lobby"))
    joined = await dave.connect()
    assert [s["urls"] for s in joined["ice_servers"]] == [[TURN_URL]]
    events = await receiver.wait_for(2)
    assert {"room_started", "participant_joined"} <= {e["event"] for e in events}
    await dave.leave()


async def remote_and_admin_reloads(
    server: ServerProcess, tmp_path: Path, receiver: Receiver
) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text(after(receiver.url))
    status, body = await call(server, "POST", "/api/reload", admin_token())
    assert status == 200 and body["ok"] is True, body
    assert body["restart_needed"] == ["server.resume_window"]
    assert (await call(server, "POST", "/api/reload", admin_token("--room", "board")))[0] == 403
    result = keyroom("reload", "--url", server.http_url, "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("reloaded; changed: nothing")
    sent = keyroom("reload", "--pid", str(server.process.pid))
    assert sent.returncode == 0, sent.stderr
    await eventually(lambda: server.log().count("SIGHUP: configuration reloaded") == 2, 15)
