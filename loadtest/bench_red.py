"""`keyroom bench --red`: CPU per RED audio copy to subscribers that negotiated RED, through the
compiled per-copy loop (sfu/fastpath/redcopies.py) and through RedFanout's Python path (one
`FanoutBatch.add` per copy), rounds alternating, same run.

What a Chromium room sends: the publisher's RED (red/48000/2 as 63 over Opus 111, one redundant
frame, audio level and MID elements); each subscriber negotiated RED over its own Opus payload
type (96, as aiortc offers it: every block header renamed), transport-cc and the MID. The setup
is loadtest/bench_simulcast.py's compiled side: RtpSinks into one FanoutBatch, SRTP and
`sendmmsg` to a socket nobody reads, flushed every 8 inputs.
"""

from __future__ import annotations

import os
import statistics
import struct
from typing import Any

from loadtest import bench_simulcast as bs
from sfu.forwarder import AUDIO_LEVEL, SDES_MID, CodecInfo, DownTrack, PublishedTrack
from sfu.ingress import Ingress
from sfu.red import wrap
from sfu.stats import DropReason, Stats
from sfu.twcc import URI, TransportSequence

OPUS, RED, SSRC = 111, 63, 0x0A0D
CODEC = CodecInfo("audio/opus", 48000, OPUS, red_payload_type=RED)
PATHS = ("compiled", "python")


def _packet(seq: int, frame: int) -> bytes:
    """A RED packet of two Opus frames of `frame` bytes (the primary and the one before)."""
    elements = bytes((1 << 4, ord("0"), 3 << 4, 0x90))  # MID (id 1) "0", audio level (id 3)
    header = struct.pack("!BBHII", 0x90, RED, seq & 0xFFFF, (seq * 960) & 0xFFFFFFFF, SSRC)
    header += struct.pack("!HH", 0xBEDE, 1) + elements
    primary, previous = bytes((seq & 0xFF,)) * frame, bytes(((seq - 1) & 0xFF,)) * frame
    return header + wrap(OPUS, primary, [(OPUS, 960, previous)])


def setup(path: str, fanout: int, frame: int) -> bs.Setup:
    """A RED track and `fanout` RED subscribers; `path` "compiled" or "python"."""
    track = PublishedTrack(
        sid="TR_a", cid="a", kind="audio", source="microphone", name="", publisher_sid="PA_p"
    )
    ingress = Ingress({track.sid: track}, Stats())
    ingress.bind(track, "0", SSRC, None, CODEC, {1: SDES_MID, 3: AUDIO_LEVEL})
    assert track.red is not None
    sinks = bs.BatchSinks(True)
    sinks.batch.copies = path == "compiled"
    for index in range(fanout):
        sink = sinks.make()
        sink.transport_sequence = TransportSequence(5)
        down = DownTrack(track, f"PA_{index}")
        down.configure(
            sink=sink, out_ssrc=1000 + index, mid="0", payload_types={OPUS: 96, RED: RED},
            extensions={SDES_MID: 1, AUDIO_LEVEL: 3, URI: 5},
        )  # fmt: skip
        track.red.attach(down, 96)
        sinks.downs.append(down)

    def packets(seq: int, n: int) -> list[bytes]:
        return [_packet(seq + k, frame) for k in range(n)]

    return bs.Setup(bs._sender(ingress, packets, 1, 1, sinks), sinks, sinks.downs)


def compare(
    fanout: int = 20, rounds: int = 15, packets: int = 3000, frame: int = 80
) -> dict[str, Any]:
    """Alternating rounds of both paths; the medians of CPU µs per RED copy."""
    load = os.getloadavg()
    setups = {path: setup(path, fanout, frame) for path in PATHS}
    for cell in setups.values():
        bs._round(cell, packets // 10)  # warm-up (and into the compiled loop)
    samples: dict[str, list[float]] = {path: [] for path in PATHS}
    for _ in range(rounds):
        for path, cell in setups.items():
            samples[path].append(bs._round(cell, packets))
    medians = {path: statistics.median(values) for path, values in samples.items()}
    stats = {path: cell.sink.batch._stats for path, cell in setups.items()}  # type: ignore[union-attr]
    return {
        "fanout": fanout,
        "rounds": rounds,
        "us_per_red_copy": {path: round(median, 3) for path, median in medians.items()},
        "ratio": round(medians["compiled"] / medians["python"], 3),
        "compiled_red_copies": {path: s.fanout_compiled_red_copies for path, s in stats.items()},
        "send_failed": sum(s.dropped[DropReason.SEND_FAILED.value] for s in stats.values()),
        "load_average": [round(x, 2) for x in load + os.getloadavg()],
    }


def format_comparison(result: dict[str, Any]) -> str:
    us = result["us_per_red_copy"]
    before, after = result["load_average"][0], result["load_average"][3]
    return (
        f"RED audio, fan-out {result['fanout']}, {result['rounds']} alternating rounds (medians),"
        f" per RED copy: compiled {us['compiled']} µs, Python {us['python']} µs"
        f" (x{result['ratio']}); compiled RED copies {result['compiled_red_copies']['compiled']}"
        f" (Python path: {result['compiled_red_copies']['python']}); load average"
        f" {before:.2f} -> {after:.2f}"
    )
