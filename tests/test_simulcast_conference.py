"""Simulcast end to end through a real `keyroom serve`: a publisher sends three layers (RID
extension, pre-encoded clips), two subscribers pick different layers with set_quality, each
sees one continuous stream, and dynacast stops the layers nobody receives."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import pytest

from loadtest.clients import TRAILER, Latencies, Subscriber
from loadtest.simulcastpub import SimulcastPublisher, encode_simulcast_clips, layer_of
from sfu.dynacast import IDLE_DELAY
from sfu.rtp import parse_rtp
from signaling.client import KeyroomClient
from tests.conftest import ServerProcess, eventually


@dataclass
class Received:
    # (ssrc, sequence, timestamp, layer) of each packet, in arrival order.
    packets: list[tuple[int, int, int, int]] = field(default_factory=list)

    def layers_since(self, start: int) -> Counter[int]:
        return Counter(p[3] for p in self.packets[start:])


class LayerSubscriber(Subscriber):
    def __init__(self, client: KeyroomClient) -> None:
        super().__init__(client, Latencies(), Counter())
        self.received = Received()

    def _on_rtp(self, data: bytes) -> None:
        info = parse_rtp(data)
        flags = TRAILER.unpack_from(data, len(data) - TRAILER.size)[1]
        self.received.packets.append((info.ssrc, info.sequence, info.timestamp, layer_of(flags)))


def assert_one_continuous_stream(received: Received) -> None:
    packets = received.packets
    assert len({p[0] for p in packets}) == 1, "one SSRC whatever the layer"
    gaps = sum((b[1] - a[1]) & 0xFFFF != 1 for a, b in zip(packets, packets[1:], strict=False))
    # Loopback: reordering or loss is rare; a layer switch must add no gap of its own.
    assert gaps <= len(packets) // 100, f"{gaps} sequence gaps in {len(packets)} packets"
    backwards = sum(
        (b[2] - a[2]) & 0xFFFFFFFF >= 0x80000000 for a, b in zip(packets, packets[1:], strict=False)
    )
    assert backwards <= len(packets) // 100


async def sending_rate(publisher: SimulcastPublisher) -> float:
    """The publisher's outbound bit/s over the next second."""
    loop = asyncio.get_running_loop()
    start, sent = loop.time(), sum(publisher.bytes_sent)
    await eventually(lambda: loop.time() - start >= 1.0)
    return (sum(publisher.bytes_sent) - sent) * 8 / (loop.time() - start)


@pytest.mark.timeout(90)
async def test_two_subscribers_get_their_layers_and_unwatched_layers_stop(
    server: ServerProcess,
) -> None:
    clips = encode_simulcast_clips(seconds=1.0)
    publisher_client = KeyroomClient(server.ws_url, server.token("pub"))
    clients = [KeyroomClient(server.ws_url, server.token(n)) for n in ("low", "high")]
    loop = asyncio.get_running_loop()
    try:
        await publisher_client.connect()
        publisher = SimulcastPublisher(publisher_client, clips, 1, Counter())
        await publisher.start()
        sending = asyncio.create_task(publisher.run(loop.time() + 60))
        subscribers = [LayerSubscriber(c) for c in clients]
        for client in clients:
            await client.connect()
        await asyncio.gather(*(s.start() for s in subscribers))
        low, high = subscribers
        await clients[0].request(
            {"type": "set_quality", "track_sid": publisher.track_sid, "quality": "low"}
        )

        def on_layers() -> bool:
            return (
                len(low.received.packets) > 30
                and low.received.packets[-1][3] == 0
                and len(high.received.packets) > 30
                and high.received.packets[-1][3] == 2
            )

        await eventually(on_layers, timeout=10, what="each subscriber on its layer")
        marks = [len(s.received.packets) for s in subscribers]
        # 60 more packets each, counted from its own mark: the low layer carries a fifth of the
        # high one's packets (~25 a second here), so counting it from the high subscriber's
        # larger mark needed ~5 s of it, the whole timeout (the CI flake).
        await eventually(
            lambda: all(
                len(s.received.packets) > m + 60 for s, m in zip(subscribers, marks, strict=True)
            ),
            timeout=10,
            what=lambda: (
                f"60 packets each: {marks} -> {[len(s.received.packets) for s in subscribers]}"
            ),
        )
        assert set(low.received.layers_since(marks[0])) == {0}
        assert set(high.received.layers_since(marks[1])) == {2}

        # Nobody receives "h": the publisher is told to stop it, after IDLE_DELAY.
        await eventually(lambda: publisher.active == [True, False, True], timeout=IDLE_DELAY + 5)
        before = await sending_rate(publisher)
        # The high subscriber goes low: it switches at a keyframe, "f" is stopped in turn and
        # the publisher's outbound bitrate falls.
        mark = len(high.received.packets)
        await clients[1].request(
            {"type": "set_quality", "track_sid": publisher.track_sid, "quality": "low"}
        )
        await eventually(
            lambda: high.received.packets[-1][3] == 0 and len(high.received.packets) > mark,
            timeout=5,
        )
        await eventually(lambda: publisher.active == [True, False, False], timeout=IDLE_DELAY + 5)
        after = await sending_rate(publisher)
        assert after < before / 2, (before, after)
        # Back to high: "f" is switched on again and the subscriber gets it.
        await clients[1].request(
            {"type": "set_quality", "track_sid": publisher.track_sid, "quality": "high"}
        )
        await eventually(lambda: publisher.active[2], timeout=5)
        await eventually(lambda: high.received.packets[-1][3] == 2, timeout=5)
        for subscriber in subscribers:
            assert_one_continuous_stream(subscriber.received)
        sending.cancel()
    finally:
        for client in [publisher_client, *clients]:
            await client.close()
