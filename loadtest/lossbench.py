"""keyroom on impaired networks, measured by real Chromium (issue 12): `-m loadtest.lossbench`.

One Chromium publisher (the conference page: camera 640x360 VP8 + microphone) and two Chromium
subscribers, each in its own namespace of `loadtest.impair` (the server in another), for each
condition: a clean warm-up, then the impairment, then a window of `seconds` in which the pages'
`getStats()` are read at the start and the end, and each subscriber's `framesDecoded` every
100 ms (the longest stretch without a new decoded frame is the longest freeze, measured to
~0.1 s). Several source trees can be measured in the same run (`--tree before=/work/main`), the
same topology and conditions one after the other; `--write FILE` puts the table between the
`lossbench` markers of FILE (docs/benchmarks.md).

Video is single-layer (this measures loss recovery alone), except in the conditions of
`SIMULCAST`: there the publisher captures 1280x720 at 20 fps and sends three simulcast layers
(RIDs q/h/f at 1/4, 1/2 and full resolution) to keyroom (a server whose rooms allow simulcast)
and to Janus alike, and each side picks every subscriber's layer as it does by itself (keyroom
from its bandwidth estimate; Janus VideoRoom 1.1.2 from the subscriber's `substream`/`temporal`,
here the top ones, with no automatic downgrade for bandwidth).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, Playwright, ViewportSize, async_playwright

from auth.tokens import mint_token
from loadtest import freezetimeline, janusbench, simulcastbench, spawn
from loadtest.chromium import BASE_FLAGS, CHROMIUM
from loadtest.impair import SERVER_ADDRESS, Impairment, Topology, topology

KEY_ID, SECRET = "bench", "impaired-network-benchmark-secret-0123456789"
CLIENTS = ("pub", "sub1", "sub2")
CHROMIUM_FLAGS = [
    *BASE_FLAGS,
    # Subscribers never call getUserMedia: without this their host candidates are mDNS names
    # no resolver in these namespaces answers.
    # The Janus page is served by Playwright's router, so Chromium does not know it comes from
    # the private address it names: without the last two, its WebSocket to Janus is blocked.
    "--disable-features=WebRtcHideLocalIpsWithMdns,LocalNetworkAccessChecks,"
    "BlockInsecurePrivateNetworkRequests",
]  # fmt: skip

# Condition name -> client -> (uplink, downlink) impairment.
Condition = dict[str, tuple[Impairment | None, Impairment | None]]
CONDITIONS: dict[str, Condition] = {
    "uplink 3% loss": {"pub": (Impairment(loss=0.03), None)},
    "sub1 downlink 3% loss": {"sub1": (None, Impairment(loss=0.03))},
    "100 ms + 1% loss both ways": {
        name: (Impairment(loss=0.01, delay=0.1), Impairment(loss=0.01, delay=0.1))
        for name in CLIENTS
    },
    # Issue 12's capped subscriber, side by side with Janus: sub2 unconstrained.
    "sub1 downlink 300 kbit/s": {"sub1": (None, Impairment(rate_kbit=300))},
}
# Conditions measured with a simulcast publisher (the rest: a single encoding).
SIMULCAST = frozenset({"sub1 downlink 300 kbit/s"})


def limits_for(condition: str) -> str:
    """The `[limits]` lines of keyroom's config for a condition."""
    return "simulcast = true" if condition in SIMULCAST else "simulcast = false"


SUB_JS = """async () => {
  const pc = window.keyroom?.subscriber;
  if (!pc) return null;  // the session ended
  const stats = await pc.getStats();
  let video = null, audioLost = 0;
  for (const s of stats.values()) {
    if (s.type === "inbound-rtp" && s.kind === "audio") audioLost += s.packetsLost ?? 0;
    if (s.type === "inbound-rtp" && s.kind === "video" && !video) {
      video = {frames: s.framesDecoded ?? 0, freezes: s.freezeCount ?? 0,
              freeze_s: s.totalFreezesDuration ?? 0, lost: s.packetsLost ?? 0,
              nacks: s.nackCount ?? 0, plis: s.pliCount ?? 0, width: s.frameWidth ?? 0,
              // For the freeze timeline (loadtest/freezetimeline.py).
              ssrc: s.ssrc, received: s.packetsReceived ?? 0, jb: s.jitterBufferDelay ?? 0,
              jb_count: s.jitterBufferEmittedCount ?? 0, jb_target: s.jitterBufferTargetDelay ?? 0,
              frames_received: s.framesReceived ?? 0, dropped: s.framesDropped ?? 0,
              keyframes: s.keyFramesDecoded ?? 0, rtx: s.retransmittedPacketsReceived ?? 0};
    }
  }
  if (video) video.audio_lost = audioLost;
  return video;
}"""
PUB_JS = """async () => {
  const pc = window.keyroom?.publisher;
  if (!pc) return null;
  const stats = await pc.getStats();
  // A simulcast camera has one outbound-rtp per layer (some paused by dynacast): frames of the
  // layer that sent most, NACKs and retransmissions of all.
  let found = null;
  for (const s of stats.values()) {
    if (s.type === "outbound-rtp" && s.kind === "video") {
      const frames = s.framesSent ?? 0;
      found = found ?? {frames: 0, nacks: 0, rtx: 0, plis: 0, limit: "", widths: []};
      if (s.frameWidth) found.widths.push(s.frameWidth);  // the layers being sent
      found.nacks += s.nackCount ?? 0;
      found.rtx += s.retransmittedPacketsSent ?? 0;
      found.plis += s.pliCount ?? 0;
      if (frames >= found.frames) {
        found.frames = frames;
        found.limit = s.qualityLimitationReason ?? "";
      }
    }
  }
  return found;
}"""


@dataclass
class Row:
    tree: str
    condition: str
    subscriber: str
    pub_fps: float
    fps: float
    freezes_per_min: float
    freeze_s: float
    longest_freeze_s: float  # the longest stretch without a new frame, as polled
    lost: int
    sub_nacks: int
    plis: int
    pub_nacks: int
    pub_rtx: int
    # Chromium's longest freeze: the totalFreezesDuration added with one freezeCount step
    # between two polls (two freezes in one poll: their sum). Unlike the polled gap, a poll
    # delayed on a loaded machine does not lengthen it.
    max_freeze_s: float = 0.0
    width: int = 0  # the decoded frame width at the end of the window
    min_width: int = 0  # the smallest one polled in the window (0: none decoded)
    audio_lost: int = 0
    pub_widths: tuple[int, ...] = ()  # the publisher's encodings' frame widths at the end

    def cells(self) -> list[str]:
        return [
            self.tree, self.condition, self.subscriber, f"{self.pub_fps:.1f}", f"{self.fps:.1f}",
            f"{self.freezes_per_min:.1f}", f"{self.freeze_s:.2f}", f"{self.max_freeze_s:.2f}",
            f"{self.longest_freeze_s:.2f}",
            str(self.lost), str(self.sub_nacks), str(self.plis), str(self.pub_nacks),
            str(self.pub_rtx), f"{self.width} ({self.min_width})", str(self.audio_lost),
            "/".join(map(str, self.pub_widths)),
        ]  # fmt: skip


HEADER = [
    "tree", "condition", "subscriber", "pub fps", "sub fps", "freezes/min", "freeze s",
    "longest freeze s", "longest gap s", "packetsLost", "sub nackCount", "sub pliCount",
    "pub nackCount", "pub retransmitted", "frame width (min)", "audio packetsLost",
    "pub widths",
]  # fmt: skip


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _wrapper(directory: str, topo: Topology, namespace: str) -> str:
    """An executable that starts Chromium inside `namespace` (Playwright talks over pipes)."""
    path = os.path.join(directory, f"chromium-{namespace}")
    prefix = " ".join(topo.command(namespace, []))
    Path(path).write_text(f'#!/bin/sh\nexec {prefix} {CHROMIUM} "$@"\n')
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return path


@dataclass
class Server:
    tree: str
    port: int
    process: Any
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://{SERVER_ADDRESS}:{self.port}"

    def token(self, identity: str, room: str) -> str:
        return mint_token(
            key_id=KEY_ID, secret=SECRET, identity=identity, room=room, ttl=3600,
            now=time.time(), name=identity, grants=None,
        )  # fmt: skip


@contextlib.contextmanager
def server(
    topo: Topology,
    tree: str,
    directory: str,
    port: int,
    limits: str = "simulcast = false",
    log: str | None = None,
) -> Iterator[Server]:
    """keyroom in the server namespace; `limits`: the `[limits]` lines of its config; `log`:
    where its output goes, with the repair trace on (loadtest/freezetimeline.py)."""
    entry = ["-m", "sfu"] if log is None else ["-c", freezetimeline.TRACED_SERVER]
    log = log or os.path.join(directory, f"server-{port}.log")
    config = os.path.join(directory, "keyroom.toml")
    # The clients' veth addresses are private (RFC 1918): refused by default outside --dev.
    # Single-layer video but in the conditions of SIMULCAST (`limits_for`), as on Janus's side.
    Path(config).write_text(
        f"[rtc]\nallow_private_candidates = true\n[limits]\n{limits}\n"
        '[metrics]\nbearer_token = "impaired-network-bench-metrics"\n'
    )
    command = topo.command("server", [
        sys.executable, *entry, "serve", "--insecure-plaintext", "--host", SERVER_ADDRESS,
        "--port", str(port), "--rtc-ip", SERVER_ADDRESS, "--config", config,
        "--key", f"{KEY_ID}={SECRET}",
    ])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": tree, "PYTHONUNBUFFERED": "1"}
    process = spawn.start(command, log, cwd=directory, env=env)
    try:
        url = f"http://{SERVER_ADDRESS}:{port}/healthz"
        topo.run_sync("server", spawn.wait_healthy, process, url, log, "server")
        yield Server(tree, port, process)
    finally:
        spawn.stop(process)


@contextlib.asynccontextmanager
async def browsers(
    playwright: Playwright,
    topo: Topology,
    directory: str,
    ports: list[int],
    clients: tuple[str, ...] | list[str] = CLIENTS,
) -> AsyncIterator[dict[str, Browser]]:
    # getUserMedia needs a secure context: the servers' plaintext origins count as one.
    origins = ",".join(f"http://{SERVER_ADDRESS}:{port}" for port in ports)
    flags = [*CHROMIUM_FLAGS, f"--unsafely-treat-insecure-origin-as-secure={origins}"]
    launched: dict[str, Browser] = {}
    try:
        for name in clients:
            launched[name] = await playwright.chromium.launch(
                executable_path=_wrapper(directory, topo, name), headless=True, args=flags
            )
        yield launched
    finally:
        for browser in launched.values():
            await browser.close()


# keyroom's page asks for the layer its tile needs (simulcast.js qualityForHeight): at this
# size (bench-simulcast's) a subscriber's tile is over 360 px high and takes the top layer, the
# one a Janus subscriber is given (issue 12: the unconstrained subscriber keeps it).
TOP_LAYER_VIEWPORT: ViewportSize = {"width": 1920, "height": 1080}


async def _open(browser: Browser, url: str, viewport: ViewportSize | None = None) -> Page:
    context = await browser.new_context(viewport=viewport or {"width": 1280, "height": 720})
    page = await context.new_page()
    await page.goto(url, timeout=30_000)
    return page


async def _wait(page: Page, expression: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {expression}")
        await asyncio.sleep(0.1)


async def _decoding(page: Page, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = await page.evaluate(SUB_JS)
        if got and got["frames"] > 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the subscriber decodes no video")
        await asyncio.sleep(0.1)


OpenPages = Callable[[dict[str, Browser], dict[str, Page]], Awaitable[None]]


def keyroom_pages(srv: Server, simulcast: bool = False) -> OpenPages:
    """keyroom's conference page: the publisher with camera and microphone, then subscribers.
    `simulcast`: the publisher's camera is bench-simulcast's (1280x720 at 20 fps, three layers
    in a simulcast room), the subscribers' tiles big enough for its top layer."""

    async def open_pages(launched: dict[str, Browser], pages: dict[str, Page]) -> None:
        room = f"room-{time.time():.3f}"
        url = f"{srv.url}/?token={srv.token('pub', room)}" + ("&publish=0" if simulcast else "")
        pages["pub"] = await _open(launched["pub"], url)
        await _wait(pages["pub"], "window.keyroom?.state === 'connected'", 20)
        if simulcast:
            await pages["pub"].evaluate(simulcastbench.PUBLISH_JS)
        for sub in ("sub1", "sub2"):
            token = srv.token(sub, room)
            url = f"{srv.url}/?token={token}&publish=0"
            pages[sub] = await _open(launched[sub], url, TOP_LAYER_VIEWPORT if simulcast else None)

    return open_pages


def janus_pages(origin: str, ws_url: str, simulcast: bool = False) -> OpenPages:
    """The Janus VideoRoom page of loadtest.janusbench, same roles; `simulcast`: the publisher
    sends three layers, each subscriber asks for the top one."""
    extra = "&simulcast=1" if simulcast else ""

    async def open_pages(launched: dict[str, Browser], pages: dict[str, Page]) -> None:
        query = f"role=pub&ws={ws_url}{extra}"
        pages["pub"] = await janusbench.open_page(launched["pub"], origin, query)
        await _wait(pages["pub"], "window.keyroom?.state === 'connected'", 20)
        feed = await pages["pub"].evaluate("window.feed")
        for sub in ("sub1", "sub2"):
            query = f"role=sub&feed={feed}&ws={ws_url}{extra}"
            pages[sub] = await janusbench.open_page(launched[sub], origin, query)

    return open_pages


async def measure(
    topo: Topology,
    launched: dict[str, Browser],
    label: str,
    open_pages: OpenPages,
    name: str,
    seconds: float,
    samples: list[dict[str, Any]] | None = None,
) -> list[Row]:
    """One condition on a fresh room: pages in, warm-up, impairment, window, pages out;
    every subscriber's stats every 100 ms appended to `samples` (the freeze timeline)."""
    condition = CONDITIONS[name]
    pages: dict[str, Page] = {}
    try:
        await open_pages(launched, pages)
        for sub in ("sub1", "sub2"):
            await _decoding(pages[sub], 30)
        await asyncio.sleep(3)  # warm-up: the encoder ramps up on the clean links
        for client, (up, down) in condition.items():
            topo.impair(client, up=up, down=down)
        await asyncio.sleep(2)
        return await _window(label, name, pages, seconds, samples)
    finally:
        for client in condition:
            topo.impair(client, up=Impairment(), down=Impairment())
        for page in pages.values():
            with contextlib.suppress(Exception):
                await page.evaluate("window.keyroom?.leave()")
            await page.context.close()


async def _window(
    tree: str,
    name: str,
    pages: dict[str, Page],
    seconds: float,
    samples: list[dict[str, Any]] | None = None,
) -> list[Row]:
    subs = ("sub1", "sub2")
    pub0 = await pages["pub"].evaluate(PUB_JS)
    start = {s: await pages[s].evaluate(SUB_JS) for s in subs}
    began = time.monotonic()
    last = {s: (began, start[s]["frames"]) for s in subs}
    longest = dict.fromkeys(subs, 0.0)
    previous, max_freeze = dict(start), dict.fromkeys(subs, 0.0)
    widths: dict[str, list[int]] = {s: [] for s in subs}
    while time.monotonic() - began < seconds:
        await asyncio.sleep(0.1)
        for s in subs:
            got = await pages[s].evaluate(SUB_JS)
            now = time.monotonic()
            if samples is not None and got is not None:
                sample = {"wall": time.time(), "tree": tree, "condition": name, "sub": s}
                samples.append({**sample, **got})
            longest[s] = max(longest[s], now - last[s][0])
            # None: the session ended (the page gave up): frozen from here on.
            if got is not None and got["frames"] != last[s][1]:
                last[s] = (now, got["frames"])
            if got is not None and got["freezes"] > previous[s]["freezes"]:
                added = got["freeze_s"] - previous[s]["freeze_s"]
                max_freeze[s] = max(max_freeze[s], added)
            previous[s] = got or previous[s]
            if got is not None and got["width"]:
                widths[s].append(got["width"])
    elapsed = time.monotonic() - began
    end = {s: await pages[s].evaluate(SUB_JS) or start[s] for s in subs}
    pub1 = await pages["pub"].evaluate(PUB_JS) or pub0
    return [
        summarize(
            Window(tree, name, s, elapsed, pub0, pub1, start[s], end[s]),
            longest[s],
            max_freeze[s],
            widths[s],
        )  # fmt: skip
        for s in subs
    ]


@dataclass(frozen=True)
class Window:
    """One subscriber's window: the publisher's (PUB_JS) and its own (SUB_JS) stats at the
    start and the end."""

    tree: str
    condition: str
    subscriber: str
    elapsed: float
    pub0: dict[str, Any]
    pub1: dict[str, Any]
    start: dict[str, Any]
    end: dict[str, Any]


def summarize(w: Window, longest: float, max_freeze: float, widths: list[int]) -> Row:
    """The table row of a window; `widths`: the frame widths polled in it."""
    a, b, elapsed = w.start, w.end, w.elapsed
    return Row(
        tree=w.tree,
        condition=w.condition,
        subscriber=w.subscriber,
        pub_fps=(w.pub1["frames"] - w.pub0["frames"]) / elapsed,
        fps=(b["frames"] - a["frames"]) / elapsed,
        freezes_per_min=(b["freezes"] - a["freezes"]) * 60 / elapsed,
        freeze_s=b["freeze_s"] - a["freeze_s"],
        longest_freeze_s=longest,
        lost=b["lost"] - a["lost"],
        sub_nacks=b["nacks"] - a["nacks"],
        plis=b["plis"] - a["plis"],
        pub_nacks=w.pub1["nacks"] - w.pub0["nacks"],
        pub_rtx=w.pub1["rtx"] - w.pub0["rtx"],
        max_freeze_s=max_freeze,
        width=b.get("width", 0),
        min_width=min(widths, default=0),
        audio_lost=b.get("audio_lost", 0) - a.get("audio_lost", 0),
        pub_widths=tuple(sorted(w.pub1.get("widths", []))),
    )


async def run(
    trees: dict[str, str],
    conditions: list[str],
    seconds: float,
    with_janus: bool = False,
    trace: str | None = None,
) -> list[Row]:
    """Every condition for each tree (in order), then for Janus if asked; with `trace` (a
    directory) the servers' repair trace and the subscribers' stats every 100 ms go there."""
    rows: list[Row] = []
    samples: list[dict[str, Any]] | None = None if trace is None else []
    ports = [spawn.free_port() + n for n in range(len(trees) + 1)]
    with tempfile.TemporaryDirectory() as directory, topology(CLIENTS) as topo:
        async with (
            async_playwright() as playwright,
            browsers(playwright, topo, directory, ports) as b,
        ):

            async def conditions_with(label: str, pages: dict[str, OpenPages]) -> None:
                """Each condition of `pages` (in order) with its pages."""
                for name, open_pages in pages.items():
                    rows.extend(await measure(topo, b, label, open_pages, name, seconds, samples))
                    if trace is not None and samples is not None:  # kept as the run goes
                        freezetimeline.write_samples(os.path.join(trace, "samples.jsonl"), samples)
                    print(table(rows[-2:]), end="", flush=True)

            for (label, tree), port in zip(trees.items(), ports, strict=False):
                # One server per room configuration (single-layer, simulcast), in order.
                for limits in dict.fromkeys(limits_for(name) for name in conditions):
                    group = [name for name in conditions if limits_for(name) == limits]
                    suffix = "" if limits == limits_for("") else freezetimeline.SIMULCAST_LOG
                    log = (
                        None
                        if trace is None
                        else os.path.join(trace, f"server-{label}{suffix}.log")
                    )
                    with server(topo, tree, directory, port, limits=limits, log=log) as srv:
                        await conditions_with(
                            label, {n: keyroom_pages(srv, n in SIMULCAST) for n in group}
                        )
            if with_janus:
                with janusbench.janus(topo, directory, ports[-1]) as ws_url:
                    origin = f"http://{SERVER_ADDRESS}:{ports[-1]}"
                    janus_by_condition = {
                        n: janus_pages(origin, ws_url, n in SIMULCAST) for n in conditions
                    }
                    await conditions_with("janus", janus_by_condition)
    return rows


def write_table(path: str, text: str, marker: str = "lossbench") -> None:
    """`text` between the `<!-- MARKER:start -->` and `<!-- MARKER:end -->` lines of `path`."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    document = Path(path).read_text()
    head, _, rest = document.partition(start)
    _, _, tail = rest.partition(end)
    Path(path).write_text(f"{head}{start}\n{text}{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        help="LABEL=PATH of a source tree (default: this one)",
    )
    parser.add_argument("--condition", action="append", choices=list(CONDITIONS))
    parser.add_argument("--janus", action="store_true", help="also Janus VideoRoom, same run")
    parser.add_argument("--write", help="put the table into this Markdown file")
    parser.add_argument(
        "--trace",
        metavar="DIR",
        help="keep the servers' repair trace and the subscribers' stats every 100 ms in DIR "
        "(then: python -m loadtest.freezetimeline DIR)",
    )
    args = parser.parse_args(argv)
    trees = dict(t.split("=", 1) for t in args.tree)
    if not trees and not args.janus:
        trees = {"this": os.getcwd()}
    if args.trace:
        os.makedirs(args.trace, exist_ok=True)
    conditions = args.condition or list(CONDITIONS)
    rows = asyncio.run(run(trees, conditions, args.seconds, args.janus, args.trace))
    text = table(rows)
    print(text)
    if args.write:
        write_table(
            args.write, f"{args.seconds:.0f} s windows, {time.strftime('%Y-%m-%d')}:\n\n{text}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
