"""LiveKit's JavaScript SDK (`livekit-client` 2.23.0, its UMD bundle from the npm registry) in
real Chromium against keyroom: pages publish camera and microphone with simulcast on, see each
other (inbound-rtp `framesDecoded` from `getStats()`), and a late joiner sees both.

The bundle is fetched by scripts/test (`npm pack`, outside the test's network namespace) into
`$KEYROOM_TEST_CACHE`, never into the repository; its SHA-256 is pinned here as well.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

from loadtest.chromium import BASE_FLAGS, CHROMIUM
from loadtest.spawn import free_port
from tests.conftest import ServerProcess, eventually, start_server, stop_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

TARBALL = "livekit-client-2.23.0.tgz"
SHA256 = "993eafb83afb4c566bb388108ad6469bf499d76200014c96c35fe3b39fee859d"
FLAGS = [*BASE_FLAGS, "--allow-loopback-in-peer-connection"]
ROOM = "js-room"

PAGE = """<!doctype html><meta charset="utf-8"><title>lk</title>
<script src="/livekit-client.umd.js"></script><body></body>"""

JOIN_JS = """async ({url, token}) => {
  const LK = window.LivekitClient;
  const room = new LK.Room({adaptiveStream: false, dynacast: false,
                            publishDefaults: {simulcast: true}});
  window.room = room;
  room.on(LK.RoomEvent.TrackSubscribed, (track) => {
    const element = track.attach();
    element.muted = true;
    document.body.appendChild(element);
  });
  await room.connect(url, token);
  await room.localParticipant.enableCameraAndMicrophone();
  return {sid: room.localParticipant.sid, room: room.name, version: LK.version};
}"""

# Decoded video frames and received audio samples per remote identity.
RECEIVED_JS = """async () => {
  const out = {};
  for (const p of window.room.remoteParticipants.values()) {
    for (const pub of p.trackPublications.values()) {
      const track = pub.track;
      if (!track || !track.receiver) continue;
      for (const s of (await track.receiver.getStats()).values()) {
        if (s.type !== "inbound-rtp") continue;
        const seen = out[p.identity] ?? {frames: 0, samples: 0};
        seen.frames += s.framesDecoded ?? 0;
        seen.samples += s.totalSamplesReceived ?? 0;
        out[p.identity] = seen;
      }
    }
  }
  return out;
}"""


def bundle() -> bytes:
    cache = Path(os.environ.get("KEYROOM_TEST_CACHE", Path.home() / ".cache/keyroom-tests"))
    path = cache / TARBALL
    if not path.exists():
        raise AssertionError(f"{path} is missing: scripts/test fetches it (npm pack)")
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256, "livekit-client tarball checksum"
    with tarfile.open(path) as tar:
        member = tar.extractfile("package/dist/livekit-client.umd.js")
        assert member is not None
        return member.read()


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The app's own origin, serving the page and the SDK bundle."""
    yield f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, site: str) -> Iterator[ServerProcess]:
    process = start_server(tmp_path_factory.mktemp("lkjs"), "--allow-origin", site)
    try:
        yield process
    finally:
        stop_server(process)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(site: str) -> AsyncIterator[Browser]:
    code = bundle()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def sdk(request: web.Request) -> web.Response:
        return web.Response(body=code, content_type="application/javascript")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/livekit-client.umd.js", sdk)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(site.rsplit(":", 1)[1])).start()
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()
    await runner.cleanup()


async def join(
    browser: Browser, site: str, server: ServerProcess, identity: str
) -> tuple[Page, dict[str, Any]]:
    page = await browser.new_page()
    page.on(
        "console", lambda m: print(f"[{identity}] {m.text}"[:300]) if m.type == "error" else None
    )
    await page.goto(site + "/")
    url = f"ws://127.0.0.1:{server.port}"
    joined = await page.evaluate(JOIN_JS, {"url": url, "token": server.token(identity, ROOM)})
    return page, joined


async def sees(page: Page, *identities: str) -> bool:
    got = await page.evaluate(RECEIVED_JS)
    return all(got.get(i, {}).get("frames", 0) > 5 for i in identities) and all(
        got.get(i, {}).get("samples", 0) > 0 for i in identities
    )


async def test_two_simulcast_pages_see_each_other_and_a_late_joiner(
    browser: Browser, site: str, server: ServerProcess
) -> None:
    alice, joined = await join(browser, site, server, "alice")
    assert joined["sid"].startswith("PA_") and joined["room"] == ROOM
    assert joined["version"] == "2.23.0"
    bob, _ = await join(browser, site, server, "bob")
    await eventually(lambda: sees(alice, "bob"), 30, "alice decodes bob")
    await eventually(lambda: sees(bob, "alice"), 30, "bob decodes alice")
    carol, _ = await join(browser, site, server, "carol")
    await eventually(lambda: sees(carol, "alice", "bob"), 30, "the late joiner decodes both")
    await eventually(lambda: sees(alice, "bob", "carol"), 30, "alice decodes the late joiner")
    for page in (alice, bob, carol):
        await page.evaluate("() => window.room.disconnect()")
        await page.close()
