"""A client that stops reading cannot grow the server: its outbox is bounded (issue 11.2)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from signaling.client import KeyroomClient
from signaling.outbox import Outbox
from tests.conftest import start_server, stop_server


def test_the_outbox_keeps_order_and_refuses_past_either_bound() -> None:
    outbox = Outbox(max_frames=3, max_bytes=10)
    assert outbox.push("ab") and outbox.push("cd")
    assert outbox.pop() == "ab" and outbox.bytes == 2
    assert outbox.push("efgh") and outbox.push("i")  # 3 frames, 7 bytes
    assert not outbox.push("j")  # a fourth frame
    assert outbox.overflowed and len(outbox) == 0 and outbox.bytes == 0  # held nothing more
    assert not outbox.push("k") and outbox.pop() is None
    by_bytes = Outbox(max_frames=100, max_bytes=10)
    assert by_bytes.push("x" * 10) and not by_bytes.push("y")


async def test_a_client_that_stops_reading_is_ended_and_the_others_go_on(
    tmp_path: Path,
) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text("[server]\nmax_outbox_frames = 200\nmax_outbox_bytes = 200000\n")
    server = start_server(tmp_path, "--config", str(config))
    grants = {"canUpdateOwnMetadata": True}
    talker = KeyroomClient(server.ws_url, server.token("talker", grants=grants))
    witness = KeyroomClient(server.ws_url, server.token("witness"))
    http = aiohttp.ClientSession()
    try:
        await talker.connect()
        await witness.connect()
        # A raw socket that joins, then never reads again: TCP fills, then the outbox.
        stuck = await http.ws_connect(server.ws_url, max_msg_size=0)
        await stuck.send_json({"type": "join", "token": server.token("stuck")})
        await witness.next_event("participant_joined", timeout=10)
        # Every update is an event for everybody, the stuck client included: ~30 MB of them.
        for n in range(8000):
            await talker.request({"type": "update_metadata", "metadata": f"{n:04d}" + "m" * 4000})
            if witness.participants and "stuck" not in {
                p.get("identity") for p in witness.participants.values()
            }:
                break
        left = await witness.next_event("participant_left", timeout=10)
        assert left["identity"] == "stuck" and left["reason"] == "too_slow"
        # The others are unharmed: requests are still answered.
        assert await talker.ping() < 1.0
    finally:
        await http.close()
        await talker.leave()
        await witness.leave()
        stop_server(server)


@pytest.mark.parametrize("option", ["max_outbox_frames", "max_outbox_bytes"])
def test_outbox_bounds_are_checked_options(tmp_path: Path, option: str) -> None:
    from sfu.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=f"server.{option}"):
        load_config(None, {"server": {option: 0}, "auth": {"keys": {"k": "s" * 40}}}, {})
