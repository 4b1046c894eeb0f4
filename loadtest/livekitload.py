"""`keyroom loadtest --client livekit`: LiveKit's Python SDK (native libwebrtc) as the load
tester's client, a second, independent WebRTC stack for the benchmarks (docs/benchmarks.md).

Two measurements against one spawned server whose media address is on a veth pair (run as
root in a network namespace: `unshare --net`, see docs/benchmarks.md):

- join time: `joins` SDK participants connect one after the other; `connect()` returning is
  the join (signaling, both peer connections up), reported as p50/p95/max.
- forwarding cost: the same room shape twice, `publishers` video publishers and `subscribers`
  SDK subscribers, with the publishers LiveKit SDK clients in one run and keyroom's own Python
  clients in the other; per run, the server's forwarding time per input packet (its
  `keyroom_forward_seconds` histogram), its whole-process CPU per forwarded packet, and the
  marginal CPU per forwarded packet: the process's CPU with media flowing less its CPU over an
  idle window of the same room (everybody connected, nothing published yet), so the fixed costs
  of sessions (pings, timers, the speaker round) that dominate at these rates are taken out.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from auth.tokens import mint_token
from loadtest import spawn
from loadtest.clients import CONNECT_TIMEOUT, Latencies, Subscriber
from loadtest.histogram import ForwardHistogram
from loadtest.livekitnet import CLIENT_IP, start_server, veth_pair
from loadtest.livekitpeer import SdkPeer
from loadtest.procstat import cpu_seconds
from signaling.client import KeyroomClient, RemoteTrack

KEY_ID = "loadtest"
METRICS_TOKEN = "loadtest-metrics-token"


@dataclass(frozen=True)
class Options:
    joins: int = 20
    publishers: int = 2
    subscribers: int = 4
    duration: float = 20.0
    warmup: float = 5.0
    idle: float = 10.0
    lean_subscribers: int = 10
    width: int = 640
    height: int = 360
    fps: int = 30


@dataclass
class Server:
    port: int
    pid: int
    secret: str
    key_id: str = KEY_ID
    metrics_token: str = METRICS_TOKEN

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def token(self, identity: str, room: str) -> str:
        return mint_token(
            key_id=self.key_id, secret=self.secret, identity=identity, room=room, ttl=3600,
            now=time.time(), name=identity,
        )  # fmt: skip

    def scrape(self) -> tuple[ForwardHistogram | None, float, float]:
        """The forwarding histogram, packets forwarded so far, the process's CPU seconds."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/metrics",
            headers={"Authorization": f"Bearer {self.metrics_token}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read().decode()
        out = sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name in ("keyroom_rtp_packets_out", "keyroom_rtp_packets_out_total")
        )
        return ForwardHistogram.parse(text), out, cpu_seconds(self.pid)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def measure_joins(server: Server, joins: int) -> dict[str, Any]:
    peers, times = [], []
    try:
        for n in range(joins):
            peer = SdkPeer(f"joiner-{n}")
            peers.append(peer)
            started = time.perf_counter()
            await peer.connect(server.url, server.token(peer.identity, "joins"))
            times.append((time.perf_counter() - started) * 1000)
    finally:
        for peer in peers:
            await peer.close()
    return {
        "joins": len(times),
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(percentile(times, 0.95), 1),
        "max_ms": round(max(times), 1),
    }


Start = Callable[[], Awaitable[None]]


@contextlib.asynccontextmanager
async def keyroom_publishers(server: Server, room: str, options: Options) -> AsyncIterator[Start]:
    """keyroom's own Python clients, connected; the yielded call starts their synthetic VP8
    from the veth's client end."""
    from signaling.media import SyntheticVideoTrack

    clients = [
        KeyroomClient(f"{server.url}/rtc", server.token(f"kr-pub-{n}", room))
        for n in range(options.publishers)
    ]

    async def start() -> None:
        for client in clients:
            track = SyntheticVideoTrack(options.width, options.height, options.fps)
            await client.publish(track, source="camera")

    try:
        with aiortc_on_veth():
            for client in clients:
                await client.connect()
            yield start
    finally:
        for client in clients:
            await client.close()


@contextlib.contextmanager
def aiortc_on_veth() -> Iterator[None]:
    """aiortc gathers process-wide on the veth's client end while this runs, as before after."""
    import aioice.ice

    from sfu.iceaddr import restrict_host_addresses

    before = aioice.ice.get_host_addresses
    restrict_host_addresses([CLIENT_IP])
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = before


class CountingSubscriber(Subscriber):
    """The load tester's non-decoding subscriber, counting packets of any publisher (the
    SDK's carry no load-test trailer)."""

    def __init__(self, client: KeyroomClient) -> None:
        super().__init__(client, Latencies(), Counter())
        self.offered = asyncio.Event()

    def _on_track(self, remote: RemoteTrack) -> None:
        super()._on_track(remote)
        self.offered.set()

    async def start(self) -> None:
        await asyncio.wait_for(self.offered.wait(), CONNECT_TIMEOUT)
        await super().start()

    def _on_rtp(self, data: bytes) -> None:
        self.drops["received"] += 1


@contextlib.asynccontextmanager
async def lean_subscribers(
    server: Server, room: str, count: int
) -> AsyncIterator[list[CountingSubscriber]]:
    """keyroom's own Python clients subscribing to everything without decoding: forwarding
    dominates the server's CPU instead of the fixed costs of a few sessions."""
    clients = [
        KeyroomClient(f"{server.url}/rtc", server.token(f"lean-{n}", room)) for n in range(count)
    ]
    subscribers = [CountingSubscriber(client) for client in clients]
    try:
        with aiortc_on_veth():
            for client in clients:
                await client.connect()
            yield subscribers
    finally:
        for client in clients:
            await client.close()


@contextlib.asynccontextmanager
async def sdk_publishers(server: Server, room: str, options: Options) -> AsyncIterator[Start]:
    """LiveKit SDK participants, connected; the yielded call starts their video."""
    peers = [
        SdkPeer(f"lk-pub-{n}", width=options.width, height=options.height, fps=options.fps)
        for n in range(options.publishers)
    ]

    async def start() -> None:
        for peer in peers:
            await peer.publish(audio=False)

    try:
        for peer in peers:
            await peer.connect(server.url, server.token(peer.identity, room), auto_subscribe=False)
        yield start
    finally:
        for peer in peers:
            await peer.close()


async def measure_forwarding(
    server: Server, publisher_kind: str, options: Options
) -> dict[str, Any]:
    room = f"forward-{publisher_kind}"
    publishers = sdk_publishers if publisher_kind == "livekit" else keyroom_publishers
    subscribers = [SdkPeer(f"sub-{n}") for n in range(options.subscribers)]
    try:
        async with (
            publishers(server, room, options) as start,
            lean_subscribers(server, room, options.lean_subscribers) as lean,
        ):
            for peer in subscribers:
                await peer.connect(server.url, server.token(peer.identity, room))
            await asyncio.sleep(options.warmup)
            idle_before = server.scrape()
            await asyncio.sleep(options.idle)
            idle_cpu_per_second = (server.scrape()[2] - idle_before[2]) / options.idle
            await start()
            # Their peer connections come up once there is something to subscribe to.
            await asyncio.gather(*(sub.start() for sub in lean))
            await asyncio.sleep(options.warmup)
            before = server.scrape()
            frames_before = sum(sum(p.received.frames.values()) for p in subscribers)
            lean_before = sum(sub.drops["received"] for sub in lean)
            await asyncio.sleep(options.duration)
            after = server.scrape()
            frames = sum(sum(p.received.frames.values()) for p in subscribers) - frames_before
            lean_received = sum(sub.drops["received"] for sub in lean) - lean_before
    finally:
        for peer in subscribers:
            await peer.close()
    histogram = after[0].minus(before[0]) if after[0] and before[0] else None
    packets = after[1] - before[1]
    cpu = after[2] - before[2]
    marginal = cpu - idle_cpu_per_second * options.duration
    return {
        "publishers": f"{options.publishers} x {publisher_kind}",
        "subscribers": f"{options.subscribers} x livekit + {options.lean_subscribers} x keyroom",
        "packets_received_by_keyroom_subscribers": lean_received,
        "packets_forwarded": int(packets),
        "frames_decoded_by_subscribers": frames,
        "forward": histogram.summary() if histogram else None,
        "server_cpu_us_per_forwarded_packet": round(1e6 * cpu / packets, 1) if packets else None,
        "server_cpu_percent": round(100 * cpu / options.duration, 1),
        "idle_cpu_percent": round(100 * idle_cpu_per_second, 1),
        "marginal_cpu_us_per_forwarded_packet": round(1e6 * marginal / packets, 1)
        if packets
        else None,
    }


async def run(options: Options) -> dict[str, Any]:
    import secrets

    secret = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory() as workdir, veth_pair():
        process, port, _log = start_server(
            Path(workdir), f"{KEY_ID}={secret}", metrics_token=METRICS_TOKEN
        )
        server = Server(port, process.pid, secret)
        try:
            joins = await measure_joins(server, options.joins)
            forwarding = [
                await measure_forwarding(server, kind, options) for kind in ("livekit", "keyroom")
            ]
        finally:
            spawn.stop(process)
    return {"client": "livekit", "join": joins, "forwarding": forwarding}


def format_report(report: dict[str, Any]) -> str:
    join = report["join"]
    lines = [
        f"LiveKit Python SDK joins: {join['joins']}, connect() p50 {join['p50_ms']} ms,"
        f" p95 {join['p95_ms']} ms, max {join['max_ms']} ms",
    ]
    for row in report["forwarding"]:
        forward = row["forward"] or {}
        lines.append(
            f"{row['publishers']:>12} publishers -> {row['subscribers']}: "
            f"{row['packets_forwarded']} packets forwarded, forwarding p50 {forward.get('p50')}"
            f" p95 {forward.get('p95')} ms per input packet, server CPU"
            f" {row['server_cpu_us_per_forwarded_packet']} µs per forwarded packet"
            f" ({row['server_cpu_percent']} % of a core; idle room {row['idle_cpu_percent']} %),"
            f" marginal {row['marginal_cpu_us_per_forwarded_packet']} µs per forwarded packet,"
            f" {row['frames_decoded_by_subscribers']} frames decoded,"
            f" {row['packets_received_by_keyroom_subscribers']} packets counted by keyroom clients"
        )
    return "\n".join(lines)
