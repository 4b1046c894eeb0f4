"""Janus VideoRoom in the impaired-network topology, for `loadtest.lossbench --janus`.

Janus (Debian `janus`, configuration of `loadtest.janus.write_config`: VideoRoom, WebSockets,
NACK and retransmissions on by default) runs in the server namespace, gathering on the bridge and
listening for WebSockets on the bridge address. The pages are one small HTML page without
janus.js (served by Playwright's router on Janus's origin): a publisher joins room 4242 and
publishes camera and microphone, a subscriber joins with `streams: [{feed}]` and answers Janus's
offer; both send complete SDPs (`trickle: false`). Each page sets `window.keyroom = {publisher,
subscriber, state}` so lossbench reads the same `getStats()` as for keyroom's own page.

With `simulcast=1` in the query the publisher captures 1280x720 at 20 fps (as
`loadtest.simulcastbench` does for keyroom) and sends it as keyroom's page does in a simulcast
room: RIDs f/h/q at full, 1/2 and 1/4 resolution, highest first, so its publish request says
`rid_order: "hml"` (Janus 1.1.2's default, the janus.js order: the first RID is its top
substream); a subscriber asks for the top substream and temporal layer (`substream: 2,
temporal: 2`, also Janus's default). Janus VideoRoom keeps that layer whatever the subscriber's
bandwidth: it falls back to a lower one only when the publisher stops sending it (`fallback`,
250 ms without a packet).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator

from playwright.async_api import Browser, Page, Route

from loadtest.impair import SERVER_ADDRESS, Topology
from loadtest.janus import ROOM, write_config
from loadtest.spawn import stop, wait_ready

PAGE = """<!doctype html><meta charset="utf-8"><title>janus</title><script type="module">
const params = new URLSearchParams(location.search);
const ws = new WebSocket(params.get("ws"), "janus-protocol");
const waiting = new Map();
let n = 0;
function send(message) {
  const transaction = String(++n);
  ws.send(JSON.stringify({ ...message, transaction }));
  return new Promise((resolve) => waiting.set(transaction, resolve));
}
ws.onmessage = (event) => {
  const message = JSON.parse(event.data);
  if (message.janus === "ack" || !waiting.has(message.transaction)) return;
  waiting.get(message.transaction)(message);
  waiting.delete(message.transaction);
};
async function gathered(pc) {
  if (pc.iceGatheringState === "complete") return;
  await new Promise((resolve) => pc.addEventListener("icegatheringstatechange",
    () => pc.iceGatheringState === "complete" && resolve()));
}
const simulcast = Boolean(params.get("simulcast"));
// keyroom's layer order (simulcast.js), highest first: Janus's own default ("hml").
const jsep = (d) => ({ type: d.type, sdp: d.sdp, trickle: false,
  ...(simulcast && d.type === "offer" ? { rid_order: "hml" } : {}) });
await new Promise((resolve) => ws.addEventListener("open", resolve));
const session = (await send({ janus: "create" })).data.id;
setInterval(() => ws.send(JSON.stringify({ janus: "keepalive", session_id: session,
  transaction: "k" + (++n) })), 20000);
const handle_id = (await send({ janus: "attach", session_id: session,
  plugin: "janus.plugin.videoroom" })).data.id;
const message = (body, description) => send({ janus: "message", session_id: session, handle_id,
  body, ...(description ? { jsep: jsep(description) } : {}) });
const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
if (params.get("role") === "pub") {
  const joined = await message({ request: "join", ptype: "publisher", room: ROOM });
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: simulcast
    ? { width: 1280, height: 720, frameRate: 20 } : { width: 640, height: 360 } });
  for (const track of stream.getTracks()) {
    if (track.kind === "video" && simulcast) {
      pc.addTransceiver(track, { direction: "sendonly", streams: [stream], sendEncodings: [
        { rid: "f", scaleResolutionDownBy: 1 }, { rid: "h", scaleResolutionDownBy: 2 },
        { rid: "q", scaleResolutionDownBy: 4 }] });
    } else {
      pc.addTrack(track, stream);
    }
  }
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const reply = await message({ request: "publish", audio: true, video: true },
    pc.localDescription);
  await pc.setRemoteDescription(reply.jsep);
  window.feed = joined.plugindata.data.id;
  window.keyroom = { publisher: pc, subscriber: null, state: "connected" };
} else {
  const reply = await message({ request: "join", ptype: "subscriber", room: ROOM,
    streams: [{ feed: Number(params.get("feed")),
      ...(simulcast ? { substream: 2, temporal: 2 } : {}) }] });
  pc.ontrack = (event) => {
    const video = document.createElement(event.track.kind);
    video.autoplay = true; video.muted = true; video.srcObject = new MediaStream([event.track]);
    document.body.append(video);
  };
  await pc.setRemoteDescription(reply.jsep);
  await pc.setLocalDescription(await pc.createAnswer());
  await gathered(pc);
  await message({ request: "start" }, pc.localDescription);
  window.keyroom = { publisher: null, subscriber: pc, state: "connected" };
}
</script>""".replace("ROOM", str(ROOM))


@contextlib.contextmanager
def janus(topo: Topology, directory: str, port: int) -> Iterator[str]:
    """Janus in the server namespace, WebSockets on the bridge address; yields its ws:// URL."""
    executable = shutil.which("janus")
    if executable is None:
        raise RuntimeError("janus is not installed (Debian: apt-get install janus)")
    config_dir = os.path.join(directory, f"janus-{port}")
    os.makedirs(config_dir)
    config = write_config(config_dir, port=port, interface="krbr0")
    transport = os.path.join(config_dir, "janus.transport.websockets.jcfg")
    with open(transport) as f:
        text = f.read().replace('ws_ip = "127.0.0.1"', f'ws_ip = "{SERVER_ADDRESS}"')
    with open(transport, "w") as f:
        f.write(text)
    log = os.path.join(directory, f"janus-{port}.log")
    command = topo.command(
        "server", [executable, "-C", config, "-F", config_dir, "-o", "-L", log, "-N"]
    )
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:

        def probe() -> None:
            socket.create_connection((SERVER_ADDRESS, port), timeout=1).close()

        topo.run_sync("server", wait_ready, process, probe, log, "janus")
        yield f"ws://{SERVER_ADDRESS}:{port}"
    finally:
        stop(process)


async def open_page(browser: Browser, origin: str, query: str) -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 720})

    async def serve(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/html", body=PAGE)

    await context.route(f"{origin}/janus.html**", serve)
    page = await context.new_page()
    await page.goto(f"{origin}/janus.html?{query}", timeout=30_000)
    return page
