"""`keyroom bench-simulcast`: simulcast, congestion control and dynacast with real Chromium
through impaired links (loadtest.impair), before/after in the same run.

One Chromium publisher (a 1280x720 fake camera and microphone) and two Chromium subscribers,
each browser in its own namespace behind its own link. In each room, after a warm-up, the
"capped" subscriber's downlink is limited to 300 kbit/s (tbf) for a while, then the cap is
lifted; the "free" one is never impaired. Measured from the pages' getStats() sampled every
200 ms: how long until the capped page decodes the low layer, its longest stall afterwards,
its audio loss, the free page's frame width throughout, how long until the capped page is
back above the low layer once the cap is lifted; then both subscribers ask for the low layer
and the publisher's outbound bitrate is compared before and after (dynacast).

Rooms (`--modes`): the `simulcast` room limit off (a single encoding, the way keyroom forwarded
before simulcast); simulcast with the `transport_cc` room limit off (the estimate is the
browser's REMB, as before transport-wide congestion control); simulcast with transport-cc.
Needs root (namespaces), Debian's chromium and playwright; run it in a throw-away namespace:
`loadtest/in-netns .venv/bin/keyroom bench-simulcast`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from auth.tokens import mint_token
from loadtest import spawn
from loadtest.chromium import BASE_FLAGS, CHROMIUM
from loadtest.impair import SERVER_ADDRESS, Impairment, Topology, topology

KEY_ID = "bench"
SECRET = "bench-secret-that-is-long-enough-0123456789"
CHROMIUM_FLAGS = [
    *BASE_FLAGS,
    # getUserMedia needs a secure context: the bench's plaintext origin counts as one.
    f"--unsafely-treat-insecure-origin-as-secure=http://{SERVER_ADDRESS}",
]
CLIENTS = ("pub", "capped", "free")
CAP_KBIT = 300
SAMPLE_INTERVAL_MS = 200

PUBLISH_JS = """async () => {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: true, video: { width: 1280, height: 720, frameRate: 20 } });
  await window.keyroom.publish(stream.getAudioTracks()[0], { source: "microphone" });
  await window.keyroom.publish(stream.getVideoTracks()[0], { source: "camera" });
}"""

# Sampled in the page: its clock, the camera's decoded frames and width, the audio's counts.
SAMPLER_JS = """(interval) => {
  window.__samples = [];
  window.__sampler = setInterval(async () => {
    const stats = await window.keyroom.subscriber.getStats();
    let video = null, audio = null;
    for (const s of stats.values()) {
      if (s.type !== "inbound-rtp") continue;
      if (s.kind === "video") video = s; else audio = s;
    }
    window.__samples.push([performance.now() / 1000, video?.framesDecoded ?? 0,
      video?.frameWidth ?? 0, audio?.packetsReceived ?? 0, audio?.packetsLost ?? 0]);
  }, interval);
}"""

# The publisher's video encodings: rid -> [frame width, bytes sent].
ENCODINGS_JS = """async () => {
  const stats = await window.keyroom.publisher.getStats();
  const out = {};
  for (const s of stats.values()) {
    if (s.type === "outbound-rtp" && s.kind === "video") {
      out[s.rid ?? ""] = [s.frameWidth ?? 0, s.bytesSent ?? 0];
    }
  }
  return out;
}"""


@dataclass(frozen=True)
class Durations:
    warmup: float = 15.0  # seconds before the cap
    capped: float = 30.0
    recover: float = 20.0  # the longest wait for the capped page to come back up
    dynacast: float = 12.0  # with nobody on the high layer


@dataclass(frozen=True)
class Sample:
    t: float
    frames: int
    width: int
    audio_received: int
    audio_lost: int


@dataclass(frozen=True)
class Mode:
    """One room's limits: `simulcast` and `transport_cc` (off: REMB only)."""

    name: str
    simulcast: bool
    transport_cc: bool


SINGLE = Mode("single layer", simulcast=False, transport_cc=False)
REMB = Mode("simulcast, REMB", simulcast=True, transport_cc=False)
TRANSPORT_CC = Mode("simulcast, transport-cc", simulcast=True, transport_cc=True)
MODES = {"single": SINGLE, "remb": REMB, "twcc": TRANSPORT_CC}


@dataclass
class RoomResult:
    simulcast: bool
    mode: str = ""
    top_width: int = 0
    low_width: int = 0
    time_to_low: float | None = None
    max_stall_after_low: float | None = None
    capped_fps: float = 0.0
    audio_lost_capped: int = 0
    audio_received_capped: int = 0
    free_min_width: int = 0
    # The part of the cap window the free page decoded the top layer.
    free_top_share: float = 0.0
    free_fps: float = 0.0
    time_to_recover: float | None = None
    publisher_kbit_before: float = 0.0
    publisher_kbit_after: float = 0.0
    # Transport feedback messages the server used during the room (0: not negotiated).
    transport_feedback: int = 0
    notes: list[str] = field(default_factory=list)


def samples_of(raw: Sequence[Sequence[float]]) -> list[Sample]:
    return [Sample(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in raw]


def first_time(
    samples: Sequence[Sample], start: float, predicate: Callable[[Sample], bool]
) -> float | None:
    """Seconds from `start` to the first sample after it that satisfies `predicate`."""
    for sample in samples:
        if sample.t >= start and predicate(sample):
            return sample.t - start
    return None


def longest_stall(samples: Sequence[Sample], start: float, end: float) -> float:
    """The longest time between two samples that saw new frames, within [start, end]."""
    window = [s for s in samples if start <= s.t <= end]
    longest, last_new, frames = 0.0, start, None
    for sample in window:
        if frames is not None and sample.frames > frames:
            longest = max(longest, sample.t - last_new)
            last_new = sample.t
        frames = sample.frames
    if window:
        longest = max(longest, window[-1].t - last_new)
    return longest


def fps(samples: Sequence[Sample], start: float, end: float) -> float:
    window = [s for s in samples if start <= s.t <= end]
    if len(window) < 2 or window[-1].t <= window[0].t:
        return 0.0
    return (window[-1].frames - window[0].frames) / (window[-1].t - window[0].t)


def delta(samples: Sequence[Sample], start: float, end: float, name: str) -> int:
    window = [s for s in samples if start <= s.t <= end]
    return int(getattr(window[-1], name) - getattr(window[0], name)) if window else 0


class Bench:
    """The topology, the server in its namespace and one Chromium per client namespace."""

    def __init__(self, links: Topology, workdir: Path) -> None:
        self.links = links
        self.workdir = workdir
        self.port = spawn.free_port()
        self.url = f"http://{SERVER_ADDRESS}:{self.port}"
        self.server: Any = None
        self.browsers: dict[str, Any] = {}

    def start_server(self) -> None:
        log_path = self.workdir / "server.log"
        config = self.workdir / "keyroom.toml"
        # The clients' veth addresses are private (RFC 1918): refused by default outside --dev.
        # transport_cc on as the operator's ceiling, so each mode's room may choose it.
        # Kept samples come with the server's DEBUG trace (allocations, keyframe requests,
        # layer switches) to line them up with.
        level = "debug" if os.environ.get("KEYROOM_BENCH_SAMPLES") else "info"
        config.write_text(
            f'[server]\nlog_level = "{level}"\n'
            "[rtc]\nallow_private_candidates = true\n[limits]\ntransport_cc = true\n"
            '[metrics]\nbearer_token = "simulcast-bench-metrics-token"\n'
        )
        command = self.links.command(
            "server",
            [sys.executable, "-m", "sfu", "serve", "--insecure-plaintext",
             "--host", SERVER_ADDRESS, "--port", str(self.port), "--rtc-ip", SERVER_ADDRESS,
             "--key", f"{KEY_ID}={SECRET}", "--config", str(config)],
        )  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.server = spawn.start(command, log_path, cwd=self.workdir, env=env)
        self.links.run_sync(
            "pub", spawn.wait_healthy, self.server, self.url + "/healthz", log_path, "server"
        )

    async def launch(self, playwright: Any) -> None:
        for name in CLIENTS:
            wrapper = self.workdir / f"chromium-{name}"
            path = self.links.namespaces[name].path
            wrapper.write_text(f'#!/bin/sh\nexec nsenter --net={path} {CHROMIUM} "$@"\n')
            wrapper.chmod(0o755)
            flags = [*CHROMIUM_FLAGS[:-1], f"{CHROMIUM_FLAGS[-1]}:{self.port}"]
            self.browsers[name] = await playwright.chromium.launch(
                executable_path=str(wrapper), headless=True, args=flags
            )

    def token(self, identity: str, room: str, **grants: Any) -> str:
        return mint_token(
            key_id=KEY_ID, secret=SECRET, identity=identity, room=room, ttl=3600,
            now=time.time(), name=identity, grants=grants or None,
        )  # fmt: skip

    def create_room(self, room: str, mode: Mode) -> None:
        token = self.token("ops", room, roomCreate=True)
        limits = {"simulcast": mode.simulcast, "transport_cc": mode.transport_cc}
        body = json.dumps({"name": room, "limits": limits}).encode()

        def post() -> None:
            request = urllib.request.Request(
                self.url + "/api/rooms",
                data=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            urllib.request.urlopen(request, timeout=10).close()

        self.links.run_sync("pub", post)

    def transport_feedback(self) -> int:
        """The server's keyroom_rtcp_transport_feedback_total so far."""
        found: list[int] = []

        def scrape() -> None:
            request = urllib.request.Request(
                self.url + "/metrics",
                headers={"Authorization": "Bearer simulcast-bench-metrics-token"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith("keyroom_rtcp_transport_feedback_total "):
                        found.append(int(float(line.split()[1])))

        self.links.run_sync("pub", scrape)
        return found[0] if found else 0

    async def page(self, client: str, room: str) -> Any:
        context = await self.browsers[client].new_context(viewport={"width": 1920, "height": 1080})
        page = await context.new_page()
        await page.goto(f"{self.url}/?token={self.token(client, room)}&publish=0")
        await until(page, "window.keyroom?.state === 'connected'", 20)
        return page

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(10)
        dump = os.environ.get("KEYROOM_BENCH_SAMPLES")
        if dump:  # the server's log beside the samples
            Path(dump, "server.log").write_bytes((self.workdir / "server.log").read_bytes())


async def until(page: Any, expression: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {expression}")
        await asyncio.sleep(0.2)


async def page_time(page: Any) -> float:
    return float(await page.evaluate("performance.now() / 1000"))


async def outbound_kbit(page: Any, seconds: float) -> float:
    """The publisher page's video bitrate over the next `seconds`."""

    async def total() -> int:
        return sum(v[1] for v in (await page.evaluate(ENCODINGS_JS)).values())

    before = await total()
    await asyncio.sleep(seconds)
    return (await total() - before) * 8 / seconds / 1000


async def run_room(bench: Bench, room: str, mode: Mode, durations: Durations) -> RoomResult:
    simulcast = mode.simulcast
    result = RoomResult(simulcast=simulcast, mode=mode.name)
    bench.create_room(room, mode)
    feedback_before = bench.transport_feedback()
    publisher = await bench.page("pub", room)
    await publisher.evaluate(PUBLISH_JS)
    capped, free = await bench.page("capped", room), await bench.page("free", room)
    for page in (capped, free):
        await page.evaluate(SAMPLER_JS, SAMPLE_INTERVAL_MS)
    await asyncio.sleep(durations.warmup)
    encodings = await publisher.evaluate(ENCODINGS_JS)
    widths = sorted(w for w, sent in encodings.values() if w and sent)
    result.top_width, result.low_width = (widths[-1], widths[0]) if widths else (0, 0)
    bench.links.impair("capped", down=Impairment(rate_kbit=CAP_KBIT))
    cap_wall = time.time()
    cap_at = {"capped": await page_time(capped), "free": await page_time(free)}
    await asyncio.sleep(durations.capped)
    bench.links.impair("capped", down=Impairment())
    lift_at = {"capped": await page_time(capped), "free": await page_time(free)}
    await asyncio.sleep(durations.recover)
    capped_samples = samples_of(await capped.evaluate("window.__samples"))
    free_samples = samples_of(await free.evaluate("window.__samples"))
    dump = os.environ.get("KEYROOM_BENCH_SAMPLES")
    if dump:  # for a closer look: every sample, and the cap's start and end in page time
        Path(dump, f"{room}.json").write_text(
            json.dumps(
                {
                    "cap": cap_at,
                    "cap_wall": cap_wall,
                    "lift": lift_at,
                    "capped": capped_samples,
                    "free": free_samples,
                },
                default=asdict,
            )
        )
    start, end = cap_at["capped"], lift_at["capped"]
    low = result.low_width if simulcast else 0
    result.time_to_low = first_time(capped_samples, start, lambda s: 0 < s.width <= low)
    if result.time_to_low is not None:
        result.max_stall_after_low = longest_stall(capped_samples, start + result.time_to_low, end)
    result.capped_fps = fps(capped_samples, start + durations.capped / 2, end)
    result.audio_lost_capped = delta(capped_samples, start, end, "audio_lost")
    result.audio_received_capped = delta(capped_samples, start, end, "audio_received")
    free_window = [s for s in free_samples if cap_at["free"] <= s.t <= lift_at["free"]]
    result.free_min_width = min((s.width for s in free_window), default=0)
    result.free_top_share = sum(s.width >= result.top_width for s in free_window) / max(
        len(free_window), 1
    )
    result.free_fps = fps(free_samples, cap_at["free"], lift_at["free"])
    if simulcast:
        result.time_to_recover = first_time(capped_samples, end, lambda s: s.width > low)
        result.publisher_kbit_before = await outbound_kbit(publisher, 3.0)
        for page in (capped, free):
            sid = await page.evaluate(
                "[...window.keyroom.remoteTracks.values()].find(r => r.kind === 'video').trackSid"
            )
            await page.evaluate("window.keyroom.setQuality = () => Promise.resolve()")
            await page.evaluate(
                "(sid) => window.keyroom.request({type: 'set_quality', track_sid: sid, "
                "quality: 'low'})",
                sid,
            )
        await asyncio.sleep(durations.dynacast)
        result.publisher_kbit_after = await outbound_kbit(publisher, 3.0)
    result.transport_feedback = bench.transport_feedback() - feedback_before
    for page in (publisher, capped, free):
        await page.evaluate("window.keyroom?.leave()")
        await page.context.close()
    return result


async def run(
    durations: Durations, workdir: Path, modes: Sequence[Mode] = (SINGLE, REMB, TRANSPORT_CC)
) -> list[RoomResult]:
    """One room per mode, in that order."""
    from playwright.async_api import async_playwright

    with topology(list(CLIENTS)) as links:
        bench = Bench(links, workdir)
        bench.start_server()
        try:
            async with async_playwright() as playwright:
                await bench.launch(playwright)
                results = []
                for n, mode in enumerate(modes):
                    results.append(await run_room(bench, f"bench-{n}", mode, durations))
                return results
        finally:
            bench.stop()


def markdown(results: Sequence[RoomResult], durations: Durations) -> str:
    rows: list[tuple[str, Callable[[RoomResult], str]]] = [
        ("top / low layer width", lambda r: f"{r.top_width} / {r.low_width}"),
        ("capped: time to the low layer (s)", lambda r: _num(r.time_to_low)),
        ("capped: longest stall after it (s)", lambda r: _num(r.max_stall_after_low)),
        ("capped: fps, 2nd half of the cap", lambda r: f"{r.capped_fps:.1f}"),
        (
            "capped: audio lost / received",
            lambda r: f"{r.audio_lost_capped} / {r.audio_received_capped}",
        ),
        (
            "free: min frame width, time on the top layer, fps",
            lambda r: f"{r.free_min_width}, {r.free_top_share:.0%}, {r.free_fps:.1f}",
        ),
        ("capped: back above low after the lift (s)", lambda r: _num(r.time_to_recover)),
        ("transport feedback messages used", lambda r: str(r.transport_feedback)),
        (
            "publisher kbit/s, before / after nobody on high",
            lambda r: (
                f"{r.publisher_kbit_before:.0f} / {r.publisher_kbit_after:.0f}"
                if r.simulcast
                else "-"
            ),
        ),
    ]
    lines = [
        f"Durations: warm-up {durations.warmup:.0f} s, cap {durations.capped:.0f} s "
        f"({CAP_KBIT} kbit/s tbf on the capped page's downlink), recovery window "
        f"{durations.recover:.0f} s, dynacast {durations.dynacast:.0f} s.",
        "",
        "| | " + " | ".join(r.mode for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "bench-simulcast",
        help="simulcast and congestion control with Chromium through a capped link",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--warmup", type=float, default=Durations.warmup)
    p.add_argument("--capped", type=float, default=Durations.capped)
    p.add_argument("--recover", type=float, default=Durations.recover)
    p.add_argument("--dynacast", type=float, default=Durations.dynacast)
    p.add_argument(
        "--modes",
        default="single,remb,twcc",
        help="rooms, in order: single (one encoding), remb (simulcast, the room limit "
        "transport_cc off), twcc (simulcast, transport-wide congestion control)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    durations = Durations(args.warmup, args.capped, args.recover, args.dynacast)
    with tempfile.TemporaryDirectory(prefix="keyroom-bench-simulcast-") as workdir:
        modes = [MODES[name.strip()] for name in args.modes.split(",")]
        results = asyncio.run(run(durations, Path(workdir), modes))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(markdown(results, durations))
    return 0
