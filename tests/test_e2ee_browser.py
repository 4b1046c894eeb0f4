"""End-to-end encryption and recording with real Chromium pages (issue 16).

Two pages with the same passphrase decode each other's video; a third with a wrong passphrase
receives the packets and decodes nothing; a page without a passphrase refuses to publish in the
`e2ee_required` room. The room records itself (auto_record): the server-side capture of what it
forwarded holds no frame PyAV decodes, and the Python exporter, given the passphrase, decrypts
the page's frames (one format in JavaScript and Python). A Chromium publisher in a plain room is
recorded, exported and decoded. KEYROOM_RECORDING_SECONDS (default 4) sets the recorded length;
the acceptance run uses 20.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page

from sfu.cli import main as keyroom
from signaling.client import KeyroomClient, count_frames
from signaling.client.e2ee import FrameCryptor
from signaling.media import SyntheticVideoTrack
from tests.admin_helpers import call
from tests.conftest import ServerProcess, eventually, start_server, stop_server
from tests.test_browser import Conference, browser, received, receives, wait_js
from tests.test_recording import _decodable_ciphertext, decode, download, key_pair, recorder

pytestmark = pytest.mark.asyncio(loop_scope="module")
SECONDS = float(os.environ.get("KEYROOM_RECORDING_SECONDS", "4"))
__all__ = ["browser"]  # the module-scoped Chromium of test_browser.py


# [frames sent, keyframes encoded] of the page's (single-layer) video.
FRAMES_SENT_JS = """async () => {
  const stats = await window.keyroom.publisher.getStats();
  for (const s of stats.values()) {
    if (s.type === "outbound-rtp" && s.kind === "video") return [s.framesSent, s.keyFramesEncoded];
  }
  return [0, 0];
}"""


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    tmp_path = tmp_path_factory.mktemp("e2ee")
    key_pair(tmp_path)
    config = tmp_path / "keyroom.toml"
    config.write_text(
        f'[recording]\npublic_key = "{tmp_path / "public.pem"}"\nflush_interval = 0.2\n'
        f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n'
        # Single-layer: libvpx turns the ciphertext of a tiny simulcast layer (its header bytes
        # in clear) into garbage pictures without an error, which would blind the "nothing the
        # server can decode" check below.
        "[rooms.secret]\ne2ee_required = true\nrecording_allowed = true\nauto_record = true\n"
        "simulcast = false\n"
        # Single-layer too: the test counts the frames sent from the recording's first keyframe,
        # and a simulcast camera's layers take keyframes at their own times (layer switches).
        "[rooms.studio]\nrecording_allowed = true\nsimulcast = false\n"
    )
    server = start_server(tmp_path, "--config", str(config))
    try:
        yield server, tmp_path
    finally:
        stop_server(server)


@pytest_asyncio.fixture(loop_scope="module")
async def pages(keyed: tuple[ServerProcess, Path], browser: Browser) -> AsyncIterator[Conference]:
    conference = Conference(keyed[0], browser, room="secret")
    try:
        yield conference
    finally:
        await conference.close()


async def legacy_page(conference: Conference, identity: str, query: str) -> Page:
    token = conference.server.token(identity, conference.room)
    context = await conference.browser.new_context()
    await context.add_init_script("delete window.RTCRtpScriptTransform")
    page = await context.new_page()
    page.on("console", lambda message: conference.console.append(message.text))
    await page.goto(f"{conference.server.http_url}/?token={token}{query}")
    conference.pages.append(page)
    await wait_js(page, "window.keyroom?.state === 'connected'", 10)
    return page


async def test_same_passphrase_decodes_a_wrong_one_decodes_nothing(
    pages: Conference, keyed: tuple[ServerProcess, Path]
) -> None:
    server, tmp_path = keyed
    alice = await pages.page("alice", "#e2ee=correct%20horse")
    bob = await pages.page("bob", "#e2ee=correct%20horse")
    await eventually(receives(alice, "bob/camera"), 20, "alice decodes bob")
    await eventually(receives(bob, "alice/camera"), 20, "bob decodes alice")
    # A browser without RTCRtpScriptTransform: the createEncodedStreams path, same format.
    erin = await legacy_page(pages, "erin", "#e2ee=correct%20horse")
    assert await erin.evaluate("typeof RTCRtpScriptTransform") == "undefined"
    await eventually(receives(erin, "alice/camera"), 20, "erin decodes alice")
    await eventually(receives(alice, "erin/camera"), 20, "alice decodes erin")
    carol = await pages.page("carol", "#e2ee=wrong&publish=0")

    async def carol_gets_packets_only() -> bool:
        got = await received(carol)
        cam = got.get("alice/camera")
        return bool(cam and cam["packets"] > 50)

    await eventually(carol_gets_packets_only, 20, "carol receives alice's packets")
    got = await received(carol)
    assert got["alice/camera"]["frames"] == 0 and got["bob/camera"]["frames"] == 0
    assert await carol.evaluate("window.keyroom.e2ee.failures()") > 0
    # A page without the passphrase refuses to publish in clear.
    dave = await pages.page("dave")
    await wait_js(dave, "!document.getElementById('error').hidden", 10)
    error = await dave.evaluate("document.getElementById('error').textContent")
    assert "end-to-end encrypted" in error
    assert await dave.evaluate("window.keyroom.localTracks.size") == 0
    # Bob leaves: the others move their keys one step on; receivers follow the index.
    await bob.evaluate("window.keyroom.leave()")
    await wait_js(alice, "window.keyroom.e2ee.index === 1", 10)
    before = (await received(erin))["alice/camera"]["frames"]

    async def erin_decodes_more() -> bool:
        return (await received(erin))["alice/camera"]["frames"] > before + 30

    await eventually(erin_decodes_more, 20, "erin decodes alice's rekeyed video")
    # The room recorded itself: what the server forwarded does not decode, the passphrase does.
    assert await alice.evaluate("!document.getElementById('recording').hidden")
    status, body = await call(
        server, "GET", "/api/rooms/secret/recordings", recorder(server, "secret")
    )
    (info,) = body["recordings"]
    status, _ = await call(
        server, "DELETE", f"/api/rooms/secret/recordings/{info['id']}", recorder(server, "secret")
    )
    assert status == 204
    path = tmp_path / "data" / "recordings" / f"{info['id']}.krec"
    key = str(tmp_path / "private.pem")
    assert _decodable_ciphertext(path, key, "alice") == 0
    out = tmp_path / "alice.webm"
    assert keyroom(["recording", "export", str(path), "--key", key, "-o", str(out),
                    "--e2ee-passphrase", "correct horse"]) == 0  # fmt: skip
    assert decode(out)["video"][0] > 5


async def test_a_page_and_a_python_client_keep_decoding_each_other_across_a_rekey(
    keyed: tuple[ServerProcess, Path], browser: Browser
) -> None:
    """One E2EE room, a Chromium page and a Python client: both ratchet when a third leaves
    and keep decoding each other (static/e2ee-frame.js and client/e2ee.py agree)."""
    conference = Conference(keyed[0], browser, room="mixed")
    server = keyed[0]

    def python(identity: str) -> KeyroomClient:
        cryptor = FrameCryptor.from_passphrase("correct horse", "mixed")
        client = KeyroomClient(server.ws_url, server.token(identity, "mixed"), e2ee=cryptor)
        conference.clients.append(client)
        return client

    try:
        page = await conference.page("pia", "#e2ee=correct%20horse")
        py, goer = python("py"), python("goer")
        await py.connect()
        await goer.connect()
        await py.publish(SyntheticVideoTrack(), source="camera")
        await eventually(receives(page, "py/camera"), 20, "the page decodes the Python video")
        seen = await py.next_track(predicate=lambda r: r.kind == "video", timeout=20)
        assert await count_frames(seen.track, 15.0, enough=5) == 5
        await goer.leave()
        await wait_js(page, "window.keyroom.e2ee.index === 1", 10)
        await py.next_event("participant_left", timeout=10)
        assert py.e2ee is not None and py.e2ee.index == 1
        before = (await received(page))["py/camera"]["frames"]

        async def page_decodes_more() -> bool:
            return (await received(page))["py/camera"]["frames"] > before + 20

        await eventually(page_decodes_more, 20, "the page decodes the rekeyed Python video")
        newest = py.e2ee._newest  # noqa: SLF001 - the index the client now decrypts
        await eventually(lambda: newest.get("pia", (0, 0.0))[0] == 1, 10, "pia's new index")
        assert await count_frames(seen.track, 15.0, enough=20) == 20
        assert seen.decryption.failures == 0
    finally:
        await conference.close()


async def test_a_chromium_publisher_is_recorded_exported_and_decoded(
    keyed: tuple[ServerProcess, Path], browser: Browser, capsys: pytest.CaptureFixture[str]
) -> None:
    server, tmp_path = keyed
    studio = Conference(server, browser, room="studio")
    try:
        page = await studio.page("cam")
        watcher = await studio.client("watcher")
        remote = await watcher.next_track(predicate=lambda r: r.kind == "video", timeout=20)
        await wait_js(page, "window.keyroom.localTracks.size === 2", 10)
        # The recording starts at the keyframe it asks for: count the frames sent from there.
        # The subscriber's join asks for keyframes too: start once none came for a second, and
        # read before asking, since the keyframe can be out before the reply. It is one of the
        # frames sent between the last poll without it and the first with it: that window is
        # the count's uncertainty (wide when the machine is loaded).
        quiet: list[int] = []

        async def no_new_keyframe() -> bool:
            quiet.append((await page.evaluate(FRAMES_SENT_JS))[1])
            return len(quiet) > 2 and quiet[-3] == quiet[-1]

        await eventually(no_new_keyframe, 20, "a second without keyframes", interval=0.5)
        polled, keyframes = await page.evaluate(FRAMES_SENT_JS)
        window = [polled, polled]
        status, body = await call(
            server, "POST", "/api/rooms/studio/recordings", recorder(server, "studio"), {}
        )
        assert status == 201 and len(body["recording"]["tracks"]) == 2
        rid = body["recording"]["id"]

        async def keyframe_sent() -> bool:
            frames, now = await page.evaluate(FRAMES_SENT_JS)
            window[:] = [window[1], frames]
            return now > keyframes

        await eventually(keyframe_sent, 10, "a keyframe", interval=0.02)
        assert await count_frames(remote.track, SECONDS) > 0
        total = (await page.evaluate(FRAMES_SENT_JS))[0]
        sent = total - window[1] + 1  # from the last frame that can be the keyframe
        uncertainty = window[1] - window[0] - 1
        status, _ = await call(
            server, "DELETE", f"/api/rooms/studio/recordings/{rid}", recorder(server, "studio")
        )
        assert status == 204
    finally:
        await studio.close()
    status, data = await download(server, f"/api/recordings/{rid}", recorder(server, "studio"))
    assert status == 200
    file = tmp_path / "studio.krec"
    file.write_bytes(data)
    assert keyroom(["recording", "verify", str(file)]) == 0
    out = tmp_path / "studio.mkv"
    capsys.readouterr()
    assert keyroom(["recording", "export", str(file), "--key", str(tmp_path / "private.pem"),
                    "-o", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    exported = {
        line.split()[0]: int(line.split(", ")[1].split()[0])
        for line in printed.splitlines()
        if line.startswith(("video", "audio"))
    }
    decoded = decode(out)
    frames, first, last = decoded["video"]
    # Every frame the page sent from the recording's first keyframe on decodes (5 %, at least 4
    # frames, for the recording's start and stop; more by the polling's uncertainty).
    slack = max(0.05 * sent, 4)
    assert sent - slack <= frames <= sent + uncertainty + slack, (frames, sent, printed)
    assert abs(frames - exported["video"]) <= 0.05 * exported["video"], printed
    assert last - first >= SECONDS - 1.5, printed
    audio_frames, audio_first, _ = decoded["audio"]
    assert abs(audio_frames - exported["audio"]) <= 0.05 * exported["audio"], printed
    assert abs(first - audio_first) <= 0.1, printed
    with capsys.disabled():
        print(
            f"\nchromium publisher, {SECONDS:g} s: video {frames} frames decoded of {sent}"
            f" (+{uncertainty}) sent ({exported['video']} exported) over {last - first:.2f} s,"
            f" audio {audio_frames} of {exported['audio']},"
            f" video starts {first - audio_first:+.3f} s from audio"
        )
