"""Acceptance (issue 15): a bound token used from another client (no key, wrong key, replayed
proof) is refused and audited; the rightful client, with its key file, joins. A real server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from auth.keybinding import make_proof, public_jwk, thumbprint
from auth.tokens import mint_token
from signaling.client import KeyroomClient, KeyroomError
from tests.admin_helpers import call
from tests.conftest import KEY_ID, SECRET, eventually, start_server, stop_server
from tests.signaling_helpers import audit_file_events


def write_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return key


async def test_a_copied_bound_token_is_refused_and_the_rightful_client_joins(
    tmp_path: Path,
) -> None:
    audit_path = tmp_path / "audit.jsonl"
    config = tmp_path / "keyroom.toml"
    config.write_text(f'[audit]\npath = "{audit_path}"\nrefusal_window = 0.5\n')
    server = start_server(tmp_path, "--config", str(config))
    try:
        key_file, thief_file = tmp_path / "device.pem", tmp_path / "thief.pem"
        key, _thief = write_key(key_file), write_key(thief_file)
        jkt = thumbprint(public_jwk(key.public_key()))
        bound = mint_token(
            key_id=KEY_ID, secret=SECRET, identity="alice", room="room1", ttl=600,
            now=time.time(), bind=jkt,
        )  # fmt: skip
        # No key: the token alone, as copied out of a page or a log.
        with pytest.raises(KeyroomError) as refused:
            await KeyroomClient(server.ws_url, bound).connect()
        assert (refused.value.code, refused.value.close_code) == ("unauthorized", 4401)
        # Another key: the thief signs a fresh nonce with its own key.
        with pytest.raises(KeyroomError) as refused:
            await KeyroomClient(server.ws_url, bound, key_file=str(thief_file)).connect()
        assert refused.value.code == "unauthorized"
        # The rightful client joins; its proof, copied and replayed, is refused.
        async with aiohttp.ClientSession() as http:
            async with http.get(server.http_url + "/rtc/nonce") as response:
                assert response.headers["Cache-Control"] == "no-store"
                nonce = (await response.json())["nonce"]
            proof = make_proof(key, nonce=nonce, credential=bound, client="python")
            frames = []
            for _ in range(2):
                async with http.ws_connect(server.ws_url) as ws:
                    await ws.send_json({"type": "join", "token": bound, "proof": proof, "req": 1})
                    frames.append(json.loads((await ws.receive()).data))
        assert frames[0]["type"] == "joined"
        assert frames[1] == {"type": "error", "code": "unauthorized", "message": "unauthorized",
                             "req": 1}  # fmt: skip
        rightful = KeyroomClient(server.ws_url, bound, key_file=str(key_file))
        joined = await rightful.connect()  # the duplicate-identity place of the raw socket is gone
        assert joined["participant"]["identity"] == "alice"
        admin = mint_token(
            key_id=KEY_ID, secret=SECRET, identity="ops", room="room1", ttl=60, now=time.time(),
            grants={"roomAdmin": True},
        )  # fmt: skip
        status, body = await call(server, "GET", "/api/rooms/room1/participants", admin)
        assert status == 200
        assert [(p["identity"], p["bound"], p["client_kind"]) for p in body["participants"]] == [
            ("alice", True, "python")
        ]
        await rightful.leave()

        def refusals() -> list[dict[str, Any]]:
            return audit_file_events(audit_path, "join_refused")

        # Three refusals from one address: the first written at once, the rest summed up.
        await eventually(lambda: sum(r.get("repeated", 1) for r in refusals()) >= 3, 10)
        first = refusals()[0]
        assert (first["reason"], first["detail"], first["identity"]) == (
            "pop_failed", "no_proof", "alice"
        )  # fmt: skip
    finally:
        stop_server(server)
