"""Issue 18, acceptance: a first deployment as an operator makes it, from docs/deploy.md alone.

The documented config (TLS, two keys, limits, a room override, protected metrics, an audit
file, webhooks) with this test's certificate, paths and addresses; two clients on a private
network (a veth pair inside the test's namespace); tokens from `keyroom token --config`; a live
limit change through the admin API; SIGHUP with changed keys and limits while the call goes on;
the audit log verified; a clean shutdown the clients hear as such.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from livekit.api import TokenVerifier, WebhookReceiver

from auth.tokens import mint_token
from loadtest.spawn import free_port
from signaling.client import KeyroomClient, KeyroomError, count_frames
from signaling.media import SyntheticAudioTrack, SyntheticVideoTrack
from tests.conftest import ServerProcess, eventually, session_end, stop_server
from tests.deploy_helpers import CLIENT_IP, private_network, start_configured
from tests.test_deploy_docs import deploy_config
from tests.test_tls import trusting, write_self_signed
from tests.test_webhooks import Receiver
from tests.test_webhooks import serve as serve  # noqa: F401 - the fixture

SECRET_A = "corp-a-secret-for-the-first-deployment-0001"
SECRET_B = "corp-b-secret-for-the-first-deployment-0002"
SECRET_C = "corp-c-secret-for-the-first-deployment-0003"
METRICS = "metrics-token-for-the-first-deployment"


def operator_config(
    tmp_path: Path, server_ip: str, port: int, hook: str, cert: Path, key: Path
) -> str:
    """docs/deploy.md's config with this machine's values, as an operator fills it in."""
    text = deploy_config()
    for documented, ours in (
        ("10.0.0.10", server_ip),
        ("port = 7880", f"port = {port}"),
        ("/etc/keyroom/tls/fullchain.pem", str(cert)),
        ("/etc/keyroom/tls/privkey.pem", str(key)),
        ('"/var/lib/keyroom"', f'"{tmp_path / "state"}"'),
        ("/var/log/keyroom/audit.jsonl", str(tmp_path / "log" / "audit.jsonl")),
        ("https://intranet.example.com/keyroom-hook", hook),
        ("replace-me-with-secrets-token-urlsafe-32-a", SECRET_A),
        ("replace-me-with-secrets-token-urlsafe-32-b", SECRET_B),
        ("replace-me-with-secrets-token-urlsafe-32-m", METRICS),
    ):
        assert documented in text, documented
        text = text.replace(documented, ours)
    return text


def keyroom(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "sfu", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def cli_token(config_path: str, identity: str, *extra: str) -> str:
    return keyroom(
        "token", "--config", config_path, "--key", "corp-a", "--identity", identity, *extra
    ).strip()


def token(key_id: str, secret: str, identity: str, room: str) -> str:
    return mint_token(
        key_id=key_id, secret=secret, identity=identity, room=room, ttl=600, now=time.time()
    )


async def test_first_deployment(
    tmp_path: Path,
    serve: Callable[[Receiver], Awaitable[None]],  # noqa: F811
) -> None:
    receiver = Receiver()
    receiver.receiver = WebhookReceiver(TokenVerifier("corp-a", SECRET_A))
    await serve(receiver)
    cert, key = write_self_signed(tmp_path, "sfu.example.com")
    with private_network() as server_ip:
        port = free_port()
        config = operator_config(tmp_path, server_ip, port, receiver.url, cert, key)
        server = start_configured(tmp_path, config, context=trusting(cert), port=port)
        try:
            await first_call(server, tmp_path, trusting(cert), receiver)
        finally:
            stop_server(server)
    log = server.log()
    assert log.rstrip().endswith("keyroom stopped")
    verified = keyroom(
        "audit",
        "verify",
        str(tmp_path / "log" / "audit.jsonl"),
        "--config",
        str(tmp_path / "keyroom.toml"),
    )
    assert "chain intact" in verified


async def first_call(
    server: ServerProcess, tmp_path: Path, context: ssl.SSLContext, receiver: Receiver
) -> None:
    config_path = str(tmp_path / "keyroom.toml")
    log = server.log()
    assert (
        f"media on {server_ip_of(log)}, UDP ports 50000-50199; private client addresses accepted"
        in log
    )
    assert (
        f"signing keys: corp-a (config file {config_path}), corp-b (config file {config_path})"
        in log
    )
    url = f"wss://127.0.0.1:{server.port}/rtc"
    # Tokens as the guide mints them: the server's own config, no secret on the command line.
    alice_token = cli_token(config_path, "alice", "--room", "standup")
    admin = cli_token(config_path, "ops", "--admin", "--room", "standup")
    alice = KeyroomClient(url, alice_token, ssl=context)
    bob = KeyroomClient(url, token("corp-b", SECRET_B, "bob", "standup"), ssl=context)
    try:
        await alice.connect()
        await bob.connect()
        await alice.publish(SyntheticVideoTrack(), source="camera")
        await alice.publish(SyntheticAudioTrack(), source="microphone")
        video = await bob.next_track(timeout=30, predicate=lambda t: t.kind == "video")
        assert await count_frames(video.track, 15, enough=10) >= 10
        # The media really flows between the private addresses.
        assert nominated_pair(bob) == (CLIENT_IP, server_ip_of(server.log()))

        # A live limit change: the room admin closes the room to newcomers.
        await live_limit_change(server, context, admin, url)
        # SIGHUP with a key replaced and limits changed, during the call.
        await reload_keys_and_limits(server, tmp_path, context, url)
        assert await count_frames(video.track, 15, enough=10) >= 10
        assert alice.close_code is None and bob.close_code is None

        # Protected metrics over TLS, webhooks delivered and verified.
        await check_metrics(server, context)
        events = {e["event"] for e in await receiver.wait_for(3, timeout=15)}
        assert {"room_started", "participant_joined", "track_published"} <= events

        # Shutdown: the clients hear it as such.
        server.process.send_signal(signal.SIGTERM)
        assert await session_end(bob, timeout=15) == 1001
        assert bob.leave_reason == "server_shutdown"
    finally:
        await alice.close()
        await bob.close()


def nominated_pair(client: KeyroomClient) -> tuple[str, str]:
    """(local, remote) host of the subscriber connection's nominated ICE pair."""
    pc = client.subscriber_pc
    assert pc is not None
    ice = pc.getTransceivers()[0].receiver.transport.transport
    pair = next(iter(ice._connection._nominated.values()))
    return pair.local_candidate.host, pair.remote_candidate.host


def server_ip_of(log: str) -> str:
    return log.split("media on ", 1)[1].split(",", 1)[0]


async def live_limit_change(
    server: ServerProcess, context: ssl.SSLContext, admin: str, url: str
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.patch(
            f"https://127.0.0.1:{server.port}/api/rooms/standup",
            json={"limits": {"max_participants": 2}},
            headers={"Authorization": f"Bearer {admin}"},
            ssl=context,
        ) as response:
            assert response.status == 200, await response.text()
    with pytest.raises(KeyroomError, match="room_full"):
        await KeyroomClient(
            url, token("corp-a", SECRET_A, "carol", "standup"), ssl=context
        ).connect()
    await eventually(lambda: '"event":"room_updated"' in server.log(), 10)


async def reload_keys_and_limits(
    server: ServerProcess, tmp_path: Path, context: ssl.SSLContext, url: str
) -> None:
    path = tmp_path / "keyroom.toml"
    text = path.read_text()
    text = text.replace(f'corp-b = "{SECRET_B}"', f'corp-c = "{SECRET_C}"')
    text = text.replace(
        "[rooms.all-hands]\nmax_participants = 200", "[rooms.all-hands]\nmax_participants = 1"
    )
    path.write_text(text)
    server.process.send_signal(signal.SIGHUP)
    await eventually(
        lambda: (
            "SIGHUP: configuration reloaded; changed: auth.keys, rooms.all-hands" in server.log()
        ),
        15,
        server.log,
    )
    assert "SIGHUP: signing keys reloaded: corp-a, corp-c" in server.log()
    with pytest.raises(KeyroomError, match="unauthorized"):
        await KeyroomClient(
            url, token("corp-b", SECRET_B, "dave", "all-hands"), ssl=context
        ).connect()
    erin = KeyroomClient(url, token("corp-c", SECRET_C, "erin", "all-hands"), ssl=context)
    await erin.connect()
    with pytest.raises(KeyroomError, match="room_full"):  # the new override: 1
        await KeyroomClient(
            url, token("corp-a", SECRET_A, "frank", "all-hands"), ssl=context
        ).connect()
    await erin.leave()


async def check_metrics(server: ServerProcess, context: ssl.SSLContext) -> None:
    metrics = f"https://127.0.0.1:{server.port}/metrics"
    async with aiohttp.ClientSession() as http:
        async with http.get(metrics, ssl=context) as response:
            assert response.status == 401
        headers = {"Authorization": f"Bearer {METRICS}"}
        async with http.get(metrics, ssl=context, headers=headers) as response:
            assert response.status == 200
            assert "keyroom_participants" in await response.text()
