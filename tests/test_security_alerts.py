"""The security-event stream end to end (issue 15): a scripted attack on a real server gives a
signed `security_alert` webhook and a `security_alert` audit record, aggregated per window (one
alert, then one summary), and the alert metric."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import urllib.request
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth.keybinding import public_jwk, thumbprint
from auth.tokens import mint_token
from signaling.client import KeyroomClient, KeyroomError
from tests.conftest import KEY_ID, SECRET, eventually, free_port, start_server, stop_server
from tests.signaling_helpers import audit_file_events


class AlertReceiver:
    """Checks each POST's signature (HS256 JWT whose `sha256` is the body's) and keeps alerts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.alerts: list[dict[str, object]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        claims = jwt.decode(request.headers["Authorization"], SECRET, algorithms=["HS256"])
        assert claims["iss"] == KEY_ID
        assert claims["sha256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
        event = json.loads(body)
        if event["event"] == "security_alert":
            self.alerts.append(event["securityAlert"])
        return web.Response()


async def test_proof_failures_become_one_signed_alert_and_a_summary(tmp_path: Path) -> None:
    receiver = AlertReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", receiver.port).start()
    audit_path = tmp_path / "audit.jsonl"
    config = tmp_path / "keyroom.toml"
    config.write_text(
        f'[webhooks]\nurls = ["{receiver.url}"]\nkey = "{KEY_ID}"\n'
        f'[audit]\npath = "{audit_path}"\n[security]\nalert_window = 1.5\n'
    )
    server = start_server(tmp_path, "--config", str(config))
    try:
        key = Ed25519PrivateKey.generate()
        bound = mint_token(
            key_id=KEY_ID, secret=SECRET, identity="victim", room="room1", ttl=600,
            now=time.time(), bind=thumbprint(public_jwk(key.public_key())),
        )  # fmt: skip
        for _ in range(3):  # a stolen token tried three times without its key
            with pytest.raises(KeyroomError):
                await KeyroomClient(server.ws_url, bound).connect()
        await eventually(lambda: len(receiver.alerts) >= 2, 10, lambda: str(receiver.alerts))
        first, summary = receiver.alerts[:2]
        assert (first["kind"], first["severity"], first["subject"], first["count"]) == (
            "proof_failed", "warning", "victim", 1
        )  # fmt: skip
        assert first["reason"] == "pop_failed" and first["detail"] == "no_proof"
        assert (summary["kind"], summary["count"], summary["summary"]) == ("proof_failed", 2, True)
        alerts = audit_file_events(audit_path, "security_alert")
        assert [a["count"] for a in alerts[:2]] == [1, 2]
        with await asyncio.to_thread(urllib.request.urlopen, server.http_url + "/metrics") as r:
            metrics = r.read().decode()
        line = 'keyroom_security_alerts_total{kind="proof_failed",severity="warning"} 2.0'
        assert line in metrics
    finally:
        stop_server(server)
        await runner.cleanup()
