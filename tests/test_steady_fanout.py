"""The compiled per-copy loop (sfu/fastpath/steady.py): one scenario forwarded twice through a
shared socket's batch, by the Python path (one FanoutBatch.add per copy) and by the compiled
loop, must give every subscriber the same datagrams, the same NACK answers, the same counters
and sender reports; leaving and rejoining the steady state included."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import cast

import pylibsrtp
import pytest
from aiortc.rtcdtlstransport import State

from loadtest.bench_forward import _fake_dtls
from sfu import clock, twcc
from sfu.fastpath import loader
from sfu.fastpath.batch import FanoutBatch
from sfu.fastpath.steady import REFRESH
from sfu.forwarder import SDES_MID, CodecInfo, DownTrack, PublishedTrack
from sfu.internals import RtpSink
from sfu.layerswitch import PAUSED
from sfu.rtp import parse_rtp
from sfu.sdpinfo import SimulcastOffer
from sfu.sendbudget import BudgetedSink, SendBudget
from sfu.stats import DropReason, Stats
from sfu.twcc import FeedbackReport, TransportSequence

ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
VP8_KEY = b"\x10\x00" + bytes(30)
VP8_DELTA = b"\x10\x01" + bytes(30)

# Per subscriber: negotiated extension ids, output payload types, MID. The last one's MID is
# too long for the one-byte form: it keeps the Python path all along.
SUBSCRIBERS: list[tuple[dict[str, int], dict[int, int], str]] = [
    ({SDES_MID: 1, ABS_SEND_TIME: 2, AUDIO_LEVEL: 3}, {96: 96}, "0"),
    ({SDES_MID: 4, ABS_SEND_TIME: 9}, {96: 100}, "video-12"),
    ({SDES_MID: 1, ABS_SEND_TIME: 2, AUDIO_LEVEL: 3}, {96: 96}, "2"),
    ({ABS_SEND_TIME: 3, TRANSPORT_CC: 5}, {96: 98}, "3"),
    ({}, {96: 96}, "4"),
    ({SDES_MID: 2, TRANSPORT_CC: 7}, {96: 97, 97: 99}, "5"),
    ({SDES_MID: 1, ABS_SEND_TIME: 2}, {96: 96}, "a-mid-of-twenty-bytes"),
]


def one_byte(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(bytes(((i << 4) | (len(v) - 1),)) + v for i, v in elements)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def packet(
    seq: int,
    *,
    key: bool = False,
    pt: int = 96,
    ext: bytes | None = None,
    marker: bool = False,
    padding: int = 0,
    csrcs: int = 0,
    size: int = 0,
) -> bytes:
    b0 = 0x80 | (0x10 if ext is not None else 0) | (0x20 if padding else 0) | csrcs
    header = struct.pack("!BBHII", b0, pt | (0x80 if marker else 0), seq & 0xFFFF, seq * 3000, 77)
    header += bytes(4 * csrcs) + (ext or b"")
    payload = (VP8_KEY if key else VP8_DELTA) + bytes([seq & 0xFF]) * size
    return header + payload + (bytes(padding - 1) + bytes((padding,)) if padding else b"")


def browser_ext(seq: int) -> bytes:
    return one_byte([(1, b"0"), (3, bytes((seq & 0xFF, 1, 2))), (6, bytes((0x85,)))])


Event = Callable[[list[DownTrack]], object]
# Things that happen to the down-tracks before input packet n, the same in both runs.
EVENTS: dict[int, Event] = {
    60: lambda downs: setattr(downs[0], "waiting_for_keyframe", True),
    80: lambda downs: setattr(downs[1], "padding", 2),
    95: lambda downs: setattr(downs[1], "padding", 0),
    110: lambda downs: downs[2].set_layer(PAUSED),
    150: lambda downs: downs[2].set_layer(2),
    200: lambda downs: downs[3].track.set_muted(True),
    205: lambda downs: downs[3].track.set_muted(False),
}


def input_packets(n: int, seq: int) -> list[bytes]:
    """Input n of the scenario, at publisher sequence number `seq`: every kind in turn."""
    kind = n % 13
    if kind == 0:
        return [packet(seq, key=True, ext=browser_ext(seq), marker=True)]
    if kind == 3:
        return [packet(seq, ext=None, padding=7)]  # no extension block, padded
    if kind == 5:  # the two-byte form: the compiled loop leaves it to Python
        return [packet(seq, ext=struct.pack("!HH", 0x1000, 1) + bytes((3, 1, 9, 0)))]
    if kind == 7:
        return [packet(seq, pt=97, ext=browser_ext(seq), csrcs=2)]  # mapped by one only
    if kind == 9:
        return [packet(seq, pt=111, ext=browser_ext(seq))]  # mapped by none
    if kind == 10:  # odd one-byte blocks: padding bytes, id 15, a truncated element, a huge one
        odd = (
            bytes((0, 0x10, 0x30, 0, 0, 0x32, 1, 2, 3, 0xF0, 0x11, 0x22)),
            bytes((0x10, 0x30, 0x3F, 1, 2, 3, 0, 0)),
            bytes(1300) + bytes((0x10, 0x30, 0, 0)),
        )[(n // 13) % 3]
        return [packet(seq, ext=struct.pack("!HH", 0xBEDE, len(odd) // 4) + odd)]
    if kind == 11:
        return [packet(seq, ext=browser_ext(seq), size=1380)]  # too large for a batch slot
    if kind == 12:  # reordered: the next one first
        return [packet(seq + 1, ext=browser_ext(seq + 1)), packet(seq, ext=browser_ext(seq))]
    return [packet(seq, ext=browser_ext(seq), marker=kind == 6, size=40 + n)]


def scenario() -> Iterator[bytes | Event]:
    seq = 1000
    for n in range(260):
        if n in EVENTS:
            yield EVENTS[n]
        packets = input_packets(n, seq)
        yield from packets
        seq += len(packets)


@dataclass
class Run:
    track: PublishedTrack
    downs: list[DownTrack]
    sinks: list[RtpSink]
    received: list[list[bytes]]
    batch: FanoutBatch


def key(i: int) -> bytes:
    return bytes((i,)) * 30


def srtp(i: int, outbound: bool) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
    policy = pylibsrtp.Policy(key=key(i), ssrc_type=kind)
    policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy=policy)


def shared_sink(batch: FanoutBatch, i: int, receiver: socket.socket) -> RtpSink:
    """Subscriber i's sink as a shared socket's connection has it: RTP goes to its batch."""
    protocol = SimpleNamespace(transport=SimpleNamespace(sendto=None, batch=batch))
    return RtpSink(_fake_dtls(srtp(i, True), protocol, receiver.getsockname()))


def datagrams(
    batch: FanoutBatch, downs: list[DownTrack], sinks: list[RtpSink], receivers: list[socket.socket]
) -> list[list[bytes]]:
    """Each subscriber's datagrams, once nothing is left queued. SRTP as sent: the same keys,
    so the same bytes mean the same plaintext."""
    assert batch.flush() == 0
    received = []
    for i, sink in enumerate(sinks):
        downs[i].rewriter  # noqa: B018 (brings the sink's counters up to date)
        received.append([receivers[i].recv(2048) for _ in range(sink.sent_packets)])
    return received


def run(
    compiled: bool,
    receivers: list[socket.socket],
    sender: socket.socket,
    prepare: Callable[[list[DownTrack], list[RtpSink]], object] = lambda downs, sinks: None,
    tick: Callable[[], object] = lambda: None,
) -> Run:
    module = loader.load()
    assert module is not None, loader.failure()
    random.seed(14)  # the same random sequence starts in both runs
    stats = Stats()
    batch = FanoutBatch(module, sender.fileno(), stats)
    batch.copies = compiled
    track = PublishedTrack(
        sid="TR_v", cid="c", kind="video", source="camera", name="", publisher_sid="PA_p"
    )
    track.codec = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96)
    track.extensions = {1: SDES_MID, 3: ABS_SEND_TIME, 6: AUDIO_LEVEL}
    downs, sinks = [], []
    for i, (extensions, payload_types, mid) in enumerate(SUBSCRIBERS):
        sink = shared_sink(batch, i, receivers[i])
        down = DownTrack(track, f"PA_{i}")
        down.configure(
            sink=sink, out_ssrc=500 + i, mid=mid, payload_types=payload_types, extensions=extensions
        )
        track.down_tracks.append(down)
        downs.append(down)
        sinks.append(sink)
    prepare(downs, sinks)
    for item in scenario():
        if callable(item):
            item(downs)
        else:
            tick()
            track.forward(item, parse_rtp(item))
    return Run(track, downs, sinks, datagrams(batch, downs, sinks, receivers), batch)


def plaintexts(i: int, datagrams: list[bytes]) -> list[bytes]:
    """What a receiver decrypts; a repeated index (padding sequence numbers taken while
    input was reordered: the Python path does that too) is left out."""
    rx, plain = srtp(i, False), []
    for datagram in datagrams:
        try:
            plain.append(rx.unprotect(datagram))
        except pylibsrtp.Error:
            continue
    return plain


@pytest.fixture
def sockets() -> Iterator[tuple[list[socket.socket], socket.socket]]:
    receivers = []
    for _ in SUBSCRIBERS:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        receivers.append(sock)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield receivers, sender
    sender.close()
    for sock in receivers:
        sock.close()


def same_output(compiled: Run, python: Run, i: int, least: int) -> None:
    """Subscriber i got the same datagrams (at least `least`) and counts from both runs."""
    assert compiled.received[i] == python.received[i], f"subscriber {i}"
    assert len(python.received[i]) >= least
    a, b = compiled.sinks[i], python.sinks[i]
    assert (a.sent_packets, a.sent_bytes, a.send_errors) == (
        b.sent_packets,
        b.sent_bytes,
        b.send_errors,
    )


def same_nack_answers(compiled: Run, python: Run) -> None:
    """Every subscriber's cache answers NACKs for its last 600 sequence numbers alike."""
    for i, (a, b) in enumerate(zip(compiled.downs, python.downs, strict=True)):
        assert a.cache is not None and b.cache is not None and a.rewriter is not None
        last = a.rewriter.last_out_seq
        seqs = [(last - back) & 0xFFFF for back in range(600)]
        answers = [a.cache.get(s) for s in seqs]
        assert answers == [b.cache.get(s) for s in seqs], f"subscriber {i}"
        assert sum(x is not None for x in answers) > 100


def test_the_compiled_loop_sends_what_the_python_path_sends(
    sockets: tuple[list[socket.socket], socket.socket],
) -> None:
    python = run(False, *sockets)
    compiled = run(True, *sockets)
    copies = compiled.track.copies
    assert copies is not None and python.track.copies is None
    # The long MID keeps its Python path; the others are steady again by the end.
    assert [d._copies is copies for d in compiled.downs] == [True] * 6 + [False]
    assert copies.fallbacks > 0  # the two-byte inputs went the Python way
    for i in range(len(SUBSCRIBERS)):
        same_output(compiled, python, i, 101)
        ra, rb = compiled.downs[i].rewriter, python.downs[i].rewriter
        assert ra is not None and rb is not None
        assert ra.state() == rb.state()
    # Too large for a slot: dropped and counted on both paths.
    assert compiled.sinks[0].send_errors == python.sinks[0].send_errors > 0
    # Sender reports: the same packet and octet counts and timestamps.
    for track in (compiled.track, python.track):
        track.on_sender_report(0x1234_5678_9ABC_DEF0, 1000 * 3000, 0.0)
    for x, y in zip(compiled.downs, python.downs, strict=True):
        assert x.sender_report() == y.sender_report() is not None


def test_nacks_are_answered_with_the_bytes_first_sent(
    sockets: tuple[list[socket.socket], socket.socket],
) -> None:
    python = run(False, *sockets)
    compiled = run(True, *sockets)
    same_nack_answers(compiled, python)
    for i, a in enumerate(compiled.downs):
        assert a.cache is not None
        # What went out is what a NACK gets: each sequence number sent once (the header is
        # in clear), and the late packets; one sent twice (a padding packet's number taken
        # while the input was reordered, by both paths) gets the last sent.
        once = Counter(int.from_bytes(p[2:4], "big") for p in compiled.received[i])
        sent = {parse_rtp(p).sequence: p for p in plaintexts(i, compiled.received[i])}
        sent = {seq: data for seq, data in sent.items() if once[seq] == 1}
        assert len(sent) > 100
        for seq, data in sent.items():
            assert a.cache.get(seq) in (data, None)
    # Through DownTrack.retransmit: resent on the batch, counted by the sink.
    down, sink = compiled.downs[0], compiled.sinks[0]
    assert down.rewriter is not None
    before = sink.sent_packets
    last = down.rewriter.last_out_seq
    assert down.retransmit((last, (last - 1) & 0xFFFF), 1.0) == (2, 0)
    assert sink.sent_packets == before + 2


def test_leaving_the_steady_state_takes_a_down_track_out_at_once(
    sockets: tuple[list[socket.socket], socket.socket],
) -> None:
    compiled = run(True, *sockets)
    track, down, sink = compiled.track, compiled.downs[0], compiled.sinks[0]
    copies = track.copies
    assert copies is not None and down._copies is copies
    down.waiting_for_keyframe = True
    assert down._copies is None
    sent = sink.sent_packets
    delta = packet(5000, ext=browser_ext(5000))
    for _ in range(3 * REFRESH):
        track.forward(delta, parse_rtp(delta))
    assert sink.sent_packets == sent  # waits for a keyframe: nothing, and stays out
    assert down._copies is None
    keyframe = packet(5001, key=True, ext=browser_ext(5001))
    track.forward(keyframe, parse_rtp(keyframe))
    assert sink.sent_packets == sent + 1 and down._copies is None
    for n in range(REFRESH):
        data = packet(5002 + n, ext=browser_ext(5002 + n))
        track.forward(data, parse_rtp(data))
    assert down._copies is copies  # steady again: back in the compiled loop
    down.rewriter  # noqa: B018 (the sink's counters are brought up to date with it)
    assert sink.sent_packets == sent + 1 + REFRESH


def test_a_closed_transport_or_a_new_address_leaves_within_a_refresh(
    sockets: tuple[list[socket.socket], socket.socket],
) -> None:
    compiled = run(True, *sockets)
    track, copies = compiled.track, compiled.track.copies
    assert copies is not None
    closed, moved = compiled.sinks[4], compiled.sinks[5]
    closed._dtls._state = State.CLOSED
    moved._dtls.transport._connection._nominated[1] = SimpleNamespace(  # type: ignore[assignment]
        protocol=moved._pair.protocol, remote_addr=sockets[0][0].getsockname()
    )
    for n in range(REFRESH):
        data = packet(6000 + n, ext=browser_ext(6000 + n))
        track.forward(data, parse_rtp(data))
    assert compiled.downs[4]._copies is None and compiled.downs[5]._copies is None
    sent = closed.sent_packets
    data = packet(7000, ext=browser_ext(7000))
    track.forward(data, parse_rtp(data))
    assert closed.sent_packets == sent  # the Python path: not connected, nothing sent
    # The new address gets the packet (the sink learnt the new pair on the Python path).
    assert compiled.downs[5].rewriter is not None
    assert moved._remote == sockets[0][0].getsockname()
    # Removed from the track: out of the loop at the next packet.
    track.down_tracks.remove(compiled.downs[2])
    track.forward(data, parse_rtp(data))
    assert compiled.downs[2]._copies is None and compiled.downs[2] not in copies.members


def test_without_the_extension_every_copy_takes_the_python_path() -> None:
    """Sinks without a batch (the extension absent, a port range): no compiled loop is made,
    and forwarding is unchanged."""
    from tests.sink_helpers import ListSink

    track = PublishedTrack(
        sid="TR_v", cid="c", kind="video", source="camera", name="", publisher_sid="PA_p"
    )
    track.codec = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96)
    track.extensions = {1: SDES_MID}
    sinks = [ListSink() for _ in range(3)]
    for i, sink in enumerate(sinks):
        down = DownTrack(track, f"PA_{i}")
        down.configure(
            sink=sink, out_ssrc=i, mid=str(i), payload_types={96: 96}, extensions={SDES_MID: 1}
        )
        track.down_tracks.append(down)
    for n in range(3 * REFRESH):
        data = packet(n, key=n == 0, ext=one_byte([(1, b"0")]))
        assert track.forward(data, parse_rtp(data)) == 3
    assert track.copies is None
    assert all(len(s.sent) == 3 * REFRESH for s in sinks)


def test_a_full_batch_is_sent_and_the_rest_queued(
    sockets: tuple[list[socket.socket], socket.socket],
) -> None:
    """More copies than batch slots within one receive batch: flushed on the way, none lost."""
    compiled = run(True, *sockets)
    track, batch = compiled.track, compiled.batch
    before = [s.sent_packets for s in compiled.sinks[:6]]
    stats: Stats = batch._stats
    calls = stats.fanout_calls
    batch.depth += 1  # as the shared socket's reader does around a recvmmsg batch
    for n in range(100):  # 6 steady copies each: 600 > 512 slots
        data = packet(8000 + n, ext=browser_ext(8000 + n))
        track.forward(data, parse_rtp(data))
    batch.depth -= 1
    batch.flush()
    assert stats.fanout_calls == calls + 2
    assert stats.dropped[DropReason.SEND_FAILED.value] == 0
    for i, sink in enumerate(compiled.sinks[:6]):
        compiled.downs[i].rewriter  # noqa: B018
        assert sink.sent_packets == before[i] + 100


# Simulcast: three VP8 layers (layer 0 with 7-bit PictureIDs, the others 15-bit), subscribers
# switching between them; settled ones are forwarded by their layer's compiled loop.
def vp8(picture: int, tl0: int, key: bool, short: bool) -> bytes:
    pid = (
        bytes((picture & 0x7F,)) if short else bytes((0x80 | (picture >> 8) & 0x7F, picture & 0xFF))
    )
    return bytes((0x90, 0xC0)) + pid + bytes((tl0 & 0xFF, 0x00 if key else 0x01)) + bytes(24)


def layer_packet(layer: int, seq: int, n: int, key: bool, ext: bytes | None = None) -> bytes:
    if ext is None:
        ext = one_byte([(1, b"0"), (3, bytes((n & 0xFF, 1, 2)))])
    b0 = 0x90 if ext else 0x80
    ts = (seq * 3000 + layer * 7777) & 0xFFFFFFFF
    header = struct.pack("!BBHII", b0, 96, seq & 0xFFFF, ts, 201 + layer) + ext
    return header + vp8(1000 * layer + n // 2, 40 * layer + n // 4, key, layer == 0)


LAYER_EVENTS: dict[int, Event] = {
    0: lambda downs: [d.set_layer((i + 1) % 3) for i, d in enumerate(downs)],
    25: lambda downs: [d.set_layer(i % 3) for i, d in enumerate(downs)],
    40: lambda downs: downs[0].set_layer(2),
    70: lambda downs: downs[1].set_layer(0),
    90: lambda downs: downs[2].set_layer(PAUSED),
    120: lambda downs: downs[2].set_layer(1),
    180: lambda downs: setattr(downs[4], "padding", 2),
    200: lambda downs: setattr(downs[4], "padding", 0),
    220: lambda downs: downs[0].set_layer(0),
}


def layer_scenario() -> Iterator[tuple[int, bytes] | Event]:
    """(layer, packet) inputs and events: a keyframe per layer every 20 inputs (staggered),
    reordering, packets from before a switch point (refused by who switched), two-byte blocks,
    a jump that moves a floor."""
    for n in range(260):
        if n in LAYER_EVENTS:
            yield LAYER_EVENTS[n]
        for layer in range(3):
            seq = 3000 * (layer + 1) + n + (0x5000 if layer == 2 and n >= 150 else 0)
            key = n % 20 == 5 * layer
            if n % 17 == 3 and not key:  # the two-byte form: Python's way
                two = struct.pack("!HH", 0x1000, 1) + bytes((3, 1, 9, 0))
                yield layer, layer_packet(layer, seq, n, key, two)
            elif n % 19 == 7 and not key:  # reordered
                yield layer, layer_packet(layer, seq + 1, n + 1, False)
                yield layer, layer_packet(layer, seq, n, False)
            elif n in (27, 72, 123):  # soon after switches: from before a switch point
                yield layer, layer_packet(layer, seq - 30, n - 30, False)
                yield layer, layer_packet(layer, seq, n, key)
            elif n % 19 != 8:
                yield layer, layer_packet(layer, seq, n, key)


def run_layers(compiled: bool, receivers: list[socket.socket], sender: socket.socket) -> Run:
    module = loader.load()
    assert module is not None, loader.failure()
    random.seed(12)
    batch = FanoutBatch(module, sender.fileno(), Stats())
    batch.copies = compiled
    track = PublishedTrack(
        sid="TR_s", cid="c", kind="video", source="camera", name="", publisher_sid="PA_p"
    )
    track.codec = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96)
    track.extensions = {1: SDES_MID, 3: ABS_SEND_TIME}
    track.set_simulcast(SimulcastOffer(("q", "h", "f"), 10, None))
    for layer in track.layers:
        layer.ssrc = 201 + layer.index
    downs, sinks = [], []
    for i, (extensions, payload_types, mid) in enumerate(SUBSCRIBERS):
        sink = shared_sink(batch, i, receivers[i])
        down = DownTrack(track, f"PA_{i}")
        track.down_tracks.append(down)
        down.configure(
            sink=sink, out_ssrc=500 + i, mid=mid, payload_types=payload_types, extensions=extensions
        )
        downs.append(down)
        sinks.append(sink)
    for item in layer_scenario():
        if callable(item):
            item(downs)
        else:
            layer, data = item
            track.layers[layer].forward(data, parse_rtp(data))
    return Run(track, downs, sinks, datagrams(batch, downs, sinks, receivers), batch)


def test_simulcast_down_tracks_settled_on_a_layer_go_compiled_across_switches(
    sockets: tuple[list[socket.socket], socket.socket],
) -> None:
    python = run_layers(False, *sockets)
    compiled = run_layers(True, *sockets)
    assert all(layer.copies is None for layer in python.track.layers)
    members = [d for layer in compiled.track.layers if layer.copies for d in layer.copies.members]
    # Settled by the end on layers 0, 1, 0, 0, 1, 2; the long MID stays Python's.
    assert sorted(compiled.downs.index(d) for d in members) == [0, 1, 2, 3, 4, 5]
    assert compiled.batch._stats.fanout_compiled_copies > 1000
    for i in range(len(SUBSCRIBERS)):
        same_output(compiled, python, i, 151)
        x, y = compiled.downs[i], python.downs[i]
        assert x.rewriter is not None and y.rewriter is not None
        assert x.rewriter.state() == y.rewriter.state()
        assert x.layers is not None and y.layers is not None
        assert (x.layers.current, x.layers.floor, x.layers.switches) == (
            y.layers.current,
            y.layers.floor,
            y.layers.switches,
        )
        assert x.layers.munger is not None and y.layers.munger is not None
        assert x.layers.munger.key == y.layers.munger.key != 0
    # Each subscriber's PictureIDs after a switch continue the last ones: the same as Python's.
    for track in (compiled.track, python.track):
        for layer in track.layers:
            layer.last_sender_report = (0x1234_5678_9ABC_DEF0, 3000 * 3000 + layer.index)
    for x, y in zip(compiled.downs, python.downs, strict=True):
        assert x.sender_report() == y.sender_report() is not None
    # A further switch starts from what the compiled loop sent last: the same renumbering.
    for run_ in (compiled, python):
        run_.downs[3].set_layer(2)
        key = layer_packet(2, 3000 * 3 + 0x5000 + 260, 280, True)
        run_.track.layers[2].forward(key, parse_rtp(key))
    assert compiled.downs[3].layers.munger.key == python.downs[3].layers.munger.key  # type: ignore[union-attr]


def test_simulcast_nacks_are_answered_with_the_bytes_first_sent(
    sockets: tuple[list[socket.socket], socket.socket],
) -> None:
    same_nack_answers(run_layers(True, *sockets), run_layers(False, *sockets))


# Transport-cc: subscribers 3 and 5 negotiated it (their extension ids 5 and 7); 5 is also
# paced within a send budget that the scenario's bursts overrun now and then.
# Its rate falls from 2 Mbit/s to 300 kbit/s at input 150 (the pacer queues), and rises to
# 8 Mbit/s at input 215 (the queue drains, the down-track is steady again).
RATES = {0: 2_000_000, 150: 300_000, 215: 8_000_000}


def twcc_run(
    compiled: bool,
    sockets: tuple[list[socket.socket], socket.socket],
    after: Callable[[Run], object] = lambda run: None,
) -> Run:
    now, inputs, budget = [100.0], [0], SendBudget()

    def prepare(downs: list[DownTrack], sinks: list[RtpSink]) -> None:
        for i, ext_id in ((3, 5), (5, 7)):
            sinks[i].transport_sequence = TransportSequence(ext_id, start=65000)
        downs[5].sink = BudgetedSink(sinks[5], budget)

    def tick() -> None:  # before each input packet, 1 ms apart
        if inputs[0] in RATES:
            budget.set_rate(RATES[inputs[0]], now[0])
        inputs[0] += 1
        now[0] += 0.001

    async def scenario() -> Run:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(twcc, "send_clock", lambda: now[0])
            patch.setattr(clock, "now", lambda: now[0])
            result = run(compiled, *sockets, prepare=prepare, tick=tick)
            after(result)
            cast(BudgetedSink, result.downs[5].sink).close()  # its timer never fires
            return result

    return asyncio.run(scenario())


def test_transport_cc_and_paced_subscribers_go_compiled_with_the_same_feedback(
    sockets: tuple[list[socket.socket], socket.socket],
) -> None:
    python = twcc_run(False, sockets)
    compiled = twcc_run(True, sockets)
    copies = compiled.track.copies
    assert copies is not None
    assert compiled.downs[3] in copies.members
    for i in range(len(SUBSCRIBERS)):
        same_output(compiled, python, i, 0)
    for i in (3, 5):
        x, y = compiled.sinks[i].transport_sequence, python.sinks[i].transport_sequence
        assert x is not None and y is not None
        assert x.next[0] == y.next[0] > 65000 + 150  # stamped across the 16-bit wrap
        sent = x.next[0]
        # A feedback naming every packet sent (some lost): the same sizes and send times.
        report = FeedbackReport(
            sent & 0xFFFF,
            0,
            tuple(((n & 0xFFFF), None if n % 7 == 0 else n * 250) for n in range(65000, sent)),
        )
        assert x.resolve(report) == y.resolve(report)
        assert len(x.resolve(report)) == sent - 65000
    # The budget: the same tokens taken, the same packets paced and counted.
    paced = [run_.downs[5].sink for run_ in (compiled, python)]
    assert all(isinstance(sink, BudgetedSink) for sink in paced)
    x_budget, y_budget = (cast(BudgetedSink, sink).budget for sink in paced)
    compiled.downs[5].rewriter  # noqa: B018 (the compiled loop's counts brought back)
    assert (x_budget.offered, x_budget.passed, x_budget.dropped) == (
        y_budget.offered,
        y_budget.passed,
        y_budget.dropped,
    )
    assert list(x_budget.cell) == list(y_budget.cell)
    assert y_budget.offered > 150
    # Subscriber 5's copies went over the budget (paced by Python) and came back.
    assert copies.paced > 0 and compiled.downs[5] in copies.members


def test_a_paced_copy_never_overtakes_what_its_pacer_holds(
    sockets: tuple[list[socket.socket], socket.socket],
) -> None:
    """A retransmission the pacer queued (the budget spent) while the down-track is in the
    compiled loop: the next copy, though the budget has refilled, goes out behind it."""
    order: list[int] = []

    def after(compiled: Run) -> None:
        copies, down = compiled.track.copies, compiled.downs[5]
        assert copies is not None and down in copies.members
        sink = cast(BudgetedSink, down.sink)
        sink.budget.cell[0] = 0.0  # spent: the retransmission waits for the pacer
        assert down.rewriter is not None
        resent = down.rewriter.last_out_seq
        assert down.retransmit((resent,), 1.0) == (1, 0)
        assert sink.pacer.queued > 0
        sink.budget.cell[0] = sink.budget.cell[1]  # refilled before the pacer's timer fired
        data = packet(9000, ext=browser_ext(9000))
        compiled.track.forward(data, parse_rtp(data))
        assert down._copies is None and copies.paced > 0
        assert sink.pacer.queued == 0  # both left, in order
        receiver = sockets[0][5]
        for _ in range(2):
            plain = plaintexts(5, [receiver.recv(2048)])
            order.append(parse_rtp(plain[0]).sequence if plain else -1)
        order.extend((resent, down.rewriter.last_out_seq))

    twcc_run(True, sockets, after)
    assert order[:2] == order[2:] and order[2] != order[3]
