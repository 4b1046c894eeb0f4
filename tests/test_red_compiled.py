"""RED audio in the compiled per-copy loop (sfu/fastpath/redcopies.py): one scenario of a RED
publisher forwarded twice through a shared socket's batch, by RedFanout's Python path and by
the compiled loop, must give every RED subscriber (one with the publisher's Opus payload type,
others with their own, one with transport-cc, one that stays on the Python path) and the plain
subscriber the same datagrams, counters, sender reports, transport-cc history and NACK answers;
plain Opus packets of the RED publisher, two-byte extension blocks, padding, malformed RED,
leaving and rejoining the steady state included."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from loadtest import bench_red
from sfu import twcc
from sfu.fastpath import loader
from sfu.fastpath.batch import FanoutBatch
from sfu.fastpath.redcopies import RedCopies
from sfu.fastpath.steady import REFRESH
from sfu.forwarder import SDES_MID, CodecInfo, DownTrack, PublishedTrack
from sfu.ingress import Ingress
from sfu.internals import RtpSink
from sfu.red import read_red, wrap
from sfu.redtrack import RedFanout
from sfu.rtp import parse_rtp
from sfu.stats import DropReason, Stats
from sfu.twcc import FeedbackReport, TransportSequence
from tests.test_steady_fanout import (  # noqa: F401 (`sockets`: the fixture, 7 receivers)
    AUDIO_LEVEL,
    TRANSPORT_CC,
    datagrams,
    one_byte,
    plaintexts,
    shared_sink,
    sockets,
)

OPUS, RED, SSRC = 111, 63, 0x5151
CODEC = CodecInfo("audio/opus", 48000, OPUS, red_payload_type=RED)

# Per subscriber: RED's Opus payload type (None: a plain subscriber, no RED), payload types,
# extensions, MID. The last MID is too long for the one-byte form: Python's path all along.
SUBSCRIBERS: list[tuple[int | None, dict[int, int], dict[str, int], str]] = [
    (OPUS, {OPUS: OPUS, RED: RED}, {SDES_MID: 1, AUDIO_LEVEL: 3}, "0"),
    (96, {OPUS: 96, RED: 63}, {SDES_MID: 4, AUDIO_LEVEL: 2}, "audio-1"),
    (96, {OPUS: 96, RED: 127}, {SDES_MID: 1, TRANSPORT_CC: 5}, "2"),
    (None, {OPUS: 96}, {SDES_MID: 1, AUDIO_LEVEL: 3}, "3"),
    (100, {OPUS: 100, RED: 101}, {SDES_MID: 1}, "a-mid-of-twenty-bytes"),
]
TCC = 2  # the subscriber with transport-cc


def elements(seq: int) -> bytes:
    return one_byte([(1, b"0"), (3, bytes((0x80 | seq & 0x7F,)))])


def packet(seq: int, payload: bytes, *, pt: int = RED, ext: bytes | None = b"") -> bytes:
    ext = elements(seq) if ext == b"" else ext
    b0 = 0x90 if ext else 0x80
    header = struct.pack("!BBHII", b0, pt, seq & 0xFFFF, (seq * 960) & 0xFFFFFFFF, SSRC)
    return header + (ext or b"") + payload


def frame(seq: int) -> bytes:
    return bytes((seq & 0xFF,)) * (20 + seq % 60)


def input_packets(n: int, seq: int) -> list[bytes]:
    """Input n at publisher sequence number `seq`: RED with 0 to 2 redundant blocks, and the
    odd ones."""
    kind = n % 11
    redundant = [(OPUS, 960 * k, frame(seq - k)) for k in range(1, 1 + n % 3)]
    red = wrap(OPUS, frame(seq), redundant)
    if kind == 2:
        return [packet(seq, frame(seq), pt=OPUS)]  # plain Opus from the RED publisher
    if kind == 4:  # the two-byte form: the compiled loop hands it to the Python path
        return [packet(seq, red, ext=struct.pack("!HH", 0x1000, 1) + bytes((3, 1, 9, 0)))]
    if kind == 5:  # padded, and a comfort-noise redundant block (its payload type kept)
        padded = wrap(OPUS, frame(seq), [(13, 960, b"cn")]) + bytes(3) + b"\x04"
        data = bytearray(packet(seq, padded))
        data[0] |= 0x20
        return [bytes(data)]
    if kind == 7:  # malformed RED: dropped and counted, on both paths
        return [packet(seq, b"\x80\x00"), packet(seq + 1, red)]
    if kind == 8:  # reordered: the next one first
        return [packet(seq + 1, red), packet(seq, red)]
    if kind == 9:
        return [packet(seq, red, ext=None)]  # no extension block
    return [packet(seq, red)]


Event = Callable[["Run"], object]
# Before input n, the same in both runs: leaving the steady state and coming back, a mute, a
# subscriber leaving.
EVENTS: dict[int, Event] = {
    40: lambda run: setattr(run.downs[0], "padding", 1),
    45: lambda run: setattr(run.downs[0], "padding", 0),
    90: lambda run: setattr(run.track, "muted", True),
    96: lambda run: setattr(run.track, "muted", False),
    150: lambda run: run.red.detach(run.downs[1]),
    170: lambda run: run.red.attach(run.downs[1], 96),
}


@dataclass
class Run:
    track: PublishedTrack
    downs: list[DownTrack]
    sinks: list[RtpSink]
    received: list[list[bytes]]
    stats: Stats

    @property
    def red(self) -> RedFanout:
        assert self.track.red is not None
        return self.track.red


def run(compiled: bool, receivers: list[socket.socket], sender: socket.socket) -> Run:
    module = loader.load()
    assert module is not None, loader.failure()
    random.seed(21)
    stats = Stats()
    batch = FanoutBatch(module, sender.fileno(), stats)
    batch.copies = compiled
    track = PublishedTrack(
        sid="TR_a", cid="a", kind="audio", source="microphone", name="", publisher_sid="PA_p"
    )
    ingress = Ingress({"TR_a": track}, stats)
    ingress.bind(track, "0", SSRC, None, CODEC, {1: SDES_MID, 3: AUDIO_LEVEL})
    red = track.red
    assert red is not None
    downs, sinks = [], []
    for i, (opus_pt, payload_types, extensions, mid) in enumerate(SUBSCRIBERS):
        sink = shared_sink(batch, i, receivers[i])
        if i == TCC:
            sink.transport_sequence = TransportSequence(5, start=65300)
        down = DownTrack(track, f"PA_{i}")
        down.configure(
            sink=sink, out_ssrc=700 + i, mid=mid, payload_types=payload_types, extensions=extensions
        )
        if opus_pt is None:
            track.down_tracks.append(down)
        else:
            red.attach(down, opus_pt)
        downs.append(down)
        sinks.append(sink)
    result = Run(track, downs, sinks, [], stats)
    now = [50.0]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(twcc, "send_clock", lambda: now[0])
        for item in scenario():
            if callable(item):
                item(result)
            else:
                now[0] += 0.02
                ingress.on_rtp(item)
    result.received = datagrams(batch, downs, sinks, receivers)
    return result


def scenario() -> Iterator[bytes | Event]:
    seq = 2000
    for n in range(300):
        if n in EVENTS:
            yield EVENTS[n]
        packets = input_packets(n, seq)
        yield from packets
        seq += 2 if n % 11 in (7, 8) else 1


def test_red_subscribers_get_from_the_compiled_loop_what_the_python_path_sends(
    sockets: tuple[list[socket.socket], socket.socket],  # noqa: F811 (imported fixture)
) -> None:
    python = run(False, *sockets)
    compiled = run(True, *sockets)
    red = compiled.track.red
    assert red is not None and python.track.red is not None
    copies = red.copies
    assert isinstance(copies, RedCopies) and python.track.red.copies is None
    # The long MID keeps its Python path; the other RED subscribers are steady by the end.
    assert [compiled.downs[i]._copies is copies for i in (0, 1, 2, 4)] == [True] * 3 + [False]
    assert compiled.downs[3]._copies is compiled.track.copies is not None  # the plain one
    assert copies.fallbacks > 0  # the two-byte inputs went the Python way
    assert compiled.stats.fanout_compiled_red_copies > 3 * 200
    assert python.stats.fanout_compiled_red_copies == python.stats.fanout_compiled_copies == 0
    for i in range(len(SUBSCRIBERS)):
        assert compiled.received[i] == python.received[i], f"subscriber {i}"
        assert len(compiled.received[i]) > 200
        a, b = compiled.sinks[i], python.sinks[i]
        assert (a.sent_packets, a.sent_bytes, a.send_errors) == (
            b.sent_packets,
            b.sent_bytes,
            b.send_errors,
        )
        ra, rb = compiled.downs[i].rewriter, python.downs[i].rewriter
        assert ra is not None and rb is not None and ra.state() == rb.state()
        # Audio keeps no retransmission cache: a NACK gets nothing, on both paths.
        last = ra.last_out_seq
        assert compiled.downs[i].retransmit((last,), 1.0) == (0, 0)
        assert python.downs[i].retransmit((last,), 1.0) == (0, 0)
    for field in ("red_received", "packets_out"):
        assert getattr(compiled.stats, field) == getattr(python.stats, field), field
    assert compiled.stats.dropped[DropReason.MALFORMED_RED.value] == 27
    assert python.stats.dropped[DropReason.MALFORMED_RED.value] == 27
    # Sender reports: the same packet and octet counts and timestamps.
    for track in (compiled.track, python.track):
        track.on_sender_report(0x1234_5678_9ABC_DEF0, 2000 * 960, 0.0)
    for x, y in zip(compiled.downs, python.downs, strict=True):
        assert x.sender_report() == y.sender_report() is not None
    # Transport-cc: the same sequence numbers, send times and sizes.
    tx, ty = compiled.sinks[TCC].transport_sequence, python.sinks[TCC].transport_sequence
    assert tx is not None and ty is not None
    sent = tx.next[0]
    assert sent == ty.next[0] > 65300 + 200  # across the 16-bit wrap
    report = FeedbackReport(
        sent & 0xFFFF, 0, tuple((n & 0xFFFF, n * 250) for n in range(65300, sent))
    )
    assert tx.resolve(report) == ty.resolve(report)


def test_block_headers_name_each_subscribers_opus_payload_type(
    sockets: tuple[list[socket.socket], socket.socket],  # noqa: F811 (imported fixture)
) -> None:
    compiled = run(True, *sockets)
    block_headers_name_their_opus(SUBSCRIBERS, compiled.received)


def block_headers_name_their_opus(
    subscribers: list[tuple[int | None, dict[int, int], dict[str, int], str]],
    received: list[list[bytes]],
) -> None:
    """Subscriber i's RED packets (`received[i]`, SRTP) name its Opus payload type in every
    block header; its plain ones are its Opus; a subscriber without RED gets no RED."""
    for i, (opus_pt, payload_types, _, _) in enumerate(subscribers):
        red_blocks = plain = 0
        for data in plaintexts(i, received[i]):
            info = parse_rtp(data)
            if opus_pt is not None and info.payload_type == payload_types[RED]:
                block = read_red(data, info.payload_start, info.payload_end)
                assert block is not None and block.primary_pt == opus_pt
                assert {pt for pt, _, _ in block.redundant} <= {opus_pt, 13}
                red_blocks += 1
            else:
                assert info.payload_type == payload_types[OPUS]
                plain += 1
        assert plain > 20 and (red_blocks > 200 if opus_pt is not None else red_blocks == 0)


def test_a_red_subscriber_leaves_the_loop_at_once_and_rejoins_when_steady(
    sockets: tuple[list[socket.socket], socket.socket],  # noqa: F811 (imported fixture)
) -> None:
    compiled = run(True, *sockets)
    red = compiled.track.red
    assert red is not None and red.copies is not None
    down, sink = compiled.downs[1], compiled.sinks[1]
    down.padding = 2
    assert down._copies is None
    sent = sink.sent_packets
    for n in range(REFRESH):
        data = packet(5000 + n, wrap(OPUS, frame(n), []))
        red.forward(data, parse_rtp(data))
    assert sink.sent_packets == sent + REFRESH and down._copies is None  # Python's
    down.padding = 0
    for n in range(REFRESH):
        data = packet(6000 + n, wrap(OPUS, frame(n), []))
        red.forward(data, parse_rtp(data))
    assert down._copies is red.copies
    red.detach(down)  # unsubscribed: out of the loop at once, nothing more
    assert down._copies is None and down not in red.copies.members
    data = packet(7000, wrap(OPUS, b"x", []))
    red.forward(data, parse_rtp(data))
    down.rewriter  # noqa: B018
    assert sink.sent_packets == sent + 2 * REFRESH


def test_a_renegotiated_codec_makes_the_loop_again_with_its_payload_types(
    sockets: tuple[list[socket.socket], socket.socket],  # noqa: F811 (imported fixture)
) -> None:
    compiled = run(True, *sockets)
    red, track = compiled.track.red, compiled.track
    assert red is not None and red.copies is not None
    old = red.copies
    track.codec = CodecInfo("audio/opus", 48000, 109, red_payload_type=RED)
    red.opus[compiled.downs[0]] = 109  # as its new answer said
    data = packet(9000, wrap(109, b"new", [(109, 960, b"old")]))
    red.forward(data, parse_rtp(data))
    assert red.copies is not old and not old.members


def test_the_red_bench_times_both_paths_with_every_copy_sent() -> None:
    """`keyroom bench --red`, CI-sized: both paths measured, the compiled one's copies made by
    the loop, none refused."""
    result = bench_red.compare(fanout=3, rounds=1, packets=200)
    assert set(result["us_per_red_copy"]) == {"compiled", "python"}
    assert all(us > 0 for us in result["us_per_red_copy"].values())
    assert result["compiled_red_copies"]["compiled"] >= 3 * 200
    assert result["compiled_red_copies"]["python"] == 0 and result["send_failed"] == 0
    assert "per RED copy: compiled" in bench_red.format_comparison(result)
