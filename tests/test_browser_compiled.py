"""Chromium pages on the shared port with the compiled fan-out (issues 12 and 14): a page's
camera is simulcast, a page subscribes with transport-cc and a video send budget, and its
microphone sends RED (red/48000/2, the room's default `audio_red`) to pages that negotiate it,
so before those joined the compiled per-copy loop every copy to a browser was made in Python.
Here the loop makes them (`keyroom_fanout_compiled_copies_total` grows with the pages' media,
the RED audio copies among them: `keyroom_fanout_compiled_red_copies_total`) while the pages
keep decoding each other."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import pytest
from playwright.async_api import Browser

from tests.conftest import ServerProcess, eventually, stop_server
from tests.sharedport_helpers import start_server_in_mode
from tests.test_browser import Conference, browser, received, receives  # noqa: F401

pytestmark = pytest.mark.asyncio(loop_scope="module")


def compiled_copies(server: ServerProcess, name: str = "compiled_copies") -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^keyroom_fanout_{name}_total (\S+)", text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server_in_mode(tmp_path_factory.mktemp("compiled"), "shared-compiled")
    try:
        yield process
    finally:
        stop_server(process)


async def test_chromium_subscribers_are_served_by_the_compiled_loop(
    server: ServerProcess,
    browser: Browser,  # noqa: F811 (the fixture imported above)
) -> None:
    conference = Conference(server, browser, room="compiled")
    try:
        alice = await conference.page("alice")
        bob = await conference.page("bob")
        for page, other in ((alice, "bob"), (bob, "alice")):
            await eventually(
                receives(page, f"{other}/microphone", f"{other}/camera"), 30, f"{other} decoded"
            )
        copies, frames = compiled_copies(server), (await received(bob))["alice/camera"]["frames"]
        red = compiled_copies(server, "compiled_red_copies")
        # Two subscribers, each of RED audio (50 packets/s) and a simulcast camera: hundreds of
        # copies in a few seconds, all of them made in Python before.
        await eventually(
            lambda: compiled_copies(server) > copies + 300, 20, "copies made by the compiled loop"
        )
        await eventually(
            lambda: compiled_copies(server, "compiled_red_copies") > red + 200,
            20,
            "RED audio copies made by the compiled loop",
        )

        async def still_decoding() -> bool:
            return bool((await received(bob))["alice/camera"]["frames"] > frames + 20)

        await eventually(still_decoding, 20, "bob keeps decoding alice's camera")
    finally:
        await conference.close()
