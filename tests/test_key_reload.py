"""Signing keys: SIGHUP swaps them without dropping anyone, and `keyroom token` signs with
ES256 and EdDSA private keys the server verifies (issue 11 item 17)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from auth.keys import KeyTable
from auth.tokens import TokenVerifier
from loadtest import spawn
from sfu.cli import main
from signaling.client import KeyroomClient
from tests.conftest import ServerProcess, start_server, stop_server

SECRET_A = "a" * 40
SECRET_B = "b" * 40
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def pem_pair(tmp_path: Path, key: PrivateKey) -> tuple[Path, str]:
    """The private key written to a file, and the public key's PEM text."""
    path = tmp_path / "signing.pem"
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return path, public.decode()


def cli_token(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["token", "--identity", "eve", "--room", "room1", *args]) == 0
    return capsys.readouterr().out.strip()


@pytest.mark.parametrize(
    ("key", "algorithm"),
    [
        (ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
    ],
)
def test_token_signs_with_a_private_key_the_verifier_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: PrivateKey, algorithm: str
) -> None:
    path, public = pem_pair(tmp_path, key)
    token = cli_token(capsys, "--key", "pk", "--private-key", str(path))
    keys = KeyTable()
    keys.add_public_key("pk", public)
    claims = TokenVerifier(keys).verify_join(token, time.time())
    assert claims.identity == "eve"
    assert json.loads(_segment(token))["alg"] == algorithm


def _segment(token: str) -> bytes:
    import base64

    head = token.split(".")[0]
    return base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))


def test_token_refuses_unusable_private_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other_curve = tmp_path / "p384.pem"
    p384 = ec.generate_private_key(ec.SECP384R1())
    other_curve.write_bytes(p384.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nsecret-looking\n-----END PRIVATE KEY-----\n")
    for path, message in ((other_curve, "P-256"), (garbage, "not an unencrypted PEM")):
        base = ["token", "--identity", "eve", "--room", "r", "--key", "pk"]
        assert main([*base, "--private-key", str(path)]) == 2
        error = capsys.readouterr().err
        assert message in error and "secret-looking" not in error


def write_keys(path: Path, keys: str, public_keys: str = "") -> None:
    path.write_text(f"[auth]\nkeys = {{ {keys} }}\n{public_keys}")


async def first_reply(server: ServerProcess, token: str) -> tuple[str, str]:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.ws_url) as ws:
            await ws.send_str(json.dumps({"type": "join", "req": 1, "token": token, "protocol": 1}))
            reply = json.loads(await ws.receive_str(timeout=5))
            await ws.close()
            return reply["type"], reply.get("code", "")


def wait_logged(server: ServerProcess, text: str) -> None:
    def probe() -> None:
        if text not in server.log():
            raise OSError(text)

    spawn.wait_ready(server.process, probe, server.log_path, f"log line {text!r}")


async def test_sighup_swaps_signing_keys_and_sessions_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "keyroom.toml"
    write_keys(config, f'a = "{SECRET_A}"')
    server = start_server(tmp_path, "--config", str(config), key=False)
    alice = KeyroomClient(server.ws_url, server.token("alice", secret=SECRET_A, key_id="a"))
    try:
        await alice.connect()
        ed_key = ed25519.Ed25519PrivateKey.generate()
        path, public = pem_pair(tmp_path, ed_key)
        # Key A gives way to key B and an EdDSA public key.
        write_keys(config, f'b = "{SECRET_B}"', f'[auth.public_keys]\ned = """{public}"""\n')
        server.process.send_signal(signal.SIGHUP)
        wait_logged(server, "SIGHUP: signing keys reloaded: b, ed")
        bob = KeyroomClient(server.ws_url, server.token("bob", secret=SECRET_B, key_id="b"))
        await bob.connect()
        assert (await alice.next_event("participant_joined", timeout=5))["participant"][
            "identity"
        ] == "bob"
        assert await first_reply(server, server.token("carol", secret=SECRET_A, key_id="a")) == (
            "error",
            "unauthorized",
        )
        ed_token = cli_token(capsys, "--key", "ed", "--private-key", str(path))
        assert await first_reply(server, ed_token) == ("joined", "")
        # A broken file keeps the keys in use, and says so.
        config.write_text("[auth]\nkeys = { b = 'short' }\n")
        server.process.send_signal(signal.SIGHUP)
        wait_logged(server, "SIGHUP: configuration not reloaded, the old one stays in use")
        assert "short'" not in server.log()
        assert await first_reply(server, server.token("dave", secret=SECRET_B, key_id="b")) == (
            "joined",
            "",
        )
        await alice.ping()  # the session joined with key A goes on
        assert alice.close_code is None
        await bob.leave()
    finally:
        await alice.close()
        stop_server(server)
