"""`keyroom bench --simulcast`: the forwarding core's CPU per output packet with a three-layer
simulcast track against a single-layer track, same fan-out, same process, rounds alternating.

Both go through the publisher's ingress (SSRC lookup) and real down-tracks (RTP rewriting, the
packet cache) into counting sinks, so only keyroom's own work is timed. The simulcast track's
subscribers are spread over its three layers and have all switched layer once (a switch leaves
the VP8 PictureID renumbering on for good: the slower path); each input packet of a layer goes
to that layer's subscribers only.

`path`: "python" (the default: counting sinks, every copy made by the Python forwarder), or
"compiled": what `rtc.fanout = "compiled"` runs on a shared port: each subscriber an `RtpSink`
into one `FanoutBatch` (SRTP and `sendmmsg` to a bound socket nobody reads, flushed every 8
inputs as the shared socket's reader does), steady down-tracks in the compiled per-copy loop;
that path also times the simulcast track with its down-tracks kept on the Python path
(`FanoutBatch.layers` False: how simulcast was forwarded before its layers joined the compiled
loop), same run.
"""

from __future__ import annotations

import os
import socket
import statistics
import struct
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import pylibsrtp

from sfu.fastpath import loader
from sfu.fastpath.batch import FanoutBatch
from sfu.forwarder import SDES_MID, CodecInfo, DownTrack, PublishedTrack
from sfu.ingress import Ingress
from sfu.sdpinfo import SimulcastOffer
from sfu.stats import DropReason, Stats

MID_ID, RID_ID = 1, 10
RIDS = ("q", "h", "f")
VP8 = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96)


class CountingSink:
    def __init__(self) -> None:
        self.packets = 0

    def send(self, data: bytes) -> bool:
        self.packets += 1
        return True


class BatchSinks:
    """The compiled path's sinks: an RtpSink per subscriber into one FanoutBatch; `packets`
    counts what they sent (the compiled loop's counters brought up to date first)."""

    def __init__(self, layers: bool) -> None:
        from loadtest.bench_forward import _fake_dtls  # the connected transport's attributes

        module = loader.load()
        if module is None:
            raise RuntimeError(f"the compiled fan-out cannot be built: {loader.failure()}")
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Where every copy goes: a socket that exists (a closed port would make the kernel
        # build an ICMP error per datagram, a cost a real subscriber's address does not have)
        # and is never read (its small buffer full, the kernel drops at its queue).
        self.receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.receiver.bind(("127.0.0.1", 0))
        address = self.receiver.getsockname()
        self.batch = FanoutBatch(module, self.socket.fileno(), Stats())
        self.batch.layers = layers
        self.batch.depth = 1  # flushed by the sender, as the shared socket's reader does
        protocol = SimpleNamespace(transport=SimpleNamespace(sendto=None, batch=self.batch))
        self._dtls: Callable[[], Any] = lambda: _fake_dtls(_session(), protocol, address)
        self.sinks: list[Any] = []
        self.downs: list[DownTrack] = []

    def make(self) -> Any:
        from sfu.internals import RtpSink

        sink = RtpSink(self._dtls())
        self.sinks.append(sink)
        return sink

    @property
    def packets(self) -> int:
        for down in self.downs:
            down.rewriter  # noqa: B018 (brings its sink's counters up to date)
        return sum(sink.sent_packets for sink in self.sinks)


def _session() -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=bytes(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy=policy)


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


def _subscribe(track: PublishedTrack, index: int, sink: Any) -> DownTrack:
    down = DownTrack(track, f"PA_{index}")
    down.configure(
        sink=sink, out_ssrc=1000 + index, mid="0", payload_types={96: 96},
        extensions={SDES_MID: 1},
    )  # fmt: skip
    track.down_tracks.append(down)
    return down


class Setup(NamedTuple):
    send: Callable[[int], float]  # sends n input packets, returns the CPU seconds
    sink: CountingSink | BatchSinks
    downs: list[DownTrack]


def _sinks(track: PublishedTrack, fanout: int, path: str, layers: bool) -> Setup:
    """The subscribers' down-tracks, with their sinks (send: filled in by the caller)."""
    if path == "compiled":
        sinks = BatchSinks(layers)
        sinks.downs = [_subscribe(track, index, sinks.make()) for index in range(fanout)]
        return Setup(lambda n: 0.0, sinks, sinks.downs)
    sink = CountingSink()
    return Setup(lambda n: 0.0, sink, [_subscribe(track, index, sink) for index in range(fanout)])


def single_layer(fanout: int, size: int, path: str = "python") -> Setup:
    """A function sending n packets of a single-layer track, and its sink."""
    track = _track()
    ingress = Ingress({track.sid: track}, Stats())
    ingress.bind(track, "0", 7, None, VP8, {MID_ID: SDES_MID})
    _, sink, downs = _sinks(track, fanout, path, True)
    ingress.on_rtp(_packet(7, 0, 0, True, size))

    def packets(seq: int, n: int) -> list[bytes]:
        return [_packet(7, seq + k, (seq + k) // 4, False, size) for k in range(n)]

    return Setup(_sender(ingress, packets, 1, 1, sink), sink, downs)


def simulcast(fanout: int, size: int, path: str = "python", layers: bool = True) -> Setup:
    """The same with three layers: n packets of each layer per call / 3. `layers` False: the
    compiled path's simulcast down-tracks stay on the Python path."""
    track = _track()
    ingress = Ingress({track.sid: track}, Stats())
    track.set_simulcast(SimulcastOffer(RIDS, RID_ID, None))
    ingress.bind(track, "0", None, None, VP8, {MID_ID: SDES_MID})
    _, sink, downs = _sinks(track, fanout, path, layers)
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

    return Setup(_sender(ingress, packets, 2, 3, sink), sink, downs)


def _sender(
    ingress: Ingress,
    packets: Callable[[int, int], list[bytes]],
    first: int,
    streams: int,
    sink: CountingSink | BatchSinks,
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
        if isinstance(sink, BatchSinks):
            flush = sink.batch.flush
            for k, packet in enumerate(built):
                on_rtp(packet)
                if k & 7 == 7:
                    flush()
            flush()
        else:
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
    fanout: int = 20,
    rounds: int = 21,
    packets: int = 3000,
    size: int = 1100,
    path: str = "python",
) -> dict[str, Any]:
    """Alternating rounds of both (and, compiled, of the simulcast track on the Python path);
    the medians and their ratios to the single layer."""
    load = os.getloadavg()
    setups = {
        "single": single_layer(fanout, size, path),
        "simulcast": simulcast(fanout, size, path),
    }
    if path == "compiled":
        setups["simulcast_python"] = simulcast(fanout, size, path, layers=False)
    # Three times the input packets for a simulcast track: each subscriber takes one layer.
    inputs = {name: packets * (1 if name == "single" else 3) for name in setups}
    for name, setup in setups.items():
        _round(setup, inputs[name] // 10)  # warm-up (and into the compiled loop)
    samples: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, setup in setups.items():
            samples[name].append(_round(setup, inputs[name]))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    result: dict[str, Any] = {
        "fanout": fanout,
        "rounds": rounds,
        "path": path,
        "load_average": [round(x, 2) for x in load + os.getloadavg()],
    }
    if path == "compiled":  # copies SRTP or the socket refused: none expected
        result["send_failed"] = sum(
            setup.sink.batch._stats.dropped[DropReason.SEND_FAILED.value]
            for setup in setups.values()
            if isinstance(setup.sink, BatchSinks)
        )
    for name, median in medians.items():
        result[f"{name}_us_per_out"] = round(median, 3)
        if name != "single":
            prefix = "" if name == "simulcast" else name.removeprefix("simulcast_") + "_"
            result[f"{prefix}ratio"] = round(median / medians["single"], 3)
    return result


def format_comparison(result: dict[str, Any]) -> str:
    text = (
        f"fan-out {result['fanout']}, {result['path']} path, {result['rounds']} alternating"
        f" rounds (medians): single layer {result['single_us_per_out']} µs per output packet,"
        f" 3-layer simulcast {result['simulcast_us_per_out']} µs"
        f" ({(result['ratio'] - 1) * 100:+.1f} %)"
    )
    if "python_ratio" in result:
        text += (
            "; simulcast with its copies on the Python path"
            f" {result['simulcast_python_us_per_out']}"
            f" µs ({(result['python_ratio'] - 1) * 100:+.1f} %)"
        )
    before, after = result["load_average"][:3], result["load_average"][3:]
    return text + f"; load average {before[0]:.2f} -> {after[0]:.2f}"
