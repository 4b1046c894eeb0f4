"""HTTPS/WSS signaling, certificate reload, plaintext refusal, Origin check, X-Forwarded-For."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from loadtest import spawn
from signaling.client import KeyroomClient, count_frames
from signaling.media import SyntheticVideoTrack
from signaling.netpolicy import client_ip, parse_networks, resolve_client_ip
from tests.conftest import (
    KEY_ID,
    SECRET,
    ServerProcess,
    eventually,
    free_port,
    stop_server,
)


def write_self_signed(directory: Path, common_name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (IP SAN), as PEM files; the same paths are overwritten."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def trusting(cert_path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert_path))


def start_tls_server(tmp_path: Path, cert: Path, key: Path) -> ServerProcess:
    port = free_port()
    config = tmp_path / "keyroom.toml"
    config.write_text(f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    log_path = tmp_path / f"server-{port}.log"
    command = [
        sys.executable, "-m", "sfu", "serve", "--dev", "--config", str(config),
        "--port", str(port), "--key", f"{KEY_ID}={SECRET}",
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = spawn.start(command, log_path, env=environment)
    server = ServerProcess(port=port, process=process, log_path=log_path)
    url = f"https://127.0.0.1:{port}/healthz"
    spawn.wait_healthy(process, url, log_path, "server", context=trusting(cert))
    return server


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path, Path]]:
    cert, key = write_self_signed(tmp_path, "keyroom-a")
    server = start_tls_server(tmp_path, cert, key)
    try:
        yield server, cert, key
    finally:
        stop_server(server)


def peer_common_name(port: int, context: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


async def test_wss_join_and_media(tls_server: tuple[ServerProcess, Path, Path]) -> None:
    server, cert, _ = tls_server
    url = f"wss://127.0.0.1:{server.port}/rtc"
    alice = KeyroomClient(url, server.token("alice"), ssl=trusting(cert))
    bob = KeyroomClient(url, server.token("bob"), ssl=trusting(cert))
    try:
        await alice.connect()
        await bob.connect()
        await alice.publish(SyntheticVideoTrack(), source="camera")
        remote = await bob.next_track(timeout=15)
        assert remote.participant_identity == "alice"
        assert await count_frames(remote.track, 2.0) > 10
    finally:
        await alice.leave()
        await bob.leave()


async def test_wss_refuses_a_client_that_does_not_trust_the_certificate(
    tls_server: tuple[ServerProcess, Path, Path],
) -> None:
    server, _, _ = tls_server
    client = KeyroomClient(f"wss://127.0.0.1:{server.port}/rtc", server.token("eve"))
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await client.connect()


def test_only_tls_12_and_newer_with_modern_ciphers(
    tls_server: tuple[ServerProcess, Path, Path],
) -> None:
    server, cert, _ = tls_server
    weak = trusting(cert)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("ECDHE-ECDSA-AES128-SHA")  # CBC with SHA-1: offered alone, refused
    with pytest.raises(ssl.SSLError):
        peer_common_name(server.port, weak)
    tls12 = trusting(cert)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with tls12.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            cipher, version, _ = tls.cipher()  # type: ignore[misc]
    assert version == "TLSv1.2"
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)


async def test_sighup_reloads_the_certificate(
    tmp_path: Path, tls_server: tuple[ServerProcess, Path, Path]
) -> None:
    server, cert, key = tls_server
    loose = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    loose.check_hostname = False
    loose.verify_mode = ssl.CERT_NONE  # we only read which certificate is served
    assert peer_common_name(server.port, loose) == "keyroom-a"
    # A broken pair is refused and the old certificate stays.
    key.write_text("not a key")
    server.process.send_signal(signal.SIGHUP)
    await eventually(lambda: "certificate not reloaded" in server.log(), timeout=5)
    assert peer_common_name(server.port, loose) == "keyroom-a"
    write_self_signed(tmp_path, "keyroom-b")
    server.process.send_signal(signal.SIGHUP)
    await eventually(lambda: peer_common_name(server.port, loose) == "keyroom-b", timeout=5)
    assert server.process.poll() is None


async def test_evil_origin_gets_403_over_wss(tls_server: tuple[ServerProcess, Path, Path]) -> None:
    server, cert, _ = tls_server
    url = f"wss://127.0.0.1:{server.port}/rtc"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, origin="https://evil.example", ssl=trusting(cert))
        assert refused.value.status == 403
        same = await http.ws_connect(
            url, origin=f"https://127.0.0.1:{server.port}", ssl=trusting(cert)
        )
        await same.close()


def run_serve(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sfu", "serve", "--key", f"{KEY_ID}={SECRET}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_plaintext_on_a_non_loopback_bind_is_refused_at_start_up() -> None:
    result = run_serve("--host", "0.0.0.0", "--rtc-ip", "127.0.0.1", "--port", str(free_port()))
    assert result.returncode == 2
    assert "tls_cert" in result.stderr and "--insecure-plaintext" in result.stderr
    dev = run_serve("--dev", "--host", "0.0.0.0", "--port", str(free_port()))
    assert dev.returncode == 2 and "loopback only" in dev.stderr


async def test_insecure_plaintext_warns_at_start_up(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "server.log"
    config = tmp_path / "keyroom.toml"
    config.write_text(f'[metrics]\nbearer_token = "{"m" * 32}"\n')  # required without --dev
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "sfu", "serve", "--host", "0.0.0.0", "--port", str(port),
             "--rtc-ip", "127.0.0.1", "--key", f"{KEY_ID}={SECRET}", "--insecure-plaintext",
             "--config", str(config)],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        server = ServerProcess(port=port, process=process, log_path=log_path)
        try:

            def listening() -> bool:
                assert process.poll() is None, server.log()
                return "listening" in server.log()

            await eventually(listening, timeout=20)
            assert "WARNING" in server.log() and "--insecure-plaintext" in server.log()
        finally:
            stop_server(server)


# --- X-Forwarded-For (pure) ---------------------------------------------------------------------

PROXIES = parse_networks(["10.0.0.0/8", "192.0.2.7"])


@pytest.mark.parametrize(
    ("peer", "header", "expected"),
    [
        ("198.51.100.1", ["203.0.113.9"], "198.51.100.1"),  # untrusted peer: header ignored
        ("10.1.2.3", ["203.0.113.9"], "203.0.113.9"),
        ("10.1.2.3", ["1.1.1.1, 203.0.113.9, 192.0.2.7"], "203.0.113.9"),  # spoofed left part
        ("10.1.2.3", ["1.1.1.1", "203.0.113.9"], "203.0.113.9"),  # two headers, in order
        ("10.1.2.3", [], "10.1.2.3"),
        ("10.1.2.3", ["garbage"], "10.1.2.3"),
        ("10.1.2.3", ["10.9.9.9"], "10.9.9.9"),  # all trusted: the leftmost known hop
        ("::ffff:10.1.2.3", ["203.0.113.9"], "203.0.113.9"),  # IPv4 via a dual-stack socket
    ],
)
def test_forwarded_for_is_believed_from_trusted_proxies_only(
    peer: str, header: list[str], expected: str
) -> None:
    assert resolve_client_ip(peer, header, PROXIES) == expected


@pytest.mark.parametrize(
    ("peer", "expected"), [("10.1.2.3", "203.0.113.9"), ("8.8.8.8", "8.8.8.8")]
)
def test_client_ip_reads_the_request(peer: str, expected: str) -> None:
    transport = mock.Mock()
    transport.get_extra_info.return_value = (peer, 40000)
    request = make_mocked_request(
        "GET", "/rtc", headers={"X-Forwarded-For": "203.0.113.9"}, transport=transport
    )
    assert client_ip(request, PROXIES) == expected


def test_parse_networks_refuses_junk() -> None:
    with pytest.raises(ValueError):
        parse_networks(["10.0.0.0/33"])
