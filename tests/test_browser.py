"""Real Chromium (Debian's `chromium`, driven by Playwright) against a real `keyroom serve`.

The conference page at `/` and its client library (signaling/static/keyroom.js) are exercised
the way a person uses them, next to Python clients in the same rooms. Video counts as received
when the page's `getStats()` reports inbound-rtp `framesDecoded > 0` for it (a video element
shows a placeholder even without media); audio when `totalSamplesReceived > 0`.

One browser and one server serve the whole module (each test has its own room), to keep the
module to seconds on a small machine. `KEYROOM_SCREENSHOT=docs/img/conference.png` makes the
three-participant test save the page as that file.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright

from auth.tokens import mint_token
from loadtest.chromium import BASE_FLAGS, CHROMIUM
from signaling.client import KeyroomClient, RemoteTrack, count_frames
from signaling.media import SyntheticAudioTrack, SyntheticVideoTrack
from tests.admin_helpers import call
from tests.conftest import KEY_ID, SECRET, ServerProcess, eventually, start_server, stop_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM_FLAGS = [
    *BASE_FLAGS,
    # Without it Chromium gathers no loopback candidate: the only interface in the test netns.
    "--allow-loopback-in-peer-connection",
]

# What a page receives, keyed "<publisher identity>/<source>" (see the module docstring).
RECEIVED_JS = """async () => {
  const room = window.keyroom;
  const stats = await room.subscriber.getStats();
  const out = {};
  for (const s of stats.values()) {
    if (s.type !== "inbound-rtp") continue;
    const remote = room.remoteTracks.get(s.mid);
    if (!remote) continue;
    out[`${remote.participant?.identity}/${remote.info?.source}`] = {
      frames: s.framesDecoded ?? 0,
      samples: s.totalSamplesReceived ?? 0,
      packets: s.packetsReceived,
      codec: stats.get(s.codecId)?.mimeType,
    };
  }
  return out;
}"""

# What a page's publisher PC sends, keyed by mid.
SENT_JS = """async () => {
  const stats = await window.keyroom.publisher.getStats();
  const out = {};
  for (const s of stats.values()) {
    if (s.type === "outbound-rtp") {
      out[s.mid] = { packets: s.packetsSent, codec: stats.get(s.codecId)?.mimeType };
    }
  }
  return out;
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(tmp_path_factory.mktemp("browser"))
    try:
        yield process
    finally:
        stop_server(process)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # Debian's chromium, never a downloaded one (`playwright install` is not used).
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


class Conference:
    """Pages and Python clients of one test; all of them leave at the end."""

    def __init__(self, server: ServerProcess, browser: Browser, room: str) -> None:
        self.server = server
        self.browser = browser
        self.room = room
        self.pages: list[Page] = []
        self.clients: list[KeyroomClient] = []
        self.console: list[str] = []

    async def page(self, identity: str, query: str = "", **grants: Any) -> Page:
        """Open the conference page with a `?token=` link and wait until it is connected."""
        token = self.server.token(identity, self.room, grants=grants or None)
        page = await self.open(f"/?token={token}{query}")
        await wait_js(page, "window.keyroom?.state === 'connected'", 10)
        return page

    async def open(self, path: str) -> Page:
        context = await self.browser.new_context(viewport={"width": 1280, "height": 720})
        page = await context.new_page()
        page.on("console", lambda message: self.console.append(message.text))
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        await page.goto(self.server.http_url + path)
        self.pages.append(page)
        return page

    async def client(self, identity: str, *, publish: bool = False) -> KeyroomClient:
        client = KeyroomClient(self.server.ws_url, self.server.token(identity, self.room))
        self.clients.append(client)
        await client.connect()
        if publish:
            await client.publish(SyntheticAudioTrack(), source="microphone", name="mic")
            await client.publish(SyntheticVideoTrack(), source="camera", name="cam")
        return client

    async def close(self) -> None:
        for page in self.pages:
            await page.evaluate("window.keyroom?.leave()")
            await page.context.close()
        for client in self.clients:
            await client.leave()


@pytest_asyncio.fixture(loop_scope="module")
async def conference(
    server: ServerProcess, browser: Browser, request: pytest.FixtureRequest
) -> AsyncIterator[Conference]:
    conference = Conference(server, browser, room=request.node.name)
    try:
        yield conference
    finally:
        await conference.close()


async def received(page: Page) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = await page.evaluate(RECEIVED_JS)
    return result


async def wait_js(page: Page, expression: str, timeout: float) -> None:
    """Wait until `expression` is true in the page. Playwright's wait_for_function polls with
    eval, which the page's Content-Security-Policy forbids; evaluate() is not subject to it."""

    async def check() -> bool:
        return bool(await page.evaluate(expression))

    await eventually(check, timeout, expression, interval=0.1)


def receives(page: Page, *wanted: str) -> Callable[[], Awaitable[bool]]:
    """A check: the page decodes video (and audio samples) from every "<identity>/<source>"."""

    async def check() -> bool:
        got = await received(page)
        return all(
            key in got and (got[key]["frames"] > 0 or got[key]["samples"] > 0) for key in wanted
        )

    return check


async def collect_tracks(client: KeyroomClient, count: int, timeout: float) -> list[RemoteTrack]:
    deadline = time.monotonic() + timeout
    return [
        await client.next_track(timeout=max(deadline - time.monotonic(), 0.01))
        for _ in range(count)
    ]


async def test_two_pages_and_a_python_client_see_and_hear_each_other(
    conference: Conference,
) -> None:
    conference.room = "design review"  # the name shown in the screenshot
    # Simulcast cameras: each subscriber's first picture waits for its layer's keyframe, and this
    # is the suite's first Chromium start.
    BUDGET = 15.0
    started = time.monotonic()
    carol = await conference.client("carol", publish=True)
    alice = await conference.page("alice")
    bob = await conference.page("bob")
    # The token was read once and taken out of the address bar.
    assert "token" not in alice.url and alice.url.endswith("/")

    everyone = ("microphone", "camera")
    await eventually(
        receives(alice, *(f"{who}/{s}" for who in ("bob", "carol") for s in everyone)),
        BUDGET - (time.monotonic() - started),
        "alice decodes bob and carol",
    )
    await eventually(
        receives(bob, *(f"{who}/{s}" for who in ("alice", "carol") for s in everyone)),
        BUDGET - (time.monotonic() - started),
        "bob decodes alice and carol",
    )
    tracks = await collect_tracks(carol, 4, BUDGET - (time.monotonic() - started))
    # A page's camera is simulcast: a subscriber's first picture waits for its layer's keyframe.
    frames = [0] * len(tracks)

    async def all_decode() -> bool:
        counts = await asyncio.gather(*(count_frames(t.track, 0.5) for t in tracks))
        frames[:] = [a + b for a, b in zip(frames, counts, strict=True)]
        return all(n > 0 for n in frames)

    await eventually(all_decode, BUDGET - (time.monotonic() - started), f"carol decodes: {frames}")
    assert time.monotonic() - started < BUDGET
    assert sorted((t.participant_identity, t.kind) for t in tracks) == [
        ("alice", "audio"),
        ("alice", "video"),
        ("bob", "audio"),
        ("bob", "video"),
    ]
    assert all(n > 0 for n in frames), frames

    # Data messages both ways between a page and the Python client.
    await alice.evaluate(
        """() => { window.inbox = [];
                   keyroom.addEventListener("data", (e) => inbox.push(e.detail)); }"""
    )
    await alice.evaluate("keyroom.sendData('hi from alice', { topic: 'chat' })")
    message = await carol.next_data(timeout=5)
    assert (message["from"], message["topic"], message["payload"]) == (
        "alice",
        "chat",
        "hi from alice",
    )
    await carol.send_data("hi alice", topic="chat", to=["alice"])
    await wait_js(alice, "inbox.length === 1 && inbox[0].from === 'carol'", 5)

    # The page shows everyone with their name, and what each may do.
    assert await alice.locator("#participants li").count() == 3
    names = await alice.locator(".tile .name").all_inner_texts()
    assert sorted(names) == ["alice (you)", "bob", "carol"]
    assert await alice.locator("#connection").inner_text() == "Connected"
    assert not await alice.locator("#camera").is_disabled()
    screenshot = os.environ.get("KEYROOM_SCREENSHOT")
    if screenshot:
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        await alice.screenshot(path=screenshot)
    # The page runs under its own CSP without violations, and never logs its token.
    assert not [line for line in conference.console if "Content Security Policy" in line]
    assert not [line for line in conference.console if "pageerror" in line]
    assert not [line for line in conference.console if ".eyJ" in line]


async def test_page_serves_a_restrictive_content_security_policy(server: ServerProcess) -> None:
    import urllib.request

    with urllib.request.urlopen(server.http_url + "/", timeout=5) as response:
        policy = response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    with urllib.request.urlopen(server.http_url + "/static/keyroom.js", timeout=5) as response:
        assert "javascript" in response.headers["Content-Type"]


async def test_h264_publisher_reaches_a_vp8_page_and_a_python_client(
    conference: Conference,
) -> None:
    alice = await conference.page("alice", "&codec=h264")
    viewer = await conference.page("viewer", canPublish=False)  # Chromium's default: VP8 first
    carol = await conference.client("carol")
    await eventually(receives(viewer, "alice/camera"), 10, "the viewer decodes alice")
    got = await received(viewer)
    assert got["alice/camera"]["codec"] == "video/H264"
    sent = await alice.evaluate(SENT_JS)
    assert {s["codec"] for s in sent.values()} == {"video/H264", "audio/opus"}
    tracks = await collect_tracks(carol, 2, 10)
    (video,) = [t for t in tracks if t.kind == "video"]
    assert video.info is not None and video.info["mime_type"].lower() == "video/h264"
    assert await count_frames(video.track, 5.0, enough=1) > 0


async def test_viewer_page_cannot_publish_even_when_forced(conference: Conference) -> None:
    alice = await conference.client("alice", publish=True)
    viewer = await conference.page("viewer", canPublish=False)
    for button in ("#camera", "#mic", "#screen"):
        assert await viewer.locator(button).is_disabled()
    await eventually(receives(viewer, "alice/camera", "alice/microphone"), 10, "viewer sees alice")
    before = conference.server.runtime()["stats"]["dropped"].get("unknown_ssrc", 0)
    # From the console: the library's publish is refused at add_track; then the media is put on
    # the PC directly and the server's "inactive" answer is overridden, so Chromium sends anyway.
    forced = await viewer.evaluate(
        """async () => {
          const room = window.keyroom;
          const [track] = (await navigator.mediaDevices.getUserMedia({ video: true }))
            .getVideoTracks();
          let refusal = null;
          try { await room.publish(track); } catch (error) { refusal = error.code; }
          const pc = room.publisher;
          const transceiver = pc.addTransceiver(track, { direction: "sendonly" });
          await pc.setLocalDescription();
          const reply = await room.request({ type: "offer", target: "publisher",
                                             sdp: pc.localDescription.sdp });
          await pc.setRemoteDescription({ type: "answer",
                                          sdp: reply.sdp.replaceAll("a=inactive", "a=recvonly") });
          return { refusal, inactive: reply.sdp.includes("a=inactive"), mid: transceiver.mid };
        }"""
    )
    assert forced["refusal"] == "forbidden"
    assert forced["inactive"]

    async def sent_and_dropped() -> bool:
        sent = await viewer.evaluate(SENT_JS)
        dropped = conference.server.runtime()["stats"]["dropped"].get("unknown_ssrc", 0)
        return sent.get(forced["mid"], {}).get("packets", 0) > 20 and dropped - before > 20

    await eventually(sent_and_dropped, 10, "Chromium sends and the server drops it")
    assert alice.remote_tracks == {}
    assert not [e for e in alice.events if e["type"] == "track_published"]


async def test_expired_link_shows_a_human_error_and_starts_no_media(
    conference: Conference,
) -> None:
    expired = mint_token(
        key_id=KEY_ID,
        secret=SECRET,
        identity="late",
        room=conference.room,
        ttl=600,
        now=time.time() - 3600,
    )
    page = await conference.open(f"/?token={expired}")
    error = page.locator("#error")
    await error.wait_for(state="visible", timeout=10_000)
    assert "This link has expired" in await error.inner_text()
    assert await page.evaluate("window.keyroom.state") == "disconnected"
    assert await page.evaluate("window.keyroom.publisher === null")
    assert await page.locator("video").count() == 0
    assert await page.locator("#join-form").is_visible()


async def test_full_room_shows_a_human_error(
    browser: Browser, tmp_path: Path, conference: Conference
) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text("[limits]\nmax_participants = 1\n")
    full = start_server(tmp_path, "--config", str(config))
    try:
        conference.server = full
        await conference.client("first")
        page = await conference.open(f"/?token={full.token('second', conference.room)}")
        await page.locator("#error").wait_for(state="visible", timeout=10_000)
        assert "The room is full" in await page.locator("#error").inner_text()
    finally:
        await conference.close()
        conference.pages, conference.clients = [], []
        stop_server(full)


# The width each simulcast encoding of the page's camera sends, by RID (encodings sending frames).
LAYER_WIDTHS_JS = """async () => {
  const out = {};
  for (const s of (await window.keyroom.publisher.getStats()).values()) {
    if (s.type === "outbound-rtp" && s.kind === "video" && s.frameWidth) out[s.rid] = s.frameWidth;
  }
  return out;
}"""


async def test_the_page_camera_sends_its_full_resolution_layer(conference: Conference) -> None:
    """The page captures 640x360, for which Chromium encodes two simulcast layers, not three:
    it keeps the first encodings listed. Listed lowest first, the full layer was the one left
    out (160 and 320 wide sent); listed highest first, a subscriber on "high" gets 640."""
    alice = await conference.page("alice")
    bob = await conference.client("bob")  # subscribes at the top quality: dynacast keeps it on
    await collect_tracks(bob, 2, 10)
    widths: dict[str, int] = {}

    async def full_layer_sent() -> bool:
        widths.update(await alice.evaluate(LAYER_WIDTHS_JS))
        return 640 in widths.values()

    await eventually(full_layer_sent, 15, lambda: f"widths sent by RID: {widths}")
    assert widths.get("f") == 640


async def test_screen_share_is_published_as_screen_share(conference: Conference) -> None:
    alice = await conference.page("alice", "&publish=0")
    bob = await conference.client("bob")
    await alice.click("#screen")
    (remote,) = await collect_tracks(bob, 1, 10)
    assert remote.participant_identity == "alice" and remote.kind == "video"
    assert remote.info is not None and remote.info["source"] == "screen_share"
    assert await count_frames(remote.track, 5.0, enough=1) > 0
    assert await alice.locator("#screen").inner_text() == "Stop sharing"
    names = await alice.locator(".tile .name").all_inner_texts()
    assert "alice's screen (you)" in names


async def test_resume_after_socket_loss_keeps_media_and_hides_the_gap(
    conference: Conference,
) -> None:
    bob = await conference.client("bob", publish=True)
    carol = await conference.page("carol")
    alice = await conference.page("alice")
    await eventually(receives(alice, "bob/camera", "carol/camera"), 10, "alice decodes others")
    tracks = await collect_tracks(bob, 4, 10)
    from_alice = [t for t in tracks if t.participant_identity == "alice" and t.kind == "video"]
    old_token = await alice.evaluate("keyroom.joined.resume_token")
    bob_seen = len(bob.events)
    await carol.evaluate(
        """() => { window.seen = [];
                   keyroom.addEventListener("server", (e) => seen.push(e.detail.type)); }"""
    )

    # Only the WebSocket dies; the peer connections stay up.
    await alice.evaluate(
        """() => { window.states = [];
                   keyroom.addEventListener("state", (e) => states.push(e.detail.state));
                   keyroom.ws.close(); }"""
    )
    await wait_js(alice, "states.join() === 'reconnecting,connected'", 10)
    assert await alice.evaluate("keyroom.joined.resume_token") != old_token
    assert await alice.evaluate("keyroom.ping()") > 0  # the new socket carries requests

    frames_before = (await received(alice))["bob/camera"]["frames"]
    assert await count_frames(from_alice[0].track, 5.0, enough=1) > 0

    async def alice_decodes_more() -> bool:
        return bool((await received(alice))["bob/camera"]["frames"] > frames_before)

    await eventually(alice_decodes_more, 5, "alice decodes more of bob after the resume")
    assert await alice.locator("#participants li").count() == 3
    gap = ("participant_left", "participant_joined")
    assert [e for e in bob.events[bob_seen:] if e["type"] in gap] == []
    assert [e for e in await carol.evaluate("window.seen") if e in gap] == []


async def test_nine_participants_fill_a_three_by_three_grid(conference: Conference) -> None:
    for n in range(8):
        await conference.client(f"guest{n}")
    page = await conference.page("host", "&publish=0")
    await wait_js(page, "document.querySelectorAll('#participants li').length === 9", 10)
    assert await page.locator(".tile").count() == 9
    columns = await page.evaluate(
        "getComputedStyle(document.getElementById('grid')).gridTemplateColumns.split(' ').length"
    )
    assert columns == 3


async def test_mute_and_leave_buttons_reach_the_others(conference: Conference) -> None:
    bob = await conference.client("bob")
    alice = await conference.page("alice")
    await wait_js(alice, "document.getElementById('mic').textContent === 'Mute mic'", 10)
    await alice.click("#mic")
    muted = await bob.next_event("track_muted", timeout=5)
    assert muted["muted"] is True
    await wait_js(alice, "document.getElementById('mic').textContent === 'Unmute mic'", 5)
    await alice.click("#mic")
    assert (await bob.next_event("track_muted", timeout=5))["muted"] is False
    await alice.click("#leave")
    left = await bob.next_event("participant_left", timeout=5)
    assert (left["identity"], left["reason"]) == ("alice", "left")
    assert "You left the room." in await alice.locator("#error").inner_text()


# Bytes of video the page's publisher PC has sent so far.
VIDEO_BYTES_SENT_JS = """async () => {
  let total = 0;
  for (const s of (await window.keyroom.publisher.getStats()).values()) {
    if (s.type === "outbound-rtp" && s.kind === "video") total += s.bytesSent;
  }
  return total;
}"""


async def test_max_video_bitrate_caps_a_chromium_publisher(conference: Conference) -> None:
    """PROTOCOL 5 max_video_bitrate reaches Chromium as REMB. 150 kbit/s is below Chromium's
    start bitrate (~300 kbit/s), so only the cap can explain a rate under it."""
    server = conference.server
    for room, cap in ((conference.room, 150_000), (conference.room + "-300k", 300_000)):
        creator = server.token("ops", room=room, grants={"roomCreate": True})
        status, _ = await call(
            server,
            "POST",
            "/api/rooms",
            creator,
            {"name": room, "limits": {"max_video_bitrate": cap}},
        )
        assert status == 201
    capped = await conference.page("alice")
    conference.room += "-300k"
    capped_300 = await conference.page("bob")
    viewer = await conference.client("viewer")  # in the 300k room: something to forward to
    await collect_tracks(viewer, 2, 10)
    await asyncio.sleep(8)  # congestion control settles
    # Both pages over the same 2 s (each one's window a little longer: the rates err high).
    pages = (capped, capped_300)
    first = [await page.evaluate(VIDEO_BYTES_SENT_JS) for page in pages]
    await asyncio.sleep(2)
    rates = [
        (await page.evaluate(VIDEO_BYTES_SENT_JS) - sent) * 8 / 2
        for page, sent in zip(pages, first, strict=True)
    ]
    assert rates[0] < 165_000, f"150k room: {rates[0]:.0f} bit/s"
    assert rates[1] < 330_000, f"300k room: {rates[1]:.0f} bit/s"
    assert rates[0] > 0 and rates[1] > 0


async def test_each_dev_link_visitor_joins_under_a_name_of_their_own(
    conference: Conference,
) -> None:
    """The link `--dev` prints opened in two tabs: two people, not a duplicate identity; and a
    closed tab leaves at once (pagehide sends `leave`) instead of holding its place parked."""
    pages = []
    for name in ("Ann", "Ben"):
        page = await conference.open("/?dev&publish=0")
        assert await page.locator("#join-form").is_hidden()
        await page.fill("#dev-name", name)
        await page.click("#dev-form button")
        await wait_js(page, "window.keyroom?.state === 'connected'", 10)
        pages.append(page)
    ann, ben = pages
    await wait_js(ann, "document.querySelectorAll('#participants li').length === 2", 10)
    listed = " ".join(await ann.locator("#participants li").all_inner_texts())
    assert "Ann" in listed and "Ben" in listed
    conference.pages.remove(ben)
    await ben.context.close()  # fires pagehide
    await wait_js(ann, "document.querySelectorAll('#participants li').length === 1", 5)


async def test_dev_tokens_refuse_names_with_control_characters(server: ServerProcess) -> None:
    status, body = await call(server, "POST", "/dev/token", None, {"name": "\x1b[31mroot"})
    assert status == 400 and "control character" in body["error"]


# The page's video RemoteTrack on `mid` and what it decoded there (issue 11 item 3).
SECTION_JS = """async (mid) => {
  const room = window.keyroom;
  let frames = 0;
  for (const s of (await room.subscriber.getStats()).values()) {
    if (s.type === "inbound-rtp" && s.mid === mid) frames = Math.max(frames, s.framesDecoded ?? 0);
  }
  const remote = room.remoteTracks.get(mid);
  return { frames, trackSid: remote?.trackSid ?? null, identity: remote?.participant?.identity,
           source: remote?.info?.source, sections: room.subscriber.getTransceivers().length };
}"""


async def test_a_page_follows_tracks_on_a_recycled_section(conference: Conference) -> None:
    """A publisher unpublishes and publishes again: the page gets each new track on the same
    mid ("trackended" then "track", Chromium's ontrack fires again) and decodes the latest."""
    alice = await conference.client("alice")
    page = await conference.page("viewer", "&publish=0")
    await page.evaluate(
        """() => { window.seen = [];
                   for (const type of ["track", "trackended"]) keyroom.addEventListener(
                     type, (e) => seen.push([type, e.detail.mid, e.detail.trackSid])); }"""
    )
    info = await alice.publish(SyntheticVideoTrack(), source="camera")
    await eventually(receives(page, "alice/camera"), 10, "the page decodes alice")
    (mid,) = await page.evaluate("[...keyroom.remoteTracks.keys()]")
    sids = [info["sid"]]
    for _ in range(3):
        await alice.unpublish(info["sid"])
        await wait_js(page, "keyroom.remoteTracks.size === 0", 10)
        info = await alice.publish(SyntheticVideoTrack(), source="camera")
        sids.append(info["sid"])
        await wait_js(page, f"keyroom.remoteTracks.get('{mid}')?.trackSid === '{info['sid']}'", 10)
    first = await page.evaluate(SECTION_JS, mid)

    async def decodes_more() -> bool:
        return bool((await page.evaluate(SECTION_JS, mid))["frames"] > first["frames"] + 5)

    await eventually(decodes_more, 10, "the page decodes the latest track on the recycled mid")
    latest = await page.evaluate(SECTION_JS, mid)
    assert (latest["trackSid"], latest["identity"], latest["source"]) == (
        sids[-1],
        "alice",
        "camera",
    )
    assert latest["sections"] <= 2  # one video section, recycled (plus none for data)
    expected = [["track", mid, sids[0]]]
    for old, new in zip(sids, sids[1:], strict=False):
        expected += [["trackended", mid, old], ["track", mid, new]]
    assert await page.evaluate("window.seen") == expected

    # Another publisher's track on the same mid: its own tile, which its end turns off.
    carol = await conference.client("carol")
    await alice.unpublish(info["sid"])
    await wait_js(page, "keyroom.remoteTracks.size === 0", 10)
    theirs = await carol.publish(SyntheticVideoTrack(), source="camera")
    await wait_js(page, f"keyroom.remoteTracks.get('{mid}')?.participant?.identity === 'carol'", 10)
    tile = f"document.querySelector('.tile[data-key=\"{carol.participant['sid']}\"]')"
    await wait_js(page, f"{tile}?.dataset.video === 'on'", 10)
    await carol.unpublish(theirs["sid"])
    await wait_js(page, f"{tile}.dataset.video === 'off'", 10)
