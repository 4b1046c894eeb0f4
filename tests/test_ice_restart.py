"""ICE restart: a Chromium participant whose address changes keeps its session (issue 12).

Publisher and subscriber pages sit in their own namespaces of `loadtest.impair`; each in turn
moves to another address on its link (`Topology.readdress`, as a laptop moving to another
network would). Its old path dies; the page restarts ICE on both peer connections (the publisher
PC by an offer with new credentials, the subscriber PC by `ice_restart`) and video flows again,
within the same session: same participant sid, no second join.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from playwright.async_api import Page, async_playwright

from loadtest import lossbench, spawn
from loadtest.impair import topology

TREE = str(Path(__file__).resolve().parents[1])
SID = "window.keyroom.participant.sid"


async def frames(page: Page) -> int:
    got = await page.evaluate(lossbench.SUB_JS)
    return int(got["frames"]) if got else 0


async def decodes_again(page: Page, timeout: float) -> float:
    """Seconds until the page decodes 20 new frames (fails after `timeout`)."""
    start, began = await frames(page), time.monotonic()
    while await frames(page) < start + 20:
        assert time.monotonic() - began < timeout, "video did not come back"
        await asyncio.sleep(0.2)
    return time.monotonic() - began


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
                await asyncio.sleep(3)  # the publisher's path is gone for sure
                await decodes_again(sub, 25)

                assert (await pub.evaluate(SID), await sub.evaluate(SID)) == sids
                states = "[window.keyroom.state, window.keyroom.publisher.connectionState]"
                assert await pub.evaluate(states) == ["connected", "connected"]
                log = Path(directory, f"server-{port}.log").read_text()
                assert log.count("join_accepted") == 2, log[-2000:]
