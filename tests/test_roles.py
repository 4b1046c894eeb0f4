"""Roles through a real server: grant sets and the relay_only role attribute."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from auth.grants import role_relay_only
from sfu.candidates import NOT_RELAY
from sfu.config import ConfigError, load_config
from signaling.client import KeyroomClient, KeyroomError
from signaling.media import SyntheticAudioTrack
from tests.conftest import start_server, stop_server
from tests.test_turn import PolicyIgnoringClient, ice_refusals

ROLES = """
[turn]
urls = ["turn:127.0.0.9:3478"]
secret = "turn-secret-0123456789abcdef"
relay_addresses = ["127.0.0.9"]

[roles.viewer]
canPublish = false

[roles.remote]
relay_only = true

[audit]
path = "audit.jsonl"
"""


def test_relay_only_is_a_role_attribute() -> None:
    roles = {"remote": {"relay_only": True}, "plain": {}}
    assert role_relay_only(roles, "remote")
    assert not role_relay_only(roles, "plain") and not role_relay_only(roles, None)
    with pytest.raises(ConfigError, match="roles.r.relay_only: expected true or false"):
        load_config(None, {"server": {"dev": True}, "roles": {"r": {"relay_only": "yes"}}}, {})
    with pytest.raises(ConfigError, match="turn.relay_addresses: required with relay_only"):
        load_config(None, {"server": {"dev": True}, "roles": {"r": {"relay_only": True}}}, {})


async def test_roles_shape_what_a_token_may_do(tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text(ROLES)
    server = start_server(tmp_path, "--config", str(config))
    try:
        from auth.tokens import mint_token
        from tests.conftest import KEY_ID, SECRET

        def token(identity: str, role: str) -> str:
            import time

            return mint_token(
                key_id=KEY_ID, secret=SECRET, identity=identity, room="r", ttl=60,
                now=time.time(), role=role, grants={"canPublish": True},
            )  # fmt: skip

        viewer = KeyroomClient(server.ws_url, token("v", "viewer"))
        joined = await viewer.connect()
        # The token asked for canPublish; the role says no: a role is never widened.
        assert joined["participant"]["permissions"]["canPublish"] is False
        assert joined["ice_transport_policy"] == "all"
        with pytest.raises(KeyroomError) as refused:
            await viewer.publish(SyntheticAudioTrack(), source="microphone")
        assert refused.value.code == "forbidden"

        remote = PolicyIgnoringClient(server.ws_url, token("r", "remote"))
        joined = await remote.connect()
        assert joined["ice_transport_policy"] == "relay"
        assert joined["ice_servers"] and joined["ice_servers"][0]["urls"]
        # This client ignores the policy and offers host candidates: the server's ICE refuses
        # every check that does not come from a TURN relay, so it never connects. What is
        # checked is an absence over a while: nothing announces it (aiortc gives up after 30 s).
        await asyncio.sleep(6)
        assert remote.subscriber_pc is not None
        assert remote.subscriber_pc.connectionState != "connected"
        refusals = ice_refusals((tmp_path / "audit.jsonl").read_text())
        assert {(r["reason"], r["participant"]) for r in refusals} == {
            (NOT_RELAY, remote.participant["sid"])
        }
        assert viewer.subscriber_pc is not None
        assert (
            viewer.subscriber_pc.connectionState == "connected"
        )  # the room itself is not relay-only
        await viewer.leave()
        await remote.close()
    finally:
        stop_server(server)
