"""Acceptance (issue 15): Chromium with keyroom.js joins with a token bound to its
non-extractable WebCrypto key (kept in IndexedDB); a copy of that token used from a second
browser profile, which has its own key, is refused and audited."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from playwright.async_api import BrowserContext, Page, async_playwright

from auth.tokens import mint_token
from tests.admin_helpers import call
from tests.conftest import KEY_ID, SECRET, eventually, start_server, stop_server
from tests.signaling_helpers import audit_file_events
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS, wait_js

BINDING_JS = """async () => {
  const m = await import("/static/keybinding.js");
  const pair = await m.deviceKey();
  return {jkt: await m.thumbprint(pair.publicKey), extractable: pair.privateKey.extractable};
}"""


async def profile(playwright: Any, directory: Path) -> BrowserContext:
    context: BrowserContext = await playwright.chromium.launch_persistent_context(
        str(directory), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
    )
    return context


async def device_key(context: BrowserContext, base: str) -> dict[str, Any]:
    page = context.pages[0] if context.pages else await context.new_page()
    await page.goto(base + "/")
    result: dict[str, Any] = await page.evaluate(BINDING_JS)
    return result


async def join_page(context: BrowserContext, url: str) -> Page:
    page = await context.new_page()
    await page.goto(url)
    await wait_js(page, "['connected', 'disconnected'].includes(window.keyroom?.state)", 15)
    return page


async def test_chromium_joins_with_its_bound_token_and_a_copy_elsewhere_fails(
    tmp_path: Path,
) -> None:
    audit_path = tmp_path / "audit.jsonl"
    config = tmp_path / "keyroom.toml"
    config.write_text(f'[audit]\npath = "{audit_path}"\n')
    server = start_server(tmp_path, "--config", str(config))
    try:
        async with async_playwright() as playwright:
            first = await profile(playwright, tmp_path / "profile-a")
            key = await device_key(first, server.http_url)
            assert key["extractable"] is False
            await first.close()
            # The key outlives the browser: IndexedDB on disk, same thumbprint after a restart.
            first = await profile(playwright, tmp_path / "profile-a")
            assert (await device_key(first, server.http_url))["jkt"] == key["jkt"]
            bound = mint_token(
                key_id=KEY_ID, secret=SECRET, identity="alice", room="bound-room", ttl=600,
                now=time.time(), bind=key["jkt"],
            )  # fmt: skip
            page = await join_page(first, f"{server.http_url}/?token={bound}")
            assert await page.evaluate("window.keyroom.state") == "connected"
            admin = mint_token(
                key_id=KEY_ID, secret=SECRET, identity="ops", room="bound-room", ttl=60,
                now=time.time(), grants={"roomAdmin": True},
            )  # fmt: skip
            _, body = await call(server, "GET", "/api/rooms/bound-room/participants", admin)
            view = body["participants"][0]
            assert (view["identity"], view["bound"], view["client_kind"]) == (
                "alice", True, "browser"
            )  # fmt: skip

            # The same token, copied into a second profile: its own key, a refused join.
            second = await profile(playwright, tmp_path / "profile-b")
            other = await device_key(second, server.http_url)
            assert other["jkt"] != key["jkt"]
            thief = await join_page(second, f"{server.http_url}/?token={bound}")
            assert await thief.evaluate("window.keyroom.state") == "disconnected"
            assert await thief.evaluate("document.getElementById('error').hidden") is False
            # The rightful page is still in the room.
            assert await page.evaluate("window.keyroom.state") == "connected"
            await page.evaluate("window.keyroom.leave()")
            await first.close()
            await second.close()

        def refusals() -> list[dict[str, Any]]:
            return audit_file_events(audit_path, "join_refused")

        await eventually(refusals, 10)
        assert (refusals()[0]["reason"], refusals()[0]["detail"]) == ("pop_failed", "wrong_key")
    finally:
        stop_server(server)
