"""The fan-out workers' sans-I/O core (sfu/fanout/wire.py) and a worker driven in-process over
a real socket pair (sfu/fanout/worker.py): message format, share assignment, SRTP index
warming, forwarding, NACKs, pauses and removal."""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Iterator
from typing import Any

import pylibsrtp
import pytest

from loadtest import fanoutbench
from sfu.fanout import wire
from sfu.fanout.worker import Worker, srtp_session, warm, warm_rtcp
from sfu.fastpath import loader
from sfu.rtcp import build_sr
from sfu.rtprewrite import RtpRewriter

KEY = os.urandom(30)
PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
VP8_KEY = b"\x10\x00" + bytes(40)  # S=1, PID 0; VP8 header P bit 0: a keyframe
VP8_DELTA = b"\x10\x01" + bytes(40)
OUT_SSRC = 0x1234


def rtp(seq: int, payload: bytes, ssrc: int = 777, pt: int = 96) -> bytes:
    header = bytes((0x80, pt)) + (seq & 0xFFFF).to_bytes(2, "big") + (seq * 3000).to_bytes(4)
    return header + ssrc.to_bytes(4, "big") + payload


def receiver() -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
    policy.window_size = 1024
    return pylibsrtp.Session(policy)


# --- messages ------------------------------------------------------------------------------------


def test_a_packet_is_its_track_key_and_bytes() -> None:
    datagram = wire.packet_header(0xDEADBEEF) + b"rtp!"
    assert wire.decode(datagram, wire.CONTROL_KINDS) == (0xDEADBEEF, b"rtp!")


def test_control_messages_round_trip_and_only_the_expected_kinds_pass() -> None:
    state = wire.DownState(None, None, True, False, OUT_SSRC, 70000, 0)
    datagram = wire.encode_control(wire.DOWN, 3, "PA_x", 9, state)
    assert wire.decode(datagram, wire.CONTROL_KINDS) == (wire.DOWN, 3, "PA_x", 9, state)
    with pytest.raises(wire.WireError):
        wire.decode(datagram, wire.REPLY_KINDS)  # main accepts no `down` from a worker
    with pytest.raises(wire.WireError):
        wire.encode_control("reboot")


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"P",  # a header cut short
        b"Pabcd",  # a track key and no packet
        b"X" + bytes(10),
        b"C",
        b"C" + b"not a pickle",
        b"C" + pickle.dumps("not a tuple"),
        b"C" + pickle.dumps(()),
        b"C" + pickle.dumps(("reboot", 1)),
    ],
)
def test_anything_else_is_refused(datagram: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(datagram, wire.CONTROL_KINDS)


def test_unwrap_follows_rollovers_and_ignores_late_packets() -> None:
    assert wire.unwrap(65535, 2) == 65538
    assert wire.unwrap(0x2_0005, 0x0003) == 0x2_0005  # older: the index stays
    assert wire.unwrap(0x1_FFF0, 0x0010) == 0x2_0010


def test_shares_go_to_the_least_loaded_live_worker_and_stick() -> None:
    shares = wire.Shares(2)
    assert [shares.assign(s) for s in ("a", "b", "c")] == [0, 1, 0]
    assert shares.assign("a") == 0  # all of one subscriber's down-tracks: one worker
    assert shares.release("a") == 0
    assert shares.assign("d") == 0  # worker 0 has one now, like worker 1
    assert sorted(shares.fail(0)) == ["c", "d"]
    assert shares.assign("e") == 1
    assert shares.fail(1) == ["b", "e"]
    assert shares.assign("f") is None  # nobody left: main forwards
    starting = wire.Shares(2, starting={0, 1})
    assert starting.assign("a") is None  # no worker has said it is up yet
    starting.started(1)
    assert starting.assign("b") == 1
    assert wire.split(range(5), 2) == [[0, 2, 4], [1, 3]]


# --- SRTP index warming ---------------------------------------------------------------------


def test_warm_sequences_step_less_than_half_the_space() -> None:
    assert wire.warm_sequences(0) == []
    assert wire.warm_sequences(5) == [4]
    seqs = wire.warm_sequences(0x3_0010)
    assert seqs[0] == 0x000F and seqs[-1] == 0x000F  # 0xF, 0x400F, ... 0x3_000F
    assert len(seqs) == 13


@pytest.mark.parametrize("wraps", [0, 1, 3])
def test_a_warmed_session_continues_a_stream_the_receiver_has_seen_roll_over(wraps: int) -> None:
    """A new sender (a worker at hand-off, main taking back a dead worker's stream) must send
    with the rollover count the subscriber has counted, or every packet fails authentication."""
    sink = receiver()
    first = srtp_session(KEY, PROFILE)
    start = 65000
    last = start + wraps * 65536 + 200
    for ext in [*range(start, start + 50), *range(last - 50, last + 1)]:
        if ext - start > 60 and ext < last - 50:
            continue
        sink.unprotect(first.protect(rtp(ext, b"x" * 20, OUT_SSRC)))
    # Jumps of 2^15 - 1 keep the receiver's estimate in step: walk it over the gap as the
    # stream itself would have.
    for ext in range(start + 50, last - 50, 0x4000):
        sink.unprotect(first.protect(rtp(ext, b"x", OUT_SSRC)))
    fresh = srtp_session(KEY, PROFILE)
    warm(fresh, OUT_SSRC, last + 100)
    sink.unprotect(fresh.protect(rtp(last + 100, b"y" * 20, OUT_SSRC)))
    if wraps:
        unwarmed = srtp_session(KEY, PROFILE)
        with pytest.raises(pylibsrtp.Error):
            sink.unprotect(unwarmed.protect(rtp(last + 101, b"z" * 20, OUT_SSRC)))


def test_a_warmed_session_continues_the_srtcp_index_of_another_sender() -> None:
    sink = receiver()
    first = srtp_session(KEY, PROFILE)
    report = build_sr(OUT_SSRC, 1, 2, 3, 4)
    for _ in range(5):
        sink.unprotect_rtcp(first.protect_rtcp(report))
    unwarmed = srtp_session(KEY, PROFILE)
    with pytest.raises(pylibsrtp.Error):  # index 0 again: a replay (and a reused keystream)
        sink.unprotect_rtcp(unwarmed.protect_rtcp(report))
    fresh = srtp_session(KEY, PROFILE)
    warm_rtcp(fresh, OUT_SSRC, 5)
    assert sink.unprotect_rtcp(fresh.protect_rtcp(report)) == report


# --- a worker, in-process ------------------------------------------------------------------------


@pytest.fixture(params=["python", "compiled"])
def worker(request: pytest.FixtureRequest) -> Iterator[tuple[Worker, socket.socket, socket.socket]]:
    fanout = None
    if request.param == "compiled":
        fanout = loader.load()
        assert fanout is not None, loader.failure()
    main, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    subscriber = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    subscriber.bind(("127.0.0.1", 0))
    subscriber.settimeout(0.5)
    yield Worker(theirs, {"127.0.0.1": udp}, fanout), main, subscriber
    for sock in (main, theirs, udp, subscriber):
        sock.close()


def setup_down(worker: Worker, main: socket.socket, subscriber: socket.socket) -> None:
    rewriter = RtpRewriter(
        out_ssrc=OUT_SSRC,
        pt_map={96: 100},
        ext_map={},
        mid_ext_id=None,
        mid="0",
        seq_start=65530,
        ts_start=0,
    )
    state = wire.DownState(rewriter, None, True, False, OUT_SSRC)
    remote = subscriber.getsockname()
    main.send(wire.encode_control(wire.SESSION, "sub", KEY, PROFILE, "127.0.0.1", remote))
    main.send(wire.encode_control(wire.TRACK, 7, "video", "video/VP8"))
    main.send(wire.encode_control(wire.DOWN, 1, "sub", 7, state))
    assert worker.drain()


def received(sock: socket.socket, session: pylibsrtp.Session) -> list[tuple[int, int, int]]:
    """(sequence number, payload type, SSRC) of each packet that arrived, decrypted."""
    out: list[tuple[int, int, int]] = []
    while True:
        try:
            data = sock.recv(2048)
        except (TimeoutError, BlockingIOError):
            return out
        plain = session.unprotect(data)
        out.append((int.from_bytes(plain[2:4]), plain[1] & 0x7F, int.from_bytes(plain[8:12])))
        sock.settimeout(0.2)


def last_report(main: socket.socket) -> tuple[Any, ...]:
    """The report the worker sent last (keyframe requests before it are skipped)."""
    main.setblocking(False)
    messages = []
    while True:
        try:
            messages.append(wire.decode(main.recv(1 << 20), wire.REPLY_KINDS))
        except BlockingIOError:
            main.setblocking(True)
            return [m for m in messages if m[0] == wire.REPORT][-1]


def feed(worker: Worker, main: socket.socket, packets: list[bytes]) -> None:
    header = wire.packet_header(7)
    for packet in packets:
        main.send(header + packet)
    assert worker.drain()


def test_a_worker_rewrites_protects_sends_resends_pauses_and_drops(
    worker: tuple[Worker, socket.socket, socket.socket],
) -> None:
    w, main, subscriber = worker
    setup_down(w, main, subscriber)
    session = receiver()
    # Video waits for a keyframe (and asks main for one, once per interval).
    feed(w, main, [rtp(1, VP8_DELTA), rtp(2, VP8_DELTA)])
    assert received(subscriber, session) == []
    assert wire.decode(main.recv(4096), wire.REPLY_KINDS) == (wire.KEYFRAME, 7)
    feed(w, main, [rtp(seq, VP8_KEY if seq == 3 else VP8_DELTA) for seq in range(3, 13)])
    got = received(subscriber, session)
    assert [s for s, _, _ in got] == [(65530 + i) & 0xFFFF for i in range(10)]
    assert {(pt, ssrc) for _, pt, ssrc in got} == {(100, OUT_SSRC)}
    # A NACK main passed on: resent from the worker's cache (a receiver of its own: SRTP's
    # replay check refuses a packet twice, which is why real subscribers negotiate RTX).
    main.send(wire.encode_control(wire.NACK, 1, (65531, 2)))
    assert w.drain()
    assert [s for s, _, _ in received(subscriber, receiver())] == [65531, 2]
    assert w.counters.retransmissions == 2
    # The report carries the extended sequence number (a rollover happened) and counters.
    w.report()
    kind, states, counters = wire.decode(main.recv(1 << 20), wire.REPLY_KINDS)
    assert kind == wire.REPORT and states[1].extended_seq == 65536 + 3
    assert counters.packets_out == 10 and counters.retransmissions == 2
    assert counters.bytes_out == 10 * len(rtp(3, VP8_KEY))
    # Paused by congestion control: nothing; resumed: from a keyframe on.
    main.send(wire.encode_control(wire.PAUSE, 1, True, True))
    feed(w, main, [rtp(13, VP8_KEY), rtp(14, VP8_DELTA)])
    assert received(subscriber, session) == []
    main.send(wire.encode_control(wire.PAUSE, 1, False, True))
    feed(w, main, [rtp(15, VP8_DELTA), rtp(16, VP8_KEY)])
    assert len(received(subscriber, session)) == 1
    # Congestion control probes: padding packets follow each media packet.
    main.send(wire.encode_control(wire.PADDING, 1, 2))
    feed(w, main, [rtp(17, VP8_DELTA)])
    assert len(received(subscriber, session)) == 3
    w.report()
    assert last_report(main)[1][1].padding_sent > 0
    # Removed: its copies stop; junk from main is counted, not fatal.
    main.send(wire.encode_control(wire.UNDOWN, 1))
    main.send(b"junk")
    feed(w, main, [rtp(18, VP8_KEY)])
    assert received(subscriber, session) == []
    assert w.stats.dropped["malformed"] == 1


def test_a_worker_stops_when_main_closes_its_end(
    worker: tuple[Worker, socket.socket, socket.socket],
) -> None:
    w, main, _ = worker
    main.shutdown(socket.SHUT_RDWR)
    assert not w.drain()


def test_the_saturation_benchmark_runs_at_ci_size() -> None:
    """`python -m loadtest.fanoutbench`, small: real worker processes forward, and say so."""
    results = fanoutbench.run(8, [1, 2], 1.0, "python")
    assert [c["workers"] for c in results["cells"]] == [1, 2]
    assert all(
        c["output_pps"] > 0 and len(c["per_worker_pps"]) == c["workers"] for c in results["cells"]
    )
    assert "output pps" in fanoutbench.format_results(results)
