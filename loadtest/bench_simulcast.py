"""`keyroom bench --simulcast`: the forwarding core's CPU per output packet with a three-layer
simulcast track against a single-layer track, same fan-out, same process, rounds alternating.

Both go through the publisher's ingress (SSRC lookup) and real down-tracks (RTP rewriting, the
packet cache) into counting sinks, so only keyroom's own work is timed. The simulcast track's
subscribers are spread over its three layers and have all switched layer once (a switch leaves
the VP8 PictureID renumbering on for good: the slower path); each input packet of a layer goes
to that layer's subscribers only.
"""

from __future__ import annotations

import statistics
import struct
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from sfu.forwarder import SDES_MID, CodecInfo, DownTrack, PublishedTrack
from sfu.ingress import Ingress
from sfu.sdpinfo import SimulcastOffer
from sfu.stats import Stats

MID_ID, RID_ID = 1, 10
RIDS = ("q", "h", "f")
VP8 = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96)


class CountingSink:
    def __init__(self) -> None:
        self.packets = 0

    def send(self, data: bytes) -> bool:
        self.packets += 1
        return True


def _packet(ssrc: int, seq: int, picture: int, key: bool, size: int, rid: str = "") -> bytes:
    elements = bytes([MID_ID << 4]) + b"0"
    if rid:
        elements += bytes([RID_ID << 4 | len(rid) - 1]) + rid.encode()
    elements += b"\0" * (-len(elements) % 4)
    header = struct.pack("!BBHII", 0x90, 96, seq & 0xFFFF, (seq // 4) * 3000, ssrc)
    header += struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements
    descriptor = bytes([0x90, 0xC0, 0x80 | (picture >> 8) & 0x7F, picture & 0xFF, picture & 0xFF])
    descriptor += bytes([0x00 if key else 0x01])
    return header + descriptor + bytes(max(0, size - len(header) - len(descriptor)))


def _track() -> PublishedTrack:
    return PublishedTrack(
        sid="TR_b", cid="TR_b", kind="video", source="camera", name="", publisher_sid="PA_b"
    )


def _subscribe(track: PublishedTrack, index: int, sink: CountingSink) -> DownTrack:
    down = DownTrack(track, f"PA_{index}")
    down.configure(
        sink=sink, out_ssrc=1000 + index, mid="0", payload_types={96: 96},
        extensions={SDES_MID: 1},
    )  # fmt: skip
    track.down_tracks.append(down)
    return down


class Setup(NamedTuple):
    send: Callable[[int], float]  # sends n input packets, returns the CPU seconds
    sink: CountingSink
    downs: list[DownTrack]


def single_layer(fanout: int, size: int) -> Setup:
    """A function sending n packets of a single-layer track, and its sink."""
    track = _track()
    ingress = Ingress({track.sid: track}, Stats())
    ingress.bind(track, "0", 7, None, VP8, {MID_ID: SDES_MID})
    sink = CountingSink()
    downs = [_subscribe(track, index, sink) for index in range(fanout)]
    ingress.on_rtp(_packet(7, 0, 0, True, size))

    def packets(seq: int, n: int) -> list[bytes]:
        return [_packet(7, seq + k, (seq + k) // 4, False, size) for k in range(n)]

    return Setup(_sender(ingress, packets, 1, 1), sink, downs)


def simulcast(fanout: int, size: int) -> Setup:
    """The same with three layers: n packets of each layer per call / 3."""
    track = _track()
    ingress = Ingress({track.sid: track}, Stats())
    track.set_simulcast(SimulcastOffer(RIDS, RID_ID, None))
    ingress.bind(track, "0", None, None, VP8, {MID_ID: SDES_MID})
    sink = CountingSink()
    downs = [_subscribe(track, index, sink) for index in range(fanout)]
    for index, down in enumerate(downs):  # each starts on the layer above its own
        down.set_layer((index + 1) % 3)
    for layer, rid in enumerate(RIDS):  # learnt by RID, a keyframe each
        ingress.on_rtp(_packet(100 + layer, 0, 1000 * layer, True, size, rid))
    for index, down in enumerate(downs):
        down.set_layer(index % 3)
    for layer in range(3):  # a keyframe each: every subscriber switches (renumbering on)
        ingress.on_rtp(_packet(100 + layer, 1, 1000 * layer + 1, True, size))

    def packets(seq: int, n: int) -> list[bytes]:
        return [
            _packet(100 + layer, seq + k, 1000 * layer + (seq + k) // 4, False, size)
            for k in range(n // 3)
            for layer in range(3)
        ]

    return Setup(_sender(ingress, packets, 2, 3), sink, downs)


def _sender(
    ingress: Ingress, packets: Callable[[int, int], list[bytes]], first: int, streams: int
) -> Callable[[int], float]:
    """Sends n packets (built beforehand, not timed) through `ingress`; returns the CPU time.
    Each of the `streams` SSRCs gets n / streams of them, its sequence numbers contiguous
    from one call to the next."""
    state = {"seq": first}

    def send(n: int) -> float:
        built = packets(state["seq"], n)
        state["seq"] += n // streams
        started = time.process_time()
        on_rtp = ingress.on_rtp
        for packet in built:
            on_rtp(packet)
        return time.process_time() - started

    return send


def _round(setup: Setup, packets: int) -> float:
    """CPU microseconds per output packet over `packets` input packets (built beforehand)."""
    send, sink, _ = setup
    before = sink.packets
    spent = send(packets)
    return spent * 1e6 / max(sink.packets - before, 1)


def compare(
    fanout: int = 20, rounds: int = 21, packets: int = 3000, size: int = 1100
) -> dict[str, Any]:
    """Alternating rounds of both; the medians and their ratio."""
    single, layered = single_layer(fanout, size), simulcast(fanout, size)
    _round(single, packets // 10)  # warm-up
    _round(layered, packets // 10)
    singles, layereds = [], []
    for _ in range(rounds):
        singles.append(_round(single, packets))
        # Three times the input packets: each subscriber receives one layer of three.
        layereds.append(_round(layered, packets * 3))
    single_us, layered_us = statistics.median(singles), statistics.median(layereds)
    return {
        "fanout": fanout,
        "rounds": rounds,
        "single_us_per_out": round(single_us, 3),
        "simulcast_us_per_out": round(layered_us, 3),
        "ratio": round(layered_us / single_us, 3),
    }


def format_comparison(result: dict[str, Any]) -> str:
    return (
        f"fan-out {result['fanout']}, {result['rounds']} alternating rounds (medians): "
        f"single layer {result['single_us_per_out']} µs per output packet, 3-layer simulcast "
        f"{result['simulcast_us_per_out']} µs ({(result['ratio'] - 1) * 100:+.1f} %)"
    )
