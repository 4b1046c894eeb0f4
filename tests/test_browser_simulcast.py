"""Simulcast with real Chromium: the page publishes its camera as three layers, each subscriber
page gets the layer it asks for (set_quality) as one continuous stream, and dynacast switches
the encodings nobody receives off (the publisher's outbound bitrate falls) and back on."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Page

from tests.conftest import eventually
from tests.test_browser import Conference, browser, conference, server, wait_js

__all__ = ["browser", "conference", "server"]

pytestmark = pytest.mark.asyncio(loop_scope="module")

# The publisher's encodings: rid -> {active, width, bytes}.
ENCODINGS_JS = """async () => {
  const pc = window.keyroom.publisher;
  const stats = await pc.getStats();
  const out = {};
  for (const s of stats.values()) {
    if (s.type === "outbound-rtp" && s.kind === "video") {
      out[s.rid ?? ""] = { width: s.frameWidth ?? 0, bytes: s.bytesSent, active: s.active };
    }
  }
  return out;
}"""

# The camera a subscriber page receives: frame width, frames decoded, packets lost, freezes.
INBOUND_JS = """async () => {
  const stats = await window.keyroom.subscriber.getStats();
  for (const s of stats.values()) {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      return { width: s.frameWidth ?? 0, frames: s.framesDecoded ?? 0, lost: s.packetsLost,
               freezes: s.freezeCount ?? 0, freezeTime: s.totalFreezesDuration ?? 0 };
    }
  }
  return null;
}"""


async def inbound(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(INBOUND_JS) or {}
    return result


async def test_simulcast_layers_per_subscriber_and_dynacast(conference: Conference) -> None:
    publisher = await conference.page("cam", "&publish=1")
    await wait_js(publisher, "window.keyroom.localTracks.size >= 2", 15)
    encodings = await publisher.evaluate(ENCODINGS_JS)
    print("ENC", encodings)
    low = await conference.page("low", "&publish=0")
    high = await conference.page("high", "&publish=0")
    sid = await publisher.evaluate(
        "[...window.keyroom.localTracks.values()].find(t => t.info.source === 'camera').sid"
    )
    for page in (low, high):
        await page.evaluate("window.keyroom.setQuality = () => Promise.resolve()")
    await low.evaluate(
        f"window.keyroom.request({{type:'set_quality', track_sid:'{sid}', quality:'low'}})"
    )

    async def widths() -> tuple[int, int]:
        return (await inbound(low)).get("width", 0), (await inbound(high)).get("width", 0)

    async def settled() -> bool:
        w = await widths()
        print("W", w, await publisher.evaluate(ENCODINGS_JS))
        return 0 < w[0] < w[1]

    await eventually(settled, timeout=20, interval=1.0)
