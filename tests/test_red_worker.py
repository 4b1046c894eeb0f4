"""RED audio sent by a fan-out worker (sfu/fanout/, sfu/redtrack.py): one scenario of a RED
publisher forwarded by the main process alone, and by the main process handing every
down-track to a worker driven in-process over a real socket pair, must give every subscriber
(RED ones with the publisher's Opus payload type and with their own, a plain one) the same
datagrams, counters, Sender Reports and NACK answers, main sending none of them. A worker's
RED down-tracks taken back by main go on with RED, decryptable with the subscriber's SRTP
context. Inputs: test_red_compiled's (plain Opus from the RED publisher, two-byte extension
blocks, padding, malformed RED, reordering), a mute, and probe padding."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from typing import Any

import pylibsrtp
import pytest

from loadtest import fanoutbench
from sfu.fanout import wire
from sfu.fanout.handoff import TAKEOVER_SKIP, take_back
from sfu.fanout.remote import RemoteDown, TrackFeed, WorkerHandle, changed
from sfu.fanout.worker import Worker
from sfu.fastpath import loader
from sfu.fastpath.batch import FanoutBatch
from sfu.forwarder import SDES_MID, CodecInfo, DownTrack, PublishedTrack
from sfu.ingress import Ingress
from sfu.internals import RtpSink
from sfu.red import read_red, wrap
from sfu.rtcp import parse_rtcp
from sfu.rtp import parse_rtp
from sfu.stats import DropReason, Stats
from tests.test_red_compiled import (
    CODEC,
    OPUS,
    RED,
    SSRC,
    block_headers_name_their_opus,
    frame,
    input_packets,
    packet,
)
from tests.test_steady_fanout import (  # noqa: F401 (`sockets`: the fixture, 7 receivers)
    AUDIO_LEVEL,
    key,
    plaintexts,
    shared_sink,
    sockets,
    srtp,
)

PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80  # what srtp(i, ...) uses
TRACK_KEY = 1
# Per subscriber: RED's Opus payload type (None: plain Opus), payload types, extensions, MID.
SUBSCRIBERS: list[tuple[int | None, dict[int, int], dict[str, int], str]] = [
    (OPUS, {OPUS: OPUS, RED: RED}, {SDES_MID: 1, AUDIO_LEVEL: 3}, "0"),
    (96, {OPUS: 96, RED: 63}, {SDES_MID: 4, AUDIO_LEVEL: 2}, "audio-1"),
    (100, {OPUS: 100, RED: 101}, {SDES_MID: 1}, "a-mid-of-twenty-bytes"),
    (None, {OPUS: 96}, {SDES_MID: 1, AUDIO_LEVEL: 3}, "3"),
]
RED_SUBSCRIBERS = [i for i, s in enumerate(SUBSCRIBERS) if s[0] is not None]
PLAIN = 3
# Before input n: probe padding on a RED and the plain subscriber, and a mute.
PADDING = {40: 1, 45: 0}
MUTE = {90: True, 96: False}
NTP = 0x1234_5678_9ABC_DEF0


@dataclass
class Run:
    track: PublishedTrack
    downs: list[DownTrack]
    sinks: list[RtpSink]
    stats: Stats
    ingress: Ingress
    batch: FanoutBatch
    receivers: list[socket.socket]
    worker: Worker | None = None
    handle: WorkerHandle | None = None
    main_end: socket.socket | None = None
    received: list[list[bytes]] = field(default_factory=list)
    next_seq: int = 0  # the publisher's, after the scenario


def room(receivers: list[socket.socket], sender: socket.socket) -> Run:
    """The main process's side: a RED track, its ingress, and the subscribers' down-tracks."""
    module = loader.load()
    assert module is not None, loader.failure()
    random.seed(33)  # the same rewriter starts in both runs
    stats = Stats()
    batch = FanoutBatch(module, sender.fileno(), stats)
    track = PublishedTrack(
        sid="TR_a", cid="a", kind="audio", source="microphone", name="", publisher_sid="PA_p"
    )
    ingress = Ingress({"TR_a": track}, stats)
    ingress.bind(track, "0", SSRC, None, CODEC, {1: SDES_MID, 3: AUDIO_LEVEL})
    assert track.red is not None
    downs, sinks = [], []
    for i, (opus_pt, payload_types, extensions, mid) in enumerate(SUBSCRIBERS):
        sink = shared_sink(batch, i, receivers[i])
        down = DownTrack(track, f"PA_{i}")
        down.configure(
            sink=sink, out_ssrc=900 + i, mid=mid, payload_types=payload_types, extensions=extensions
        )
        if opus_pt is None:
            track.down_tracks.append(down)
        else:
            track.red.attach(down, opus_pt)
        downs.append(down)
        sinks.append(sink)
    return Run(track, downs, sinks, stats, ingress, batch, receivers[: len(SUBSCRIBERS)])


def hand_off(
    run: Run, receivers: list[socket.socket], sender: socket.socket, compiled: bool
) -> None:
    """What FanoutPool._hand_off does for each down-track, to an in-process worker."""
    fanout = loader.load() if compiled else None
    main_end, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    worker = Worker(theirs, {"127.0.0.1": sender}, fanout)
    handle = WorkerHandle(0, None, main_end)  # type: ignore[arg-type]
    feed = TrackFeed(TRACK_KEY, run.track, run.stats)
    run.track.feed = feed
    feed.add(handle)
    red = run.track.red
    assert red is not None
    for i, down in enumerate(run.downs):
        sid = down.subscriber_sid
        handle.send(wire.SESSION, sid, key(i), PROFILE, "127.0.0.1", receivers[i].getsockname())
        state = wire.DownState(down.rewriter, None, False, False, down.out_ssrc or 0)
        handle.send(wire.DOWN, 10 + i, sid, TRACK_KEY, state, red.opus.get(down))
        down.remote = RemoteDown(handle, 10 + i, state)
        changed(down)
    assert worker.drain()
    run.worker, run.handle, run.main_end = worker, handle, main_end


def drain(run: Run) -> None:
    if run.worker is not None:
        assert run.worker.drain()


def forward_scenario(run: Run) -> None:
    seq = 2000
    for n in range(300):
        if n in PADDING:
            for i in (0, PLAIN):
                if run.handle is None:
                    run.downs[i].padding = PADDING[n]
                else:
                    run.handle.send(wire.PADDING, 10 + i, PADDING[n])
        if n in MUTE:
            run.track.muted = MUTE[n]
        for data in input_packets(n, seq):
            run.ingress.on_rtp(data)
            if n % 7 == 0:  # the worker reads bursts of fed packets too
                drain(run)
        seq += 2 if n % 11 in (7, 8) else 1
    drain(run)
    run.batch.flush()
    run.received = [everything(sock) for sock in run.receivers]
    run.next_seq = seq


def everything(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting (loopback delivers within the sender's system call)."""
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(2048))
        except BlockingIOError:
            sock.settimeout(5)
            return out


def reports(run: Run) -> tuple[dict[int, wire.DownState], wire.WorkerCounters]:
    """The worker's report, as main reads it."""
    assert run.worker is not None and run.main_end is not None
    run.worker.report()
    run.main_end.setblocking(False)
    found: Any = None
    while True:
        try:
            message = wire.decode(run.main_end.recv(1 << 20), wire.REPLY_KINDS)
        except BlockingIOError:
            break
        if message[0] == wire.REPORT:
            found = message
    assert found is not None
    return found[1], found[2]


def worker_run(receivers: list[socket.socket], sender: socket.socket) -> Run:
    """The scenario through a worker with the compiled fan-out."""
    run = room(receivers, sender)
    hand_off(run, receivers, sender, True)
    forward_scenario(run)
    return run


def both_runs(
    receivers: list[socket.socket], sender: socket.socket, compiled: bool
) -> tuple[Run, Run]:
    main = room(receivers, sender)
    forward_scenario(main)
    worker = room(receivers, sender)
    hand_off(worker, receivers, sender, compiled)
    forward_scenario(worker)
    return main, worker


@pytest.mark.parametrize("compiled", [False, True], ids=["worker-python", "worker-compiled"])
def test_a_worker_sends_red_subscribers_what_main_sends(
    sockets: tuple[list[socket.socket], socket.socket],  # noqa: F811 (imported fixture)
    compiled: bool,
) -> None:
    main, worker = both_runs(*sockets, compiled)
    assert worker.worker is not None and worker.handle is not None
    red = worker.worker.tracks[TRACK_KEY].red
    assert red is not None and len(red.downs) == len(RED_SUBSCRIBERS)
    if compiled:  # the worker's own compiled RED loop took the steady ones
        assert red.copies is not None and worker.worker.stats.fanout_compiled_red_copies > 200
    for i in range(len(SUBSCRIBERS)):
        assert worker.received[i] == main.received[i], f"subscriber {i}"
        assert len(main.received[i]) > 200
        assert worker.sinks[i].sent_packets == 0  # main sent none of them
    states, counters = reports(worker)
    # The worker's counters: every media copy main would have sent, those to RED subscribers
    # apart (probe padding is no media copy).
    red_sent = sum(len(main.received[i]) for i in RED_SUBSCRIBERS)
    assert counters.red_packets == red_sent
    assert counters.packets_out == main.stats.packets_out < red_sent + len(main.received[PLAIN])
    assert worker.stats.packets_out == 0 and worker.stats.red_received == main.stats.red_received
    # Malformed RED is counted by main, and never reaches the worker.
    assert worker.stats.dropped[DropReason.MALFORMED_RED.value] == 27
    assert worker.worker.stats.dropped[DropReason.MALFORMED_RED.value] == 0
    for i, down in enumerate(main.downs):
        reference = down.rewriter
        assert reference is not None and states[10 + i].rewriter.state() == reference.state()
        # Audio keeps no retransmission cache: a NACK gets nothing, from either.
        assert down.retransmit((reference.last_out_seq,), 1.0) == (0, 0)
        worker.handle.send(wire.NACK, 10 + i, (reference.last_out_seq,))
    drain(worker)
    assert [everything(sock) for sock in worker.receivers] == [[]] * len(SUBSCRIBERS)
    assert reports(worker)[1].retransmissions == 0
    # Sender Reports: main's figures for each subscriber's SSRC, from the worker.
    for run in (main, worker):
        run.track.on_sender_report(NTP, 2000 * 960, 0.0)
    drain(worker)
    worker.worker.sender_reports()
    for i, sock in enumerate(worker.receivers):
        (datagram,) = everything(sock)
        assert srtp(i, False).unprotect_rtcp(datagram) == main.downs[i].sender_report()
        (report,) = parse_rtcp(main.downs[i].sender_report() or b"")
        assert report.ssrc == 900 + i  # type: ignore[union-attr]


def test_block_headers_name_each_subscribers_opus_payload_type(
    sockets: tuple[list[socket.socket], socket.socket],  # noqa: F811 (imported fixture)
) -> None:
    run = worker_run(*sockets)
    block_headers_name_their_opus(SUBSCRIBERS, run.received)


def test_main_takes_a_dead_workers_red_subscribers_back_and_they_decrypt(
    sockets: tuple[list[socket.socket], socket.socket],  # noqa: F811 (imported fixture)
) -> None:
    receivers = sockets[0]
    run = worker_run(*sockets)
    states, _ = reports(run)
    # The worker is gone: what FanoutPool._failed does with its last report.
    run.track.feed = None
    last = [states[10 + i].rewriter.last_out_seq for i in range(len(SUBSCRIBERS))]
    for i, down in enumerate(run.downs):
        take_back(down, states[10 + i], run.sinks[i])
    for n in range(40):
        seq = run.next_seq + n
        run.ingress.on_rtp(packet(seq, wrap(OPUS, frame(seq), [(OPUS, 960, frame(seq - 1))])))
    run.batch.flush()
    for i, (opus_pt, payload_types, _, _) in enumerate(SUBSCRIBERS):
        later = everything(receivers[i])
        run.downs[i].rewriter  # noqa: B018 (brings the sink's counters up to date)
        assert len(later) == 40 and run.sinks[i].sent_packets == 40, f"subscriber {i}"
        # One receiver context all along: the worker's packets, then main's past the skip,
        # every one of them decrypted (SRTP's index went on from the worker's).
        before = len(plaintexts(i, run.received[i]))
        plain = plaintexts(i, run.received[i] + later)
        assert len(plain) == before + 40
        first = parse_rtp(plain[before]).sequence
        assert (first - last[i]) & 0xFFFF == TAKEOVER_SKIP + 1
        wanted = payload_types[RED] if opus_pt is not None else payload_types[OPUS]
        assert {parse_rtp(p).payload_type for p in plain[before:]} == {wanted}


def test_the_red_worker_benchmark_runs_at_ci_size() -> None:
    """`python -m loadtest.fanoutbench --red`, small: real worker processes send every copy as
    RED, block headers renamed, none refused."""
    results = fanoutbench.run(8, [1, 2], 0.5, "compiled", red=True)
    assert results["track"] == "RED audio"
    for cell in results["cells"]:
        assert cell["output_pps"] > 0 and cell["red_pps"] == cell["output_pps"]
        assert cell["send_failed"] == 0
    assert "red pps" in fanoutbench.format_results(results)


def test_a_renegotiated_codec_reaches_the_worker_before_the_next_packet(
    sockets: tuple[list[socket.socket], socket.socket],  # noqa: F811 (imported fixture)
) -> None:
    """The publisher's Opus renumbered (a new answer): the worker's split follows at once, so
    its RED subscribers' block headers keep naming their own Opus. (The plain subscriber's
    rewriter maps the Opus payload type it was configured with, in main as in a worker.)"""
    receivers = sockets[0]
    run = worker_run(*sockets)
    assert run.worker is not None
    run.track.codec = CodecInfo("audio/opus", 48000, 109, red_payload_type=RED)
    data = packet(run.next_seq, wrap(109, b"new", [(109, 960, b"old")]))
    run.ingress.on_rtp(data)
    drain(run)
    assert run.worker.tracks[TRACK_KEY].codec == run.track.codec
    for i in RED_SUBSCRIBERS:
        opus_pt = SUBSCRIBERS[i][0]
        (datagram,) = everything(receivers[i])
        plain = srtp(i, False)
        for earlier in run.received[i]:  # the receiver's context up to here
            try:
                plain.unprotect(earlier)
            except pylibsrtp.Error:
                pass
        out = plain.unprotect(datagram)
        info = parse_rtp(out)
        red = read_red(out, info.payload_start, info.payload_end)
        assert red is not None and red.primary_pt == opus_pt
        assert [b[0] for b in red.redundant] == [opus_pt]
