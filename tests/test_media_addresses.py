"""Issue 18.2: an `rtc.ips` address that is not on this host stops the server at start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sfu.config import ConfigError
from sfu.iceaddr import check_local_addresses
from tests.deploy_helpers import RUNNABLE_CONFIG

ELSEWHERE = "84.17.0.7"  # a public address of some other machine (1:1 NAT's outside)


def test_local_addresses_pass_and_others_are_named() -> None:
    check_local_addresses(("127.0.0.1",))
    with pytest.raises(ConfigError, match=rf"^rtc\.ips: {ELSEWHERE} is not an address of this"):
        check_local_addresses(("127.0.0.1", ELSEWHERE))
    with pytest.raises(ConfigError, match="rtc.public_ips"):
        check_local_addresses((ELSEWHERE,))


def test_serve_refuses_a_media_address_not_on_the_machine(tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text(f'{RUNNABLE_CONFIG}\n[rtc]\nips = ["{ELSEWHERE}"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "sfu", "serve", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"keyroom: error: rtc.ips: {ELSEWHERE} is not an address of this host")
    assert "listening" not in result.stderr
