"""A bystander call: what an innocent room sees while another room is abused.

One publisher and one subscriber in a room of their own. A measured window gives the packets the
subscriber received per second (its inbound RTP stats), the round trip of signaling pings sent
every `ping_interval`, and the server's largest RSS over the window (from /proc).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection
from aiortc.stats import RTCInboundRtpStreamStats

from loadtest.procstat import rss_bytes
from signaling.client import FrameCounter, KeyroomClient
from signaling.media import SyntheticVideoTrack

PING_INTERVAL = 0.05


@dataclass
class Window:
    seconds: float
    packets: int
    pings_ms: list[float] = field(default_factory=list)
    rss_mib_max: float = 0.0

    @property
    def packets_per_second(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else 0.0

    def ping_ms(self, quantile: float) -> float:
        """The ping round trip at `quantile` (0.95: p95), in ms; inf without pings."""
        if not self.pings_ms:
            return float("inf")
        ordered = sorted(self.pings_ms)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    def __str__(self) -> str:
        return (
            f"{self.packets_per_second:.1f} packets/s, ping p50 {self.ping_ms(0.5):.1f} ms"
            f" p95 {self.ping_ms(0.95):.1f} ms ({len(self.pings_ms)} pings),"
            f" server RSS max {self.rss_mib_max:.1f} MiB"
        )


class Bystander:
    """`token(identity)` mints a token for the bystander's room; `pid` is the server's."""

    def __init__(self, url: str, token: Callable[[str], str], pid: int) -> None:
        self.publisher = KeyroomClient(url, token("bystander-pub"))
        self.subscriber = KeyroomClient(url, token("bystander-sub"))
        self.pid = pid
        self._counter: FrameCounter | None = None

    async def start(self, timeout: float = 15) -> None:
        await self.publisher.connect(timeout)
        await self.subscriber.connect(timeout)
        await self.publisher.publish(SyntheticVideoTrack(), source="camera")
        remote = await self.subscriber.next_track(timeout)
        # Drained all along: aiortc queues decoded frames without bound otherwise.
        self._counter = FrameCounter(remote.track)
        await self._counter.wait_for(1, timeout)

    async def measure(self, seconds: float, ping_interval: float = PING_INTERVAL) -> Window:
        """Ping every `ping_interval` for `seconds`; count the packets received meanwhile."""
        loop = asyncio.get_running_loop()
        pc = self.subscriber.subscriber_pc
        assert pc is not None
        start, packets_before = loop.time(), await _packets_received(pc)
        window = Window(seconds, 0)
        while loop.time() < start + seconds:
            window.pings_ms.append(1000 * await self.subscriber.ping())
            window.rss_mib_max = max(window.rss_mib_max, rss_bytes(self.pid) / 2**20)
            await asyncio.sleep(ping_interval)
        window.seconds = loop.time() - start
        window.packets = await _packets_received(pc) - packets_before
        return window

    async def stop(self) -> None:
        if self._counter is not None:
            await self._counter.stop()
        await asyncio.gather(self.publisher.leave(), self.subscriber.leave())


async def _packets_received(pc: RTCPeerConnection) -> int:
    report = await pc.getStats()
    return sum(
        s.packetsReceived for s in report.values() if isinstance(s, RTCInboundRtpStreamStats)
    )
