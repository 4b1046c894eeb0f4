"""A fan-out worker process: forwards the packets the main process feeds it to its share of the
subscribers, from the shared UDP port (`python -m sfu.fanout.worker`, started by
sfu/fanout/pool.py).

It holds, per subscriber, an SRTP sending session made from the keys of the subscriber's DTLS
handshake, and per down-track the forwarder's own `DownTrack` (rewriter, keyframe wait, NACK
cache, RTX), bound to a sink that sends on a duplicate of the shared socket: the copies leave
from the port the subscriber's ICE pair names. A track the publisher sends RED on comes as its
packets came and is split here as in main, by the track's own `RedFanout` (sfu/redtrack.py):
RED to the subscribers that negotiated it, the primary Opus to the others. A burst of fed
packets is read in one go and its copies leave in one `sendmmsg` (the compiled fan-out) or one
`sendto` each (pure Python).

Every `REPORT_INTERVAL` it reports its counters and each down-track's sending state (sfu/fanout/
wire.py `DownState`), so the main process can continue the streams itself if the worker dies.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import selectors
import signal
import socket
import sys
import time
from types import ModuleType

import pylibsrtp

from sfu import gcpolicy
from sfu.fanout import wire
from sfu.fastpath.batch import Destination, FanoutBatch
from sfu.forwarder import CodecInfo, DownTrack, PublishedTrack
from sfu.internals.egress import SrtpProtector
from sfu.redtrack import RedFanout
from sfu.rtcp import build_sr
from sfu.rtp import MalformedPacket, parse_rtp
from sfu.stats import DropReason, Stats

log = logging.getLogger("keyroom.fanout")

REPORT_INTERVAL = 0.25
SENDER_REPORT_INTERVAL = 1.0
KEYFRAME_INTERVAL = 0.2  # a track's keyframe requests to main, at most one per this
READ_BURST = 256  # fed datagrams read before the batch is flushed


def srtp_session(key_and_salt: bytes, profile: int) -> pylibsrtp.Session:
    """A sending session with the DTLS handshake's keys, as aiortc makes its own."""
    policy = pylibsrtp.Policy(
        key=key_and_salt, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile
    )
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return pylibsrtp.Session(policy)


def warm(session: pylibsrtp.Session, ssrc: int, target: int) -> None:
    """Bring `session`'s fresh stream for `ssrc` to the index before `target` (wire.warm_sequences):
    dummy packets are protected, never sent."""
    for seq in wire.warm_sequences(target):
        header = bytes((0x80, 0)) + seq.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big")
        session.protect(header + bytes(4))


def warm_rtcp(session: pylibsrtp.Session, ssrc: int, count: int) -> None:
    """Move `session`'s SRTCP index for `ssrc` past `count` packets another sender sent with
    the same keys (an index used twice would repeat the keystream)."""
    dummy = build_sr(ssrc, 0, 0, 0, 0)
    for _ in range(count):
        session.protect_rtcp(dummy)


class Subscriber:
    """One subscriber's sending side in this worker: its SRTP session and where it is."""

    __slots__ = ("session", "sock", "remote", "batch", "destination", "protector", "warmed")

    def __init__(self, session: pylibsrtp.Session) -> None:
        self.session = session
        self.sock: socket.socket | None = None
        self.remote: tuple[str, int] = ("", 0)
        self.batch: FanoutBatch | None = None
        self.destination: Destination | None = None
        self.protector = SrtpProtector(session)
        self.warmed: set[int] = set()  # SSRCs whose stream exists in the session

    def move(self, sock: socket.socket, remote: tuple[str, int], batch: FanoutBatch | None) -> None:
        self.sock, self.remote, self.batch = sock, remote, batch
        self.destination = batch.destination(self.session, remote) if batch is not None else None

    def send(self, data: bytes) -> bool:
        batch, destination = self.batch, self.destination
        if batch is not None and destination is not None:
            return batch.add(destination, data)
        protected = self.protector.protect(data)
        if protected is None or self.sock is None:
            return False
        try:
            self.sock.sendto(protected, self.remote)
        except OSError:
            return False
        return True

    def steady(self) -> tuple[FanoutBatch, Destination, None] | None:
        """Where the compiled per-copy loop may queue this subscriber's copies itself
        (sfu/fastpath/steady.py): its batch, while it has one."""
        batch, destination = self.batch, self.destination
        return None if batch is None or destination is None else (batch, destination, None)

    def send_rtcp(self, data: bytes) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.sendto(self.session.protect_rtcp(data), self.remote)
        except (OSError, pylibsrtp.Error):
            return False
        return True


class Worker:
    """The worker's state and message handling; `run` is its loop."""

    def __init__(
        self, channel: socket.socket, sockets: dict[str, socket.socket], fanout: ModuleType | None
    ) -> None:
        self.channel = channel
        self.sockets = sockets
        self.stats = Stats()
        self.batches: dict[str, FanoutBatch] = {}
        if fanout is not None:
            for host, sock in sockets.items():
                self.batches[host] = FanoutBatch(fanout, sock.fileno(), self.stats)
        self.subscribers: dict[str, Subscriber] = {}
        self.tracks: dict[int, PublishedTrack] = {}
        self.downs: dict[int, tuple[DownTrack, Subscriber]] = {}
        # Down key -> extended last sequence numbers sent on its media and RTX SSRCs.
        self.extended: dict[int, tuple[int, int]] = {}
        self.rtcp_sent: dict[int, int] = {}  # down key -> Sender Reports sent
        self.counters = wire.WorkerCounters()
        self._keyframe_asked: dict[int, float] = {}

    # --- messages from main ----------------------------------------------------------------

    def handle(self, datagram: bytes) -> None:
        message = wire.decode(datagram, wire.CONTROL_KINDS)
        if len(message) == 2 and isinstance(message[0], int):
            track = self.tracks.get(message[0])
            if track is not None:
                self._forward(track, message[1])
            return
        kind, *args = message
        getattr(self, "_on_" + kind)(*args)

    def _forward(self, track: PublishedTrack, data: bytes) -> None:
        try:
            info = parse_rtp(data)
        except MalformedPacket:
            self.stats.drop(DropReason.MALFORMED)
            return
        counters, before = self.counters, track.counters.packets_out
        sent = (track.red or track).forward(data, info)
        if sent:
            counters.packets_out += sent
            counters.bytes_out += sent * len(data)
            # The track's own count is the plain copies; the rest went out as RED.
            counters.red_packets += sent - (track.counters.packets_out - before)

    def _on_session(
        self, sid: str, key: bytes, profile: int, host: str, remote: tuple[str, int]
    ) -> None:
        subscriber = Subscriber(srtp_session(key, profile))
        self.subscribers[sid] = subscriber
        self._on_address(sid, host, remote)

    def _on_address(self, sid: str, host: str, remote: tuple[str, int]) -> None:
        subscriber = self.subscribers.get(sid)
        sock = self.sockets.get(host)
        if subscriber is not None and sock is not None:
            subscriber.move(sock, tuple(remote), self.batches.get(host))  # type: ignore[arg-type]

    def _on_unsession(self, sid: str) -> None:
        self.subscribers.pop(sid, None)

    def _on_track(self, key: int, kind: str, mime_type: str) -> None:
        track = PublishedTrack(
            sid=str(key), cid="", kind=kind, source="", name="", publisher_sid=""
        )
        track.codec = CodecInfo(mime_type, 90000, 0)
        track.request_keyframe = lambda: self._ask_keyframe(key)
        self.tracks[key] = track

    def _on_codec(self, key: int, codec: CodecInfo | None) -> None:
        track = self.tracks.get(key)
        if track is None or codec is None:
            return
        track.codec = codec
        if codec.red_payload_type is not None and track.red is None:
            # As the ingress makes it in main (kept once made: its subscribers stay attached).
            track.red = RedFanout(track, self.stats)

    def _on_untrack(self, key: int) -> None:
        self.tracks.pop(key, None)

    def _on_down(
        self, key: int, sid: str, track_key: int, state: wire.DownState, opus: int | None = None
    ) -> None:
        track, subscriber = self.tracks.get(track_key), self.subscribers.get(sid)
        if track is None or subscriber is None:
            return
        down = DownTrack(track, sid)
        down.rewriter, down.rtx = state.rewriter, state.rtx
        down.out_ssrc = state.out_ssrc
        down.waiting_for_keyframe, down.paused = state.waiting_for_keyframe, state.paused
        down.sink = subscriber
        # A stream main started (or an earlier worker): this session continues its SRTP index.
        streams = ((down.out_ssrc, state.extended_seq), (_rtx_ssrc(down), state.rtx_extended_seq))
        for ssrc, target in streams:
            if ssrc is not None and ssrc not in subscriber.warmed:
                subscriber.warmed.add(ssrc)
                if target:
                    warm(subscriber.session, ssrc, target + 1)
        # A stream new to SRTP starts at index = its first sequence number (no rollover yet).
        media = state.extended_seq or state.rewriter.last_out_seq
        rtx = (state.rtx_extended_seq or (down.rtx.next_seq - 1) & 0xFFFF) if down.rtx else 0
        self.extended[key] = (media, rtx)
        self.rtcp_sent[key] = state.sender_reports
        self.downs[key] = (down, subscriber)
        if opus is not None and track.red is not None:
            track.red.attach(down, opus)  # a RED subscriber: its blocks name `opus`
        else:
            track.down_tracks.append(down)

    def _on_undown(self, key: int) -> None:
        entry = self.downs.pop(key, None)
        self.extended.pop(key, None)
        self.rtcp_sent.pop(key, None)
        if entry is None:
            return
        down, track = entry[0], entry[0].track
        if down in track.down_tracks:
            track.down_tracks.remove(down)
        if track.red is not None:
            track.red.detach(down)

    def _on_nack(self, key: int, sequence_numbers: tuple[int, ...]) -> None:
        entry = self.downs.get(key)
        if entry is None:
            return
        sent, refused = entry[0].retransmit(sequence_numbers, time.monotonic())
        self.counters.retransmissions += sent
        self.counters.nack_limited += refused

    def _on_pause(self, key: int, paused: bool, waiting: bool) -> None:
        entry = self.downs.get(key)
        if entry is not None:
            entry[0].paused, entry[0].waiting_for_keyframe = paused, waiting

    def _on_padding(self, key: int, padding: int) -> None:
        entry = self.downs.get(key)
        if entry is not None:
            entry[0].padding = max(0, min(int(padding), 16))

    def _on_restart(self, track_key: int) -> None:
        track = self.tracks.get(track_key)
        if track is not None:
            for down in track.down_tracks:
                down.waiting_for_keyframe = True

    def _on_sr(self, track_key: int, ntp: int, rtp_timestamp: int) -> None:
        track = self.tracks.get(track_key)
        if track is not None:
            track.last_sender_report = (ntp, rtp_timestamp)

    # --- to main ---------------------------------------------------------------------------

    def _ask_keyframe(self, key: int) -> None:
        now = time.monotonic()
        if now - self._keyframe_asked.get(key, -KEYFRAME_INTERVAL) >= KEYFRAME_INTERVAL:
            self._keyframe_asked[key] = now
            self._reply(wire.KEYFRAME, key)

    def report(self) -> None:
        states: dict[int, wire.DownState] = {}
        for key, (down, _) in self.downs.items():
            media, rtx = self.extended[key]
            if down.rewriter is not None:
                media = wire.unwrap(media, down.rewriter.last_out_seq)
            if down.rtx is not None:
                rtx = wire.unwrap(rtx, (down.rtx.next_seq - 1) & 0xFFFF)
            self.extended[key] = (media, rtx)
            states[key] = wire.DownState(
                down.rewriter,
                down.rtx,
                down.waiting_for_keyframe,
                down.paused,
                down.out_ssrc or 0,
                media,
                rtx,
                self.rtcp_sent[key],
                down.padding_sent,
            )
        counters = self.counters
        counters.send_failed = self.stats.dropped[DropReason.SEND_FAILED.value]
        counters.at = time.monotonic()
        self._reply(wire.REPORT, states, counters)

    def sender_reports(self) -> None:
        for key, (down, subscriber) in self.downs.items():
            report = down.sender_report()
            if report is not None and subscriber.send_rtcp(report):
                self.counters.sender_reports += 1
                self.rtcp_sent[key] = self.rtcp_sent.get(key, 0) + 1

    def _reply(self, kind: str, *args: object) -> None:
        # Full: main is behind, the next report supersedes this one. Gone: the loop's next
        # read sees the end of file and returns.
        with contextlib.suppress(OSError):
            self.channel.send(wire.encode_control(kind, *args))

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.channel, selectors.EVENT_READ)
        next_report = time.monotonic() + REPORT_INTERVAL
        next_sr = time.monotonic() + SENDER_REPORT_INTERVAL
        while True:
            if selector.select(max(0.0, next_report - time.monotonic())) and not self.drain():
                return  # main closed its end: it exited
            now = time.monotonic()
            if now >= next_report:
                next_report = now + REPORT_INTERVAL
                self.report()
            if now >= next_sr:
                next_sr = now + SENDER_REPORT_INTERVAL
                self.sender_reports()

    def drain(self) -> bool:
        """Handle what is waiting (a burst at most); False once main has gone."""
        batches = self.batches.values()
        for batch in batches:
            batch.depth += 1
        try:
            for _ in range(READ_BURST):
                try:
                    datagram = self.channel.recv(65536)
                except BlockingIOError:
                    break
                if not datagram:
                    return False
                try:
                    self.handle(datagram)
                except wire.WireError:
                    self.stats.drop(DropReason.MALFORMED)
        finally:
            for batch in batches:
                batch.depth -= 1
                batch.flush()
        return True


def _rtx_ssrc(down: DownTrack) -> int | None:
    return down.rtx.ssrc if down.rtx is not None else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfu.fanout.worker")
    parser.add_argument("--channel", type=int, required=True, help="inherited SEQPACKET fd")
    parser.add_argument("--udp", action="append", default=[], metavar="HOST=FD")
    parser.add_argument("--fanout", choices=("compiled", "python"), default="python")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="fanout worker: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # main's exit (PDEATHSIG) ends it quietly
    channel = socket.socket(fileno=args.channel)
    channel.setblocking(False)
    sockets: dict[str, socket.socket] = {}
    for item in args.udp:
        host, _, fd = item.rpartition("=")
        sockets[host] = socket.socket(fileno=int(fd))
    fanout = None
    if args.fanout == "compiled":
        from sfu.fastpath import loader

        fanout = loader.load()
    gcpolicy.apply()
    Worker(channel, sockets, fanout).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
