"""Chromium pages in a room served by fan-out workers (`[rtc] fanout_workers = 2`, issue 14): a
page's microphone sends RED (the room's default `audio_red`), and the two listening pages,
which negotiate RED as every Chromium page does, get it from the workers: their down-tracks are
on the workers, `keyroom_fanout_worker_red_packets_total` grows with their audio, the main
process sends no copy while the pages keep hearing it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.async_api import Browser

from tests.conftest import ServerProcess, eventually, stop_server
from tests.sharedport_helpers import start_server_in_mode
from tests.test_browser import Conference, browser, received, receives  # noqa: F401
from tests.test_fanout_red import main_copies
from tests.test_fanout_workers import metric

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server_in_mode(
        tmp_path_factory.mktemp("fanout-red"), "shared-compiled", sections="fanout_workers = 2\n"
    )
    try:
        yield process
    finally:
        stop_server(process)


async def test_chromium_red_listeners_are_served_by_the_workers(
    server: ServerProcess,
    browser: Browser,  # noqa: F811 (the fixture imported above)
) -> None:
    conference = Conference(server, browser, room="fanout-red")
    try:
        await conference.page("alice", canPublishSources=["microphone"])
        listeners = [await conference.page(name, "&publish=0") for name in ("bob", "carol")]
        for page in listeners:
            await eventually(receives(page, "alice/microphone"), 30, "alice heard")
        await eventually(
            lambda: metric(server, "keyroom_fanout_worker_down_tracks") == len(listeners),
            15,
            "both listeners' down-tracks on the workers",
        )
        main_before = main_copies(server)
        red_before = metric(server, "keyroom_fanout_worker_red_packets_total")
        samples = [(await received(page))["alice/microphone"]["samples"] for page in listeners]
        # 50 packets a second to each listener, every one RED from a worker.
        await eventually(
            lambda: metric(server, "keyroom_fanout_worker_red_packets_total") > red_before + 150,
            20,
            "RED copies sent by the workers",
        )

        async def still_hearing() -> bool:
            now = [(await received(page))["alice/microphone"]["samples"] for page in listeners]
            return all(b > a + 48000 for a, b in zip(samples, now, strict=True))

        await eventually(still_hearing, 20, "the listeners keep decoding alice's audio")
        assert main_copies(server) == main_before
    finally:
        await conference.close()
