"""keyroom.js follows a cluster's `redirect` (docs/cluster.md): an application page on its own
origin (listed in the nodes' `allowed_origins`) joins through a node that does not hold the
room and ends up connected on the node that does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from aiohttp import web
from playwright.async_api import async_playwright

from loadtest.spawn import free_port
from signaling.client import KeyroomClient
from tests.admin_helpers import call
from tests.cluster_helpers import registered, running_redis, start_node, stop_node
from tests.conftest import eventually

STATIC = Path(__file__).parent.parent / "signaling" / "static"
PAGE = """<!doctype html><script type="module">
import { Room } from "/static/keyroom.js";
const query = new URLSearchParams(location.search);
window.room = new Room({ url: query.get("url"), token: query.get("token") });
window.joined = window.room.connect().then(() => "ok", (e) => `error: ${e.code}`);
</script>"""
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--allow-loopback-in-peer-connection"]  # fmt: skip


@pytest_asyncio.fixture
async def app_origin() -> AsyncIterator[str]:
    """The application's own origin: its page and a copy of keyroom.js and the modules it
    imports, no CSP."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_static("/static/", STATIC)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_the_page_follows_a_redirect_to_the_rooms_node(
    tmp_path: Path, app_origin: str
) -> None:
    with running_redis(tmp_path) as redis_server:
        a = start_node(tmp_path, redis_server.url, "ja", "--allow-origin", app_origin)
        b = start_node(tmp_path, redis_server.url, "jb", "--allow-origin", app_origin)
        try:
            await eventually(lambda: registered(redis_server, 2), 10, "two nodes registered")
            creator = b.token("ops", "js-room", grants={"roomCreate": True})
            assert (await call(b, "POST", "/api/rooms", creator, {"name": "js-room"}))[0] == 201
            watcher = KeyroomClient(b.ws_url, b.token("watcher", "js-room"))
            await watcher.connect()
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_FLAGS
                )
                page = await browser.new_page()
                token = a.token("page-user", "js-room")
                await page.goto(f"{app_origin}/?url={a.ws_url}&token={token}")
                assert await page.evaluate("window.joined") == "ok"
                assert await page.evaluate("window.room.url") == b.ws_url
                event = await watcher.next_event("participant_joined", timeout=10)
                assert event["participant"]["identity"] == "page-user"
                await browser.close()
            await watcher.close()
        finally:
            stop_node(a)
            stop_node(b)
