"""Issue 18.11: docs/deploy.md's examples work as written: the config loads, the systemd unit
passes `systemd-analyze verify`, the Prometheus examples parse with `scheme: https`, the
Dockerfile's health check succeeds against a TLS server; stale claims stay gone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.spawn import free_port
from sfu.config import load_config, parse_config_file
from tests.conftest import stop_server
from tests.deploy_helpers import METRICS_TOKEN, start_configured
from tests.test_tls import trusting, write_self_signed

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = (ROOT / "docs" / "deploy.md").read_text()


def block(text: str, first_line: str) -> str:
    """The fenced block of `text` whose first line is `first_line`."""
    for match in re.finditer(r"```\w*\n(.*?)```", text, re.S):
        if match[1].startswith(first_line):
            return match[1]
    raise AssertionError(f"no block starting {first_line!r}")


def deploy_config() -> str:
    return block(DEPLOY, "# /etc/keyroom/keyroom.toml")


def test_the_documented_config_loads_and_keeps_its_promises(tmp_path: Path) -> None:
    text = deploy_config()
    path = tmp_path / "keyroom.toml"
    path.write_text(text)
    parsed = parse_config_file(str(path))  # every option known and valid as written
    assert parsed.rtc.ips == ("10.0.0.10",)
    assert set(parsed.auth.keys) == {"corp-a", "corp-b"} and "all-hands" in parsed.rooms
    # With the certificate present it passes the start-up rules too, and a LAN server accepts
    # LAN clients by default.
    cert, key = write_self_signed(tmp_path, "sfu.example.com")
    path.write_text(text.replace("/etc/keyroom/tls/fullchain.pem", str(cert)).replace(
        "/etc/keyroom/tls/privkey.pem", str(key)))  # fmt: skip
    config = load_config(str(path), {}, {})
    assert config.rtc.allow_private_candidates is True
    assert config.audit.rotate_bytes == 104857600
    turn = tmp_path / "turn.toml"
    turn.write_text(text + block(DEPLOY, "[turn]"))
    assert parse_config_file(str(turn)).turn.relay_addresses == ("10.0.0.10",)


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = block(DEPLOY, "# /etc/systemd/system/keyroom.service")
    assert "User=keyroom" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "Restart=on-failure" in unit
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    keyroom = Path(sys.executable).with_name("keyroom")
    path = tmp_path / "keyroom.service"
    path.write_text(unit.replace("/opt/keyroom/.venv/bin/keyroom", str(keyroom)))
    result = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    # Only this unit's own findings count (the host's other units are not ours to judge).
    ours = [line for line in result.stderr.splitlines() if "keyroom.service" in line]
    assert result.returncode == 0 or not ours, result.stderr
    assert not ours, ours


def yaml_load(text: str) -> object:
    """PyYAML, in this interpreter or in a system python3 that has it."""
    try:
        import yaml  # type: ignore[import-untyped]

        return yaml.safe_load(text)
    except ImportError:
        pass
    code = "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))"
    for python in ("python3", "/usr/bin/python3"):
        found = shutil.which(python)
        if found and found != sys.executable:
            result = subprocess.run([found, "-c", code], input=text, capture_output=True, text=True)
            if result.returncode == 0:
                return json.loads(result.stdout)
    pytest.skip("no YAML parser on this machine")


@pytest.mark.parametrize(
    ("doc", "first_line"),
    [("deploy.md", "# prometheus.yml"), ("metrics.md", "scrape_configs:")],
)
def test_the_prometheus_examples_parse_and_use_https(doc: str, first_line: str) -> None:
    parsed = yaml_load(block((ROOT / "docs" / doc).read_text(), first_line))
    assert isinstance(parsed, dict)
    (job,) = parsed["scrape_configs"]
    assert job["scheme"] == "https"
    assert job["authorization"]["credentials_file"]
    assert job["tls_config"]["ca_file"]
    assert job["static_configs"][0]["targets"]


def test_the_dockerfile_health_check_passes_against_a_tls_server(tmp_path: Path) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    match = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", dockerfile)
    assert match is not None
    command = json.loads(match[1])
    assert command[0] == "python"
    env_config = re.search(r"ENV KEYROOM_CONFIG=(\S+)", dockerfile)
    assert env_config is not None
    cert, key = write_self_signed(tmp_path, "sfu.example.com")
    port = free_port()
    config = (
        f'[server]\nhost = "0.0.0.0"\nport = {port}\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
        f'[auth]\nkeys = {{ k = "{"s" * 40}" }}\n[metrics]\nbearer_token = "{METRICS_TOKEN}"\n'
        '[rtc]\nips = ["127.0.0.1"]\n'
    )
    server = start_configured(tmp_path, config, context=trusting(cert), port=port)
    # The command as the image runs it: the config from $KEYROOM_CONFIG.
    env = {**os.environ, "KEYROOM_CONFIG": str(tmp_path / "keyroom.toml")}
    run = [sys.executable, *command[1:]]
    try:
        healthy = subprocess.run(run, env=env, capture_output=True, text=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        stop_server(server)
    down = subprocess.run(run, env=env, capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and down.stderr.startswith("healthcheck:")


def test_stale_claims_are_gone() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "no configurable range" not in dockerfile
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    assert "accepted as tables today" not in configuration
    assert "only checked to be tables" not in configuration
    assert "The audit log itself is where `[audit] path` says" in configuration
