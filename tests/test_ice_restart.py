"""ICE restart: a Chromium participant whose address changes keeps its session (issue 12).

Publisher and subscriber pages sit in their own namespaces of `loadtest.impair`; each in turn
moves to another address on its link (`Topology.readdress`, as a laptop moving to another
network would). Its old path dies; the page restarts ICE on both peer connections (the publisher
PC by an offer with new credentials, the subscriber PC by `ice_restart`) and video flows again,
within the same session: same participant sid, no second join.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from aiortc import RTCPeerConnection
from playwright.async_api import Page, async_playwright

from loadtest import lossbench, spawn
from loadtest.impair import topology
from sfu.internals import bundle_transport
from signaling.client import KeyroomClient, count_frames
from signaling.media import SyntheticVideoTrack
from tests.conftest import eventually, start_server, stop_server

TREE = str(Path(__file__).resolve().parents[1])
SID = "window.keyroom.participant.sid"
PUBLISHER_PC = "window.keyroom.publisher.connectionState"


async def frames(page: Page) -> int:
    got = await page.evaluate(lossbench.SUB_JS)
    return int(got["frames"]) if got else 0


async def decodes_again(page: Page, timeout: float) -> None:
    """The page decodes 20 new frames within `timeout` seconds."""
    start = await frames(page)

    async def check() -> bool:
        return await frames(page) >= start + 20

    await eventually(check, timeout, "video did not come back", interval=0.2)


async def test_a_participant_that_changes_address_keeps_its_session() -> None:
    port = spawn.free_port()
    with tempfile.TemporaryDirectory() as directory, topology(["pub", "sub1"]) as topo:
        async with (
            async_playwright() as playwright,
            lossbench.browsers(playwright, topo, directory, [port], ["pub", "sub1"]) as b,
        ):
            with lossbench.server(topo, TREE, directory, port) as srv:
                pub = await lossbench._open(b["pub"], f"{srv.url}/?token={srv.token('pub', 'r')}")
                sub_url = f"{srv.url}/?token={srv.token('sub1', 'r')}&publish=0"
                sub = await lossbench._open(b["sub1"], sub_url)
                await lossbench._decoding(sub, 30)
                sids = (await pub.evaluate(SID), await sub.evaluate(SID))

                topo.readdress("sub1", "10.78.0.111")
                await decodes_again(sub, 25)
                topo.readdress("pub", "10.78.0.110")

                async def lost() -> bool:
                    return bool(await pub.evaluate(f"{PUBLISHER_PC} !== 'connected'"))

                await eventually(lost, 15, "the publisher never noticed its path was gone")
                await decodes_again(sub, 25)

                assert (await pub.evaluate(SID), await sub.evaluate(SID)) == sids
                states = "[window.keyroom.state, window.keyroom.publisher.connectionState]"
                assert await pub.evaluate(states) == ["connected", "connected"]
                log = Path(directory, f"server-{port}.log").read_text()
                assert log.count("join_accepted") == 2, log[-2000:]


def credentials(pc: RTCPeerConnection | None) -> tuple[str, str | None]:
    """(local ufrag, remote ufrag) of a connected PC's ICE connection."""
    assert pc is not None
    dtls = bundle_transport(pc)
    assert dtls is not None
    connection = dtls.transport._connection
    return connection.local_username, connection.remote_username


async def test_the_python_client_restarts_ice_and_media_continues(tmp_path: Path) -> None:
    """Both PCs get new credentials on both sides; the same session keeps its media."""
    server = start_server(tmp_path)
    alice = KeyroomClient(server.ws_url, server.token("alice"))
    bob = KeyroomClient(server.ws_url, server.token("bob"))
    try:
        await alice.connect()
        await bob.connect()
        await alice.publish(SyntheticVideoTrack(), source="camera", name="cam")
        remote = await bob.next_track(timeout=10)
        assert await count_frames(remote.track, 1.0) > 0
        subscriber, publisher = credentials(bob.subscriber_pc), credentials(alice.publisher_pc)
        sids = (alice.participant["sid"], bob.participant["sid"])
        await bob.restart_ice()
        await alice.restart_ice()
        await eventually(lambda: credentials(bob.subscriber_pc)[1] != subscriber[1])
        assert credentials(bob.subscriber_pc)[0] != subscriber[0]  # bob's answer restarted too
        assert all(
            new != old for new, old in zip(credentials(alice.publisher_pc), publisher, strict=True)
        )
        assert await count_frames(remote.track, 2.0) > 5  # media still flows
        assert (alice.participant["sid"], bob.participant["sid"]) == sids
        assert server.log().count("join_accepted") == 2
    finally:
        await alice.leave()
        await bob.leave()
        stop_server(server)
