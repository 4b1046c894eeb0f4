"""`keyroom doctor` end to end: a real TLS server, a deliberately bad deployment whose every
planted fault must be reported, and a sound one that must pass (exit 0)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from loadtest import spawn
from loadtest.spawn import free_port
from tests.conftest import KEY_ID, SECRET, ServerProcess, stop_server
from tests.test_audit import KEY, write_chain
from tests.test_doctor import DAY, OPEN_RELAY, TURN_SECRET, key_pem, make_certificate

BEARER = "metrics-bearer-token-0123456789"


def write_certificate(
    directory: Path, *, valid_from: float, valid_until: float
) -> tuple[Path, Path]:
    cert, key = make_certificate(valid_from=valid_from, valid_until=valid_until)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


def serve(directory: Path, config: Path, context: ssl.SSLContext, *extra: str) -> ServerProcess:
    port = free_port()
    log_path = directory / f"server-{port}.log"
    command = [
        sys.executable, "-m", "sfu", "serve", "--config", str(config), "--port", str(port), *extra,
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = spawn.start(command, log_path, cwd=directory, env=environment)
    url = f"https://127.0.0.1:{port}/healthz"
    spawn.wait_healthy(process, url, log_path, "server", context=context)
    return ServerProcess(port=port, process=process, log_path=log_path)


def keyroom(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("KEYROOM_CONFIG", "KEYROOM_KEYS")
    }
    return subprocess.run(
        [sys.executable, "-m", "sfu", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=environment,
    )


def test_a_bad_deployment_gets_every_planted_fault_reported(tmp_path: Path) -> None:
    now = time.time()
    cert, key = write_certificate(tmp_path, valid_from=now - 90 * DAY, valid_until=now - DAY)
    open_data = tmp_path / "open-data"
    open_data.mkdir()
    open_data.chmod(0o777)
    coturn = tmp_path / "turnserver.conf"
    coturn.write_text(OPEN_RELAY)
    bad = tmp_path / "keyroom.toml"
    bad.write_text(
        f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\ndata_dir = "{open_data}"\n'
        '[auth]\nkeys = { k = "short-secret" }\n'
        '[rtc]\nips = ["127.0.0.1"]\n'
        f'[turn]\nurls = ["turn:127.0.0.1:3478"]\nsecret = "{TURN_SECRET}"\n'
    )
    bad.chmod(0o600)
    # The server itself runs (an expired certificate does not stop it) with open /metrics.
    lenient = ssl.create_default_context()
    lenient.check_hostname, lenient.verify_mode = False, ssl.CERT_NONE
    served = tmp_path / "served.toml"
    served.write_text(f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    server = serve(tmp_path, served, lenient, "--dev", "--key", f"{KEY_ID}={SECRET}")
    url = f"https://127.0.0.1:{server.port}"
    try:
        result = keyroom(
            "doctor", "--config", str(bad), "--url", url, "--coturn", str(coturn),
            "--cafile", str(cert), cwd=tmp_path,
        )  # fmt: skip
    finally:
        stop_server(server)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    errors = [line for line in out.splitlines() if line.startswith("error")]
    for expected in (
        "auth.keys.k: HS256 secret is shorter than 32 bytes",
        "server.tls_cert: certificate expired on",
        f"{url}: certificate expired on",
        f"{url}: clients refuse the certificate",
        f"{open_data}: writable by every user",
        "metrics.bearer_token: not set",
        f"{url}/metrics: answers without a bearer token",
        f"{coturn}: no `denied-peer-ip=0.0.0.0-255.255.255.255`",
        f"{coturn}: allowed-peer-ip=10.0.0.0-10.255.255.255 reaches more than the SFU",
        "rtc.ips: 127.0.0.1 is advertised: a loopback address",
    ):
        assert any(expected in line for line in errors), f"{expected!r} not in:\n{out}"
    assert "short-secret" not in out and TURN_SECRET not in out


def test_a_sound_deployment_passes(tmp_path: Path) -> None:
    now = time.time()
    cert, key = write_certificate(tmp_path, valid_from=now - DAY, valid_until=now + 90 * DAY)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "audit.key").write_bytes(KEY + b"\n")
    (data / "audit.key").chmod(0o600)
    log = data / "audit.jsonl"
    write_chain(log, 3)
    config = tmp_path / "keyroom.toml"
    config.write_text(
        f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\ndata_dir = "{data}"\n'
        f'[auth]\nkeys = {{ {KEY_ID} = "{SECRET}" }}\n'
        # Bound on loopback here; advertised as the public side of a 1:1 NAT.
        '[rtc]\nips = ["127.0.0.1"]\npublic_ips = ["93.184.216.34"]\n'
        f'[metrics]\nbearer_token = "{BEARER}"\n'
        "[node]\nmax_participants = 100\n"
        f'[audit]\npath = "{log}"\n'
        f'[turn]\nurls = ["turn:127.0.0.1:3478"]\nsecret = "{TURN_SECRET}"\n'
    )
    config.chmod(0o600)
    turn = keyroom("turn-config", "--config", str(config), cwd=tmp_path)
    assert turn.returncode == 0, turn.stderr
    coturn = tmp_path / "turnserver.conf"
    coturn.write_text(turn.stdout)
    server = serve(tmp_path, config, ssl.create_default_context(cafile=str(cert)))
    url = f"https://127.0.0.1:{server.port}"
    try:
        result = keyroom(
            "doctor", "--config", str(config), "--url", url, "--coturn", str(coturn),
            "--cafile", str(cert), cwd=tmp_path,
        )  # fmt: skip
    finally:
        stop_server(server)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert out.splitlines()[-1] == "keyroom doctor: 0 error(s), 0 warning(s)", out
    assert f"{url}/healthz: answers ok" in out
    assert "last sealed position: record 3" in out


def test_doctor_needs_something_to_check(tmp_path: Path) -> None:
    result = keyroom("doctor", cwd=tmp_path)
    assert result.returncode == 2
    assert "nothing to check" in result.stderr
    result = keyroom("doctor", "--url", "wss://127.0.0.1:1/rtc", cwd=tmp_path)
    assert result.returncode == 2
    assert "--url: the server's base URL" in result.stderr
