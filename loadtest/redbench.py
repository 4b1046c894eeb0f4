"""RED for audio on a lossy uplink, heard by real Chromium: `python -m loadtest.redbench`.

One Chromium publisher (the conference page, microphone only: Chromium offers `red/48000/2`
and keyroom's answer lists it first, so the page sends RED) and two Chromium subscribers of
the same stream, each in its own namespace of `loadtest.impair`: `red` negotiates RED and gets
the publisher's packets with their redundancy; `plain` answers without RED (its page strips it
from the answer, as a client without RED would) and gets the primary Opus blocks only, as the
Python client does. After a clean warm-up the publisher's uplink loses packets at random (keyroom
does not NACK audio): both subscribers miss the same packets, and what each hears is read from
its `getStats()` inbound-rtp audio over a window: samples received, samples concealed (played
as guessed audio; the silent ones left out), packets lost. `--loss`/`--seconds`; the table
goes between the `redbench` markers of `--write FILE` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from playwright.async_api import Page, async_playwright

from auth.tokens import mint_token
from loadtest import lossbench, spawn
from loadtest.impair import Impairment, topology

CLIENTS = ("pub", "red", "plain")
SUBSCRIBERS = ("red", "plain")

# Installed in the `plain` page before its scripts: its answers carry no RED.
NO_RED_JS = """(() => {
  const strip = (sdp) => {
    const red = new Set([...sdp.matchAll(/a=rtpmap:(\\d+) red\\/48000/gi)].map((m) => m[1]));
    return sdp.split("\\r\\n").filter((line) => {
      const pt = line.match(/^a=(?:rtpmap|fmtp|rtcp-fb):(\\d+) /);
      return !(pt && red.has(pt[1]));
    }).map((line) => line.startsWith("m=audio")
      ? line.split(" ").filter((f, i) => i < 3 || !red.has(f)).join(" ") : line).join("\\r\\n");
  };
  const createAnswer = RTCPeerConnection.prototype.createAnswer;
  const setLocalDescription = RTCPeerConnection.prototype.setLocalDescription;
  RTCPeerConnection.prototype.setLocalDescription = async function (description) {
    if (!description && this.signalingState === "have-remote-offer") {
      const answer = await createAnswer.call(this);
      description = { type: "answer", sdp: strip(answer.sdp) };
    }
    return setLocalDescription.call(this, description);
  };
})();"""

AUDIO_JS = """async () => {
  const pc = window.keyroom?.subscriber;
  if (!pc) return null;
  const stats = await pc.getStats();
  for (const s of stats.values()) {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      return {samples: s.totalSamplesReceived ?? 0, concealed: s.concealedSamples ?? 0,
              silent: s.silentConcealedSamples ?? 0, events: s.concealmentEvents ?? 0,
              lost: s.packetsLost ?? 0, packets: s.packetsReceived ?? 0};
    }
  }
  return null;
}"""
SENT_JS = """async () => {
  const stats = await window.keyroom.publisher.getStats();
  for (const s of stats.values()) {
    if (s.type === "outbound-rtp" && s.kind === "audio") {
      return {packets: s.packetsSent ?? 0, bytes: s.bytesSent ?? 0};
    }
  }
  return null;
}"""


@dataclass
class Heard:
    """One subscriber's audio over the window."""

    samples: int
    concealed: int  # not counting silent concealment
    events: int
    lost: int
    packets: int
    pub_kbit: float

    @property
    def concealed_ratio(self) -> float:
        return self.concealed / self.samples if self.samples else 1.0


HEADER = [
    "subscriber", "uplink loss", "pub kbit/s", "packets", "packetsLost", "samples",
    "concealed (not silent)", "concealed %", "concealment events",
]  # fmt: skip


def table(result: dict[str, Heard], loss: float = 0.0) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for name, h in result.items():
        cells = [
            name, f"{loss:.0%}", f"{h.pub_kbit:.0f}", str(h.packets), str(h.lost),
            str(h.samples), str(h.concealed), f"{100 * h.concealed_ratio:.2f}", str(h.events),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _token(identity: str, room: str, grants: dict[str, Any] | None = None) -> str:
    return mint_token(
        key_id=lossbench.KEY_ID, secret=lossbench.SECRET, identity=identity, room=room,
        ttl=3600, now=time.time(), name=identity, grants=grants,
    )  # fmt: skip


async def _audio(page: Page, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = await page.evaluate(AUDIO_JS)
        if got and got["samples"] > 0:
            return dict(got)
        if time.monotonic() > deadline:
            raise TimeoutError("the subscriber receives no audio")
        await asyncio.sleep(0.2)


async def run(tree: str, loss: float, seconds: float) -> dict[str, Heard]:
    """One publisher, a RED and a plain subscriber; `loss` on the publisher's uplink."""
    port = spawn.free_port()
    room = f"red-{time.time():.3f}"
    with tempfile.TemporaryDirectory() as directory, topology(CLIENTS) as topo:
        async with (
            async_playwright() as playwright,
            lossbench.browsers(playwright, topo, directory, [port], CLIENTS) as launched,
        ):
            with lossbench.server(topo, tree, directory, port, "audio_red = true") as srv:
                url = f"{srv.url}/?token="
                mic = {"canPublishSources": ["microphone"]}
                pages: dict[str, Page] = {}
                try:
                    pages["pub"] = await lossbench._open(
                        launched["pub"], url + _token("pub", room, mic)
                    )
                    await lossbench._wait(pages["pub"], "window.keyroom?.state === 'connected'", 20)
                    for name in SUBSCRIBERS:
                        context = await launched[name].new_context()
                        if name == "plain":
                            await context.add_init_script(NO_RED_JS)
                        pages[name] = page = await context.new_page()
                        await page.goto(url + _token(name, room) + "&publish=0", timeout=30_000)
                    for name in SUBSCRIBERS:
                        await _audio(pages[name], 30)
                    await asyncio.sleep(2)  # warm-up on the clean link
                    topo.impair("pub", up=Impairment(loss=loss))
                    await asyncio.sleep(1)
                    return await _window(pages, seconds)
                finally:
                    topo.impair("pub", up=Impairment())
                    for page in pages.values():
                        with contextlib.suppress(Exception):
                            await page.evaluate("window.keyroom?.leave()")
                        await page.context.close()


async def _window(pages: dict[str, Page], seconds: float) -> dict[str, Heard]:
    pub0 = await pages["pub"].evaluate(SENT_JS)
    start = {name: await _audio(pages[name], 5) for name in SUBSCRIBERS}
    began = time.monotonic()
    await asyncio.sleep(seconds)
    end = {name: await _audio(pages[name], 5) for name in SUBSCRIBERS}
    pub1 = await pages["pub"].evaluate(SENT_JS)
    elapsed = time.monotonic() - began
    kbit = (pub1["bytes"] - pub0["bytes"]) * 8 / 1000 / elapsed
    result = {}
    for name in SUBSCRIBERS:
        a, b = start[name], end[name]
        result[name] = Heard(
            samples=b["samples"] - a["samples"],
            concealed=(b["concealed"] - b["silent"]) - (a["concealed"] - a["silent"]),
            events=b["events"] - a["events"],
            lost=b["lost"] - a["lost"],
            packets=b["packets"] - a["packets"],
            pub_kbit=kbit,
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--loss", type=float, action="append", help="uplink loss, 0..1")
    parser.add_argument("--tree", default=os.getcwd(), help="the source tree to serve")
    parser.add_argument("--write", help="put the table into this Markdown file")
    args = parser.parse_args(argv)
    text = ""
    for loss in args.loss or [0.05, 0.15]:
        result = asyncio.run(run(args.tree, loss, args.seconds))
        text += table(result, loss) if not text else table(result, loss).split("\n", 2)[2]
        print(table(result, loss), flush=True)
    if args.write:
        when = f"{args.seconds:.0f} s windows, {time.strftime('%Y-%m-%d')}:\n\n"
        lossbench.write_table(args.write, when + text, "redbench")
    return 0


if __name__ == "__main__":
    sys.exit(main())
