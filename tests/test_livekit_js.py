"""LiveKit's JavaScript SDK (`livekit-client` 2.23.0, its UMD bundle from the npm registry) in
real Chromium against keyroom: pages publish camera and microphone with simulcast on, see each
other (inbound-rtp `framesDecoded` from `getStats()`), and a late joiner sees both.

The bundle is fetched by scripts/test (`npm pack`, outside the test's network namespace) into
`$KEYROOM_TEST_CACHE`, never into the repository; its SHA-256 is pinned here as well.
"""

from __future__ import annotations

import asyncio
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
from tests.admin_helpers import call
from tests.conftest import ServerProcess, eventually, start_server, stop_server
from tests.test_recording import _decodable_ciphertext, key_pair, recorder

pytestmark = pytest.mark.asyncio(loop_scope="module")

TARBALL = "livekit-client-2.23.0.tgz"
SHA256 = "993eafb83afb4c566bb388108ad6469bf499d76200014c96c35fe3b39fee859d"
FLAGS = [*BASE_FLAGS, "--allow-loopback-in-peer-connection"]
ROOM = "js-room"
E2EE_ROOM = "lk-e2ee"

PAGE = """<!doctype html><meta charset="utf-8"><title>lk</title>
<script src="/livekit-client.umd.js"></script><body></body>"""

JOIN_JS = """async ({url, token, key, publish}) => {
  const LK = window.LivekitClient;
  const options = {adaptiveStream: false, dynacast: false, publishDefaults: {simulcast: true}};
  const keyProvider = key ? new LK.ExternalE2EEKeyProvider() : null;
  if (key) {
    // LiveKit's frame cryptor runs in its worker; `e2ee`, not `encryption`: the latter also
    // encrypts data packets, which keyroom's text data relay does not carry.
    options.e2ee = {keyProvider, worker: new Worker("/livekit-client.e2ee.worker.js")};
  }
  const room = new LK.Room(options);
  window.room = room;
  room.on(LK.RoomEvent.TrackSubscribed, (track) => {
    const element = track.attach();
    element.muted = true;
    document.body.appendChild(element);
  });
  if (key) {
    await keyProvider.setKey(key);
    await room.setE2EEEnabled(true);
  }
  await room.connect(url, token);
  if (publish) await room.localParticipant.enableCameraAndMicrophone();
  return {sid: room.localParticipant.sid, room: room.name, version: LK.version,
          e2ee: room.isE2EEEnabled};
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
        const seen = out[p.identity] ?? {frames: 0, samples: 0, packets: 0};
        seen.frames += s.framesDecoded ?? 0;
        if (s.kind === "video") seen.packets += s.packetsReceived ?? 0;
        seen.samples += s.totalSamplesReceived ?? 0;
        out[p.identity] = seen;
      }
    }
  }
  return out;
}"""


def bundle() -> dict[str, bytes]:
    """The SDK's UMD bundle and its E2EE worker, by the path the test's site serves them at."""
    cache = Path(os.environ.get("KEYROOM_TEST_CACHE", Path.home() / ".cache/keyroom-tests"))
    path = cache / TARBALL
    if not path.exists():
        raise AssertionError(f"{path} is missing: scripts/test fetches it (npm pack)")
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256, "livekit-client tarball checksum"
    files = {}
    with tarfile.open(path) as tar:
        for name in ("livekit-client.umd.js", "livekit-client.e2ee.worker.js"):
            member = tar.extractfile(f"package/dist/{name}")
            assert member is not None
            files["/" + name] = member.read()
    return files


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The app's own origin, serving the page and the SDK bundle."""
    yield f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lkjs")


@pytest.fixture(scope="module")
def server(workdir: Path, site: str) -> Iterator[ServerProcess]:
    """keyroom; its E2EE room requires encrypted tracks and records itself (the server-side
    capture of what it forwarded)."""
    key_pair(workdir)
    config = workdir / "keyroom.toml"
    config.write_text(
        f'[recording]\npublic_key = "{workdir / "public.pem"}"\nflush_interval = 0.2\n'
        f"[rooms.{E2EE_ROOM}]\ne2ee_required = true\nrecording_allowed = true\n"
        "auto_record = true\n"
    )
    process = start_server(workdir, "--allow-origin", site, "--config", str(config))
    try:
        yield process
    finally:
        stop_server(process)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(site: str) -> AsyncIterator[Browser]:
    files = bundle()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def sdk(request: web.Request) -> web.Response:
        return web.Response(body=files[request.path], content_type="application/javascript")

    app = web.Application()
    app.router.add_get("/", page)
    for path in files:
        app.router.add_get(path, sdk)
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
    browser: Browser,
    site: str,
    server: ServerProcess,
    identity: str,
    room: str = ROOM,
    *,
    key: str = "",
    publish: bool = True,
) -> tuple[Page, dict[str, Any]]:
    page = await browser.new_page()
    page.on(
        "console", lambda m: print(f"[{identity}] {m.text}"[:300]) if m.type == "error" else None
    )
    await page.goto(site + "/")
    url = f"ws://127.0.0.1:{server.port}"
    arguments = {"url": url, "token": server.token(identity, room), "key": key, "publish": publish}
    joined = await page.evaluate(JOIN_JS, arguments)
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


# The ICE credentials of both peer connections: local and remote, in the descriptions and in
# the transport the connection actually uses (getStats), and the ICE states.
ICE_JS = """async () => {
  const ufrag = (sd) => (sd?.sdp.match(/a=ice-ufrag:(\\S+)/) ?? [])[1];
  const out = {};
  const pcs = window.room.engine.pcManager;
  for (const [name, transport] of [["publisher", pcs.publisher], ["subscriber", pcs.subscriber]]) {
    const pc = transport.pc;
    const used = [...(await pc.getStats()).values()].find((s) => s.type === "transport");
    out[name] = {local: ufrag(pc.localDescription), remote: ufrag(pc.remoteDescription),
                 used: used?.iceLocalUsernameFragment, ice: pc.iceConnectionState};
  }
  return out;
}"""

# LiveKit's own test hook: the client closes its signaling socket and resumes (reconnect=1).
RESUME_JS = """async () => {
  const LK = window.LivekitClient;
  const room = window.room;
  const events = [];
  for (const e of [LK.RoomEvent.Reconnecting, LK.RoomEvent.SignalReconnecting,
                   LK.RoomEvent.Reconnected, LK.RoomEvent.Disconnected])
    room.on(e, () => events.push(e));
  const done = new Promise((resolve) => {
    room.once(LK.RoomEvent.Reconnected, resolve);
    room.once(LK.RoomEvent.Disconnected, resolve);
  });
  await room.simulateScenario("signal-reconnect");
  await done;
  return {events, state: room.state, sid: room.localParticipant.sid};
}"""


async def frames_from(page: Page, identity: str) -> int:
    got = await page.evaluate(RECEIVED_JS)
    return int(got.get(identity, {}).get("frames", 0))


async def test_resume_after_a_socket_loss_restarts_ice_in_the_same_session(
    browser: Browser, site: str, server: ServerProcess
) -> None:
    """The SDK's resume (reconnect=1): ReconnectResponse, not a new join; its publisher offers
    new ICE credentials, the server offers the subscriber new ones; media goes on both ways
    over the restarted connections."""
    alice, joined = await join(browser, site, server, "alice", "resume-room")
    bob, _ = await join(browser, site, server, "bob", "resume-room")
    await eventually(lambda: sees(alice, "bob"), 30, "alice decodes bob")
    await eventually(lambda: sees(bob, "alice"), 30, "bob decodes alice")
    before = await alice.evaluate(ICE_JS)
    resumed = await asyncio.wait_for(alice.evaluate(RESUME_JS), 60)
    # Resumed, not rejoined: LiveKit's full reconnect emits `reconnecting` and gets a new sid.
    assert resumed == {
        "events": ["signalReconnecting", "reconnected"],
        "state": "connected",
        "sid": joined["sid"],
    }

    async def restarted() -> bool:
        now = await alice.evaluate(ICE_JS)
        return all(
            now[pc]["local"] != before[pc]["local"]
            and now[pc]["remote"] != before[pc]["remote"]
            and now[pc]["used"] == now[pc]["local"]
            and now[pc]["ice"] in ("connected", "completed")
            for pc in ("publisher", "subscriber")
        )

    await eventually(restarted, 30, lambda: f"ICE restart of both PCs: {before}")
    marks = await frames_from(bob, "alice"), await frames_from(alice, "bob")
    await eventually(
        lambda: _more(bob, "alice", marks[0] + 30), 30, "bob decodes alice after the resume"
    )
    await eventually(
        lambda: _more(alice, "bob", marks[1] + 30), 30, "alice decodes bob after the resume"
    )
    log = server.log()
    joins = [
        line
        for line in log.splitlines()
        if '"join_accepted"' in line and '"alice"' in line and '"resume-room"' in line
    ]
    assert len(joins) == 1, joins
    for page in (alice, bob):
        await page.evaluate("() => window.room.disconnect()")
        await page.close()


async def _more(page: Page, identity: str, than: int) -> bool:
    return await frames_from(page, identity) > than


# The size of a picture the app gets from `identity`'s video track (its decoded frames, as the
# app sees them: a clone read by a MediaStreamTrackProcessor).
PICTURE_JS = """async (identity) => {
  const p = [...window.room.remoteParticipants.values()].find((p) => p.identity === identity);
  const track = [...p.videoTrackPublications.values()][0].track.mediaStreamTrack.clone();
  const reader = new MediaStreamTrackProcessor({track}).readable.getReader();
  const {value} = await reader.read();
  const size = [value.displayWidth, value.displayHeight];
  value.close();
  await reader.cancel();
  track.stop();
  return size;
}"""


async def test_e2ee_pages_with_a_shared_key_see_each_other_and_the_server_decodes_nothing(
    browser: Browser, site: str, server: ServerProcess, workdir: Path
) -> None:
    """LiveKit's frame cryptor (ExternalE2EEKeyProvider, one shared key) through keyroom: the
    key holders decode each other; a page with another key receives the packets and decodes
    nothing; what the server forwarded (its recording of the room) holds no decodable frame."""
    alice, joined = await join(browser, site, server, "alice", E2EE_ROOM, key="shared key")
    assert joined["e2ee"]
    bob, _ = await join(browser, site, server, "bob", E2EE_ROOM, key="shared key")
    await eventually(lambda: sees(alice, "bob"), 30, "alice decodes bob")
    await eventually(lambda: sees(bob, "alice"), 30, "bob decodes alice")
    for page, other in ((alice, "bob"), (bob, "alice")):
        width, height = await asyncio.wait_for(page.evaluate(PICTURE_JS, other), 30)
        assert width >= 160 and height >= 90  # a real picture, not a placeholder
    carol, _ = await join(
        browser, site, server, "carol", E2EE_ROOM, key="another key", publish=False
    )

    async def carol_gets_packets() -> bool:
        got = await carol.evaluate(RECEIVED_JS)
        return all(got.get(i, {}).get("packets", 0) > 100 for i in ("alice", "bob"))

    await eventually(carol_gets_packets, 30, "carol receives the packets")
    got = await carol.evaluate(RECEIVED_JS)
    assert got["alice"]["frames"] == 0 and got["bob"]["frames"] == 0, got
    token = recorder(server, E2EE_ROOM)
    status, body = await call(server, "GET", f"/api/rooms/{E2EE_ROOM}/recordings", token)
    (info,) = body["recordings"]
    path = f"/api/rooms/{E2EE_ROOM}/recordings/{info['id']}"
    assert (await call(server, "DELETE", path, token))[0] == 204
    recording = workdir / "data" / "recordings" / f"{info['id']}.krec"
    key = str(workdir / "private.pem")
    for identity in ("alice", "bob"):
        assert _decodable_ciphertext(recording, key, identity) == 0
    for page in (alice, bob, carol):
        await page.evaluate("() => window.room.disconnect()")
        await page.close()
