"""TURN-relayed subscribers on the shared port (issue 14): the server gathers no relay candidate
of its own (no ICE servers), so a subscriber relaying through coturn is, from the server's
side, a pair of its host candidate on the shared port and the relay's address. Its copies are
made by the compiled per-copy loop, and with `fanout_workers` sent by a worker, like any other
subscriber's. A relay_only room with a real coturn: the subscriber's own ICE shows it used the
relay, and the server's counters show who made its copies."""

from __future__ import annotations

from pathlib import Path

import pytest

from signaling.client import KeyroomClient, count_frames
from signaling.media import SyntheticVideoTrack
from tests.conftest import ServerProcess, eventually, stop_server
from tests.sharedport_helpers import start_server_in_mode
from tests.test_fanout_workers import metric
from tests.test_turn import RELAY_IP, TURN_SECRET, JoinedServersClient, coturn  # noqa: F401


def relay_room(tmp_path: Path, turn_port: int, workers: int) -> ServerProcess:
    sections = (
        f"fanout_workers = {workers}\n"  # in [rtc], which start_server_in_mode opens
        f'[turn]\nurls = ["turn:127.0.0.1:{turn_port}?transport=udp"]\n'
        f'secret = "{TURN_SECRET}"\nttl = 300\nrelay_addresses = ["{RELAY_IP}"]\n'
        "[limits]\nrelay_only = true\n"
    )
    return start_server_in_mode(tmp_path, "shared-compiled", sections=sections)


def nominated_local_type(client: KeyroomClient) -> str:
    """The type of the subscriber connection's own candidate in its nominated pair."""
    assert client.subscriber_pc is not None
    transport = client.subscriber_pc.getTransceivers()[0].receiver.transport
    pair = transport.transport._connection._nominated[1]
    return str(pair.local_candidate.type)


@pytest.mark.parametrize("workers", [0, 1], ids=["compiled-loop", "fanout-worker"])
async def test_a_turn_relayed_subscriber_is_served_like_any_other(
    tmp_path: Path,
    coturn: int,  # noqa: F811 (the fixture imported above)
    workers: int,
) -> None:
    server = relay_room(tmp_path, coturn, workers)
    alice = JoinedServersClient(server.ws_url, server.token("alice"))
    bob = JoinedServersClient(server.ws_url, server.token("bob"))
    try:
        joined = await alice.connect()
        await bob.connect()
        assert joined["ice_transport_policy"] == "relay"
        await alice.publish(SyntheticVideoTrack(), source="camera")
        remote = await bob.next_track(timeout=20)
        assert await count_frames(remote.track, 2.0) > 10
        assert nominated_local_type(bob) == "relay"  # bob's media comes through coturn
        # bob is the only subscriber: every copy counted here is one of his.
        if workers:
            await eventually(
                lambda: metric(server, "keyroom_fanout_worker_down_tracks") == 1,
                10,
                "bob's down-track handed to the worker",
            )
            name = "keyroom_fanout_worker_packets_total"
        else:
            name = "keyroom_fanout_compiled_copies_total"
        before = metric(server, name)
        assert await count_frames(remote.track, 2.0) > 10
        await eventually(lambda: metric(server, name) > before + 30, 10, f"{name} grows")
    finally:
        await alice.leave()
        await bob.leave()
        stop_server(server)
