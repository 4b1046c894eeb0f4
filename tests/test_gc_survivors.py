"""Steady forwarding leaves nothing for the collector: after warm-up, forwarding thousands of
packets through a track and its down-tracks neither grows the tracked objects nor leaves new
tracked objects alive (what would be promoted to the old generation and make full collections
come back: a per-packet tuple in a ring, a list per NACK-history entry, a timer per packet).
Both the Python path and the compiled per-copy loop (sfu/fastpath/steady.py)."""

from __future__ import annotations

import gc
import socket
from collections.abc import Callable
from types import SimpleNamespace

from loadtest.bench_forward import _fake_dtls
from loadtest.bench_simulcast import CountingSink
from sfu.fastpath import loader
from sfu.fastpath.batch import FanoutBatch
from sfu.forwarder import SDES_MID, CodecInfo, DownTrack, PublishedTrack
from sfu.internals import RtpSink
from sfu.rtp import parse_rtp
from sfu.stats import Stats
from tests.test_forwarder import ABS_SEND_TIME, VP8_DELTA, VP8_KEY, publisher_packet
from tests.test_steady_fanout import sockets, srtp

SUBSCRIBERS = 4
WARM_UP = 1500  # past every ring (packet caches: 512; the compiled loop's input ring)
MEASURED = 4000
# Tracked objects a steady run of MEASURED packets may add or leave alive: a constant few
# (the compiled loop's periodic refresh: 88 here, whatever MEASURED is), never one per packet
# (a ring of per-packet containers leaves hundreds, a leak thousands).
BOUND = 200


def track_with(sinks: list[object]) -> PublishedTrack:
    track = PublishedTrack(
        sid="TR_v", cid="c", kind="video", source="camera", name="", publisher_sid="PA_p"
    )
    track.codec = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96)
    track.extensions = {3: SDES_MID, 5: ABS_SEND_TIME}
    for i, sink in enumerate(sinks):
        down = DownTrack(track, f"PA_{i}")
        down.configure(
            sink=sink,  # type: ignore[arg-type]
            out_ssrc=500 + i,
            mid=str(i),
            payload_types={96: 96},
            extensions={SDES_MID: 1, ABS_SEND_TIME: 2},
        )
        track.down_tracks.append(down)
    return track


def packets(first: int, count: int) -> list[bytes]:
    # 10-packet frames, each starting with a keyframe packet now and then.
    return [
        publisher_packet(
            (first + n) & 0xFFFF,
            (first + n) // 10 * 3000,
            VP8_KEY if n % 300 == 0 else VP8_DELTA,
        )
        for n in range(count)
    ]


def survivors(forward: Callable[[bytes], None]) -> tuple[int, int]:
    """(net tracked objects allocated, tracked objects created and still alive) while
    forwarding MEASURED packets after WARM_UP of them."""
    for data in packets(0, WARM_UP):
        forward(data)
    measured = packets(WARM_UP, MEASURED)  # made beforehand: bytes, not tracked
    gc.collect()
    before = gc.get_objects()
    known = {id(o) for o in before}
    gc.disable()
    try:
        count = gc.get_count()[0]
        for data in measured:
            forward(data)
        grown = gc.get_count()[0] - count
    finally:
        gc.enable()
    new = [o for o in gc.get_objects() if id(o) not in known and o is not before]
    # The census's own objects aside (the list `before`, the set, this frame's locals).
    alive = [o for o in new if o is not known and not isinstance(o, type(survivors.__code__))]
    return grown, len(alive)


def test_the_python_path_promotes_nothing_per_packet() -> None:
    sinks = [CountingSink() for _ in range(SUBSCRIBERS)]
    track = track_with(list(sinks))

    def forward(data: bytes) -> None:
        track.forward(data, parse_rtp(data))

    grown, alive = survivors(forward)
    assert all(s.packets >= WARM_UP + MEASURED - 20 for s in sinks)
    assert grown < BOUND, f"{grown} tracked objects more after {MEASURED} packets"
    assert alive < BOUND, f"{alive} tracked objects made while forwarding are still alive"


def test_the_compiled_loop_promotes_nothing_per_packet(
    sockets: tuple[list[socket.socket], socket.socket],
) -> None:
    module = loader.load()
    assert module is not None, loader.failure()
    receivers, sender = sockets[0][:SUBSCRIBERS], sockets[1]
    sender.setblocking(False)
    batch = FanoutBatch(module, sender.fileno(), Stats())
    sinks = []
    for i, receiver in enumerate(receivers):
        protocol = SimpleNamespace(transport=SimpleNamespace(sendto=None, batch=batch))
        sinks.append(RtpSink(_fake_dtls(srtp(i, True), protocol, receiver.getsockname())))
    track = track_with(list(sinks))

    def forward(data: bytes) -> None:
        # As the shared socket's reader does: the copies of a batch of inputs leave together.
        batch.depth += 1
        track.forward(data, parse_rtp(data))
        batch.depth -= 1
        batch.flush()

    grown, alive = survivors(forward)
    rewriters = [down.rewriter for down in track.down_tracks]
    assert sum(r.packets for r in rewriters if r is not None) >= SUBSCRIBERS * MEASURED
    assert grown < BOUND, f"{grown} tracked objects more after {MEASURED} packets"
    assert alive < BOUND, f"{alive} tracked objects made while forwarding are still alive"


__all__ = ["sockets"]  # the fixture, shared with tests/test_steady_fanout.py
