"""Canary secrets: no token, signing secret, SDP or ICE password reaches any log, at DEBUG."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from auth.tokens import mint_token
from signaling.client import KeyroomClient, KeyroomError
from signaling.media import SyntheticAudioTrack
from tests.admin_helpers import call
from tests.conftest import KEY_ID, SECRET, start_server, stop_server

CANARY_KEY = "canary"
CANARY_SECRET = "CANARY-SECRET-0123456789-abcdefghijklmnop"


async def test_canary_secrets_never_reach_logs(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "keyroom.toml"
    config.write_text(f'[audit]\npath = "{audit}"\n')
    server = start_server(
        tmp_path, "--config", str(config), "--log-level", "debug",
        "--key", f"{CANARY_KEY}={CANARY_SECRET}",
    )  # fmt: skip
    secrets: set[str] = {CANARY_SECRET, SECRET}
    try:
        now = time.time()
        tokens = [
            mint_token(
                key_id=CANARY_KEY, secret=CANARY_SECRET, identity=n, room="r", ttl=60, now=now
            )
            for n in ("alice", "bob")
        ]
        secrets.update(tokens)
        alice, bob = (KeyroomClient(server.ws_url, t) for t in tokens)
        await alice.connect()
        await bob.connect()
        await alice.publish(SyntheticAudioTrack(), source="microphone")
        await bob.next_track(timeout=10)
        await alice.send_data("hello", topic="t")
        await bob.next_data(timeout=10)
        bad = mint_token(key_id=KEY_ID, secret="w" * 40, identity="eve", room="r", ttl=60, now=now)
        secrets.add(bad)
        with pytest.raises(KeyroomError):
            await KeyroomClient(server.ws_url, bad).connect()
        admin_token = server.token("ops", room="r", grants={"roomAdmin": True})
        secrets.add(admin_token)
        assert (await call(server, "GET", "/api/rooms/r", admin_token))[0] == 200
        for client in (alice, bob):
            for pc in (client.publisher_pc, client.subscriber_pc):
                for description in (pc.localDescription, pc.remoteDescription):
                    if description is not None:
                        secrets.update(re.findall(r"a=ice-pwd:(\S+)", description.sdp))
                        secrets.update(re.findall(r"a=fingerprint:\S+ (\S+)", description.sdp))
        await alice.leave()
        await bob.leave()
    finally:
        stop_server(server)
    logs = server.log() + audit.read_text()
    assert '"event":"join_accepted"' in logs and '"event":"join_refused"' in logs
    assert len(secrets) > 6
    leaked = [s[:12] + "..." for s in secrets if s in logs]
    assert leaked == [], f"secrets in logs: {leaked}"
    assert "v=0\r\n" not in logs and "a=candidate" not in logs
