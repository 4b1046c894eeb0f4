"""The main process's side of the fan-out workers (`[rtc] fanout_workers = N`).

Main keeps signaling, ICE, DTLS and all RTCP for every participant. Once a subscriber's DTLS is
up, each of its single-layer down-tracks is handed to the worker that owns the subscriber
(`wire.Shares`): its sending state and the subscriber's SRTP keys go over, and from then on the
publisher's ingress feeds each input packet once per worker that has subscribers of the track
(`TrackFeed`, called by `PublishedTrack.forward`) instead of rewriting it per subscriber.

NACKs, pauses, unmutes and Sender Report data reach the worker as control messages; the worker
keeps the NACK cache and sends the Sender Reports of its streams. A worker that exits (reads as
end of file on its socket) is never waited for: each of its down-tracks is continued by main
from the worker's last report, a few thousand sequence numbers further on so none is reused, at
a keyframe, with main's SRTP stream warmed to the same index.

Simulcast tracks and connections whose pair is not on the shared port (TURN) stay in main.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import subprocess
import sys
from typing import Any

from aiortc.rtcdtlstransport import RTCDtlsTransport, State

from sfu.fanout import wire
from sfu.fanout.worker import warm, warm_rtcp
from sfu.forwarder import DownTrack, PublishedTrack
from sfu.internals.egress import RtpSink
from sfu.internals.sharedport import SharedPort, SharedTransport
from sfu.stats import DropReason, Stats
from sfu.workers import _die_with_parent

log = logging.getLogger("keyroom.fanout")

# Sequence numbers a taken-back stream skips: more than a worker sends on one down-track
# between two reports, far less than half the sequence space. Likewise Sender Reports (one a
# second per down-track, reports four a second).
TAKEOVER_SKIP = 4096
TAKEOVER_RTCP_SKIP = 8
CHANNEL_BUFFER = 8 * 1024 * 1024
ADDRESS_CHECK = 0.5  # seconds between checks that remote subscribers' ICE pairs have not moved

_current: FanoutPool | None = None


def current() -> FanoutPool | None:
    """The process's pool, when `[rtc] fanout_workers` is set."""
    return _current


def srtp_keys(dtls: RTCDtlsTransport) -> tuple[bytes, int] | None:
    """The sending key and salt, and the libsrtp profile, of a connected DTLS transport (what
    aiortc's `_setup_srtp` derived: the exporter may be asked again)."""
    ssl = dtls._ssl
    if ssl is None:
        return None
    selected = ssl.get_selected_srtp_profile()
    for profile in dtls._srtp_profiles:
        if profile.openssl_profile == selected:
            break
    else:
        return None
    view = ssl.export_keying_material(
        b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length)
    )
    tx: bytes = profile.get_key_and_salt(view, 1 if dtls._role == "server" else 0)
    return tx, profile.libsrtp_profile


def spawn_worker(udp: dict[str, int], fanout: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """A worker process sending on the UDP sockets `udp` (local host -> fd), and main's end of
    its socket pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (ours, theirs):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL_BUFFER)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CHANNEL_BUFFER)
    command = [sys.executable, "-m", "sfu.fanout.worker", "--channel", str(theirs.fileno())]
    command += [f"--udp={host}={fd}" for host, fd in udp.items()]
    command += ["--fanout", fanout]
    process = subprocess.Popen(
        command, pass_fds=(theirs.fileno(), *udp.values()), preexec_fn=_die_with_parent
    )
    theirs.close()
    return process, ours


class WorkerHandle:
    """One worker process and its socket."""

    def __init__(self, index: int, process: subprocess.Popen[bytes], channel: socket.socket):
        self.index = index
        self.process = process
        self.channel = channel
        self.alive = True
        self.sessions: set[str] = set()
        self.tracks: dict[int, int] = {}  # track key -> down-tracks of it here
        self.counters = wire.WorkerCounters()

    def send(self, kind: str, *args: object) -> None:
        if self.alive:
            with contextlib.suppress(OSError):  # a dead worker is handled by its reader
                self.channel.send(wire.encode_control(kind, *args))


class TrackFeed:
    """Called by `PublishedTrack.forward` with each packet: one datagram per worker."""

    __slots__ = ("key", "header", "workers", "_channels", "_stats")

    def __init__(self, key: int, stats: Stats) -> None:
        self.key = key
        self.header = wire.packet_header(key)
        self.workers: list[WorkerHandle] = []
        self._channels: list[socket.socket] = []
        self._stats = stats

    def __call__(self, data: bytes) -> None:
        header = self.header
        for channel in self._channels:
            try:
                channel.sendmsg((header, data))
            except BlockingIOError:  # the worker is behind: dropped, as a full UDP buffer would
                self._stats.drop(DropReason.FANOUT_QUEUE_FULL)
            except OSError:
                pass  # it died: its reader takes its subscribers back

    def update(self) -> None:
        self._channels = [w.channel for w in self.workers if w.alive]

    def sender_report(self, ntp: int, rtp_timestamp: int) -> None:
        for worker in self.workers:
            worker.send(wire.SENDER_REPORT, self.key, ntp, rtp_timestamp)

    def restart(self) -> None:
        for worker in self.workers:
            worker.send(wire.RESTART, self.key)


class RemoteDown:
    """A down-track's link to the worker that sends it (`DownTrack.remote`)."""

    __slots__ = ("worker", "key", "state")

    def __init__(self, worker: WorkerHandle, key: int, state: wire.DownState) -> None:
        self.worker = worker
        self.key = key
        self.state = state  # as handed over, then as last reported

    def retransmit(self, sequence_numbers: tuple[int, ...]) -> tuple[int, int]:
        """Forwarded to the worker; what it resent arrives with its next report."""
        self.worker.send(wire.NACK, self.key, sequence_numbers)
        return 0, 0

    def pause(self, paused: bool, waiting: bool) -> None:
        self.worker.send(wire.PAUSE, self.key, paused, waiting)


class FanoutPool:
    def __init__(self, count: int, shared: SharedPort, stats: Stats) -> None:
        self.count = count
        self.shared = shared
        self.stats = stats
        self.shares = wire.Shares(count)
        self.workers: list[WorkerHandle] = []
        self._keys = itertools.count(1)
        self._feeds: dict[PublishedTrack, TrackFeed] = {}
        self._remote: dict[int, DownTrack] = {}  # down key -> down-track
        self._sinks: dict[str, RtpSink] = {}  # subscriber -> its sink
        self._waiting: dict[str, list[DownTrack]] = {}  # DTLS not up yet
        self._addresses: dict[str, tuple[str, tuple[str, int]]] = {}
        self._check: asyncio.TimerHandle | None = None

    def start(self) -> None:
        global _current
        loop = asyncio.get_running_loop()
        fanout = "compiled" if self.shared.fanout is not None else "python"
        udp = {
            host: s.transport.get_extra_info("socket").fileno()
            for host, s in self.shared.sockets.items()
            if s.transport is not None
        }
        for index in range(self.count):
            process, ours = spawn_worker(udp, fanout)
            ours.setblocking(False)
            worker = WorkerHandle(index, process, ours)
            self.workers.append(worker)
            loop.add_reader(ours, self._readable, worker)
        self._check = loop.call_later(ADDRESS_CHECK, self._check_addresses)
        _current = self
        log.info("fan-out: %d worker processes (%s path)", self.count, fanout)

    def close(self) -> None:
        global _current
        if _current is self:
            _current = None
        if self._check is not None:
            self._check.cancel()
        for worker in self.workers:
            if worker.alive:
                self._drop_worker(worker)
            with contextlib.suppress(OSError):
                worker.process.terminate()

    # --- subscribers ---------------------------------------------------------------------------

    def adopt(self, down: DownTrack, sink: RtpSink) -> None:
        """A configured down-track: handed to a worker now, or once its DTLS is up; a simulcast
        track's stays in main."""
        if down.track.layers or down.rewriter is None:
            return
        sid = down.subscriber_sid
        self._sinks[sid] = sink
        dtls = sink._dtls
        if dtls._state == State.CONNECTED:
            self._hand_off(down, sink)
            return
        waiting = self._waiting.get(sid)
        if waiting is None:
            waiting = self._waiting[sid] = []

            @dtls.on("statechange")
            def connected() -> None:
                if dtls._state == State.CONNECTED:
                    for pending in self._waiting.pop(sid, []):
                        self._hand_off(pending, sink)

        waiting.append(down)

    def release(self, down: DownTrack) -> None:
        """The subscriber stopped receiving this down-track."""
        waiting = self._waiting.get(down.subscriber_sid)
        if waiting is not None and down in waiting:
            waiting.remove(down)
        remote = _remote(down)
        if remote is None:
            return
        down.remote = None
        self._remote.pop(remote.key, None)
        self.stats.fanout_worker_down_tracks = len(self._remote)
        remote.worker.send(wire.UNDOWN, remote.key)
        self._unfeed(down.track, remote.worker)

    def forget(self, sid: str) -> None:
        """The subscriber left: its session goes from its worker."""
        self._waiting.pop(sid, None)
        self._sinks.pop(sid, None)
        self._addresses.pop(sid, None)
        index = self.shares.release(sid)
        if index is not None:
            worker = self.workers[index]
            worker.sessions.discard(sid)
            worker.send(wire.UNSESSION, sid)

    def _hand_off(self, down: DownTrack, sink: RtpSink) -> None:
        if down.remote is not None or down not in down.track.down_tracks:
            return
        sid = down.subscriber_sid
        where = self._where(sink)
        keys = srtp_keys(sink._dtls)
        if where is None or keys is None or down.rewriter is None:
            return
        index = self.shares.assign(sid)
        if index is None:
            return  # no worker left: main forwards
        worker = self.workers[index]
        if sid not in worker.sessions:
            worker.sessions.add(sid)
            worker.send(wire.SESSION, sid, keys[0], keys[1], *where)
            self._addresses[sid] = where
        feed = self._feed(down.track, worker)
        key = next(self._keys)
        state = wire.DownState(
            down.rewriter, down.rtx, down.waiting_for_keyframe, down.paused, down.out_ssrc or 0
        )
        worker.send(wire.DOWN, key, sid, feed.key, state)
        down.remote = RemoteDown(worker, key, state)
        self._remote[key] = down
        self.stats.fanout_worker_down_tracks = len(self._remote)
        down.track.down_tracks.changed()  # main's forwarding list leaves it out now

    def _where(self, sink: RtpSink) -> tuple[str, tuple[str, int]] | None:
        """The subscriber's shared socket (by local address) and its address; None if its
        nominated pair is not on the shared port (e.g. a TURN relay)."""
        pair = sink._dtls.transport._connection._nominated.get(1)
        transport = getattr(getattr(pair, "protocol", None), "transport", None)
        if pair is None or not isinstance(transport, SharedTransport):
            return None
        host: str = transport.get_extra_info("sockname")[0]
        return host, tuple(pair.remote_addr)  # type: ignore[return-value]

    def _feed(self, track: PublishedTrack, worker: WorkerHandle) -> TrackFeed:
        feed = self._feeds.get(track)
        if feed is None:
            feed = self._feeds[track] = TrackFeed(next(self._keys), self.stats)
            track.feed = feed
        if feed.key not in worker.tracks:
            worker.tracks[feed.key] = 0
            worker.send(wire.TRACK, feed.key, track.kind, track.mime_type)
            feed.workers.append(worker)
            feed.update()
        worker.tracks[feed.key] += 1
        return feed

    def _unfeed(self, track: PublishedTrack, worker: WorkerHandle) -> None:
        feed = self._feeds.get(track)
        if feed is None or feed.key not in worker.tracks:
            return
        worker.tracks[feed.key] -= 1
        if worker.tracks[feed.key] > 0:
            return
        del worker.tracks[feed.key]
        worker.send(wire.UNTRACK, feed.key)
        feed.workers.remove(worker)
        feed.update()
        if not feed.workers:
            del self._feeds[track]
            track.feed = None
            track.down_tracks.changed()

    def _check_addresses(self) -> None:
        """A subscriber whose media moved (a new nominated pair): its worker follows."""
        self._check = asyncio.get_running_loop().call_later(ADDRESS_CHECK, self._check_addresses)
        for sid, where in list(self._addresses.items()):
            sink = self._sinks.get(sid)
            now = self._where(sink) if sink is not None else None
            index = self.shares.owner.get(sid)
            if now is not None and now != where and index is not None:
                self._addresses[sid] = now
                self.workers[index].send(wire.ADDRESS, sid, *now)

    # --- from the workers ------------------------------------------------------------------

    def _readable(self, worker: WorkerHandle) -> None:
        for _ in range(64):
            try:
                datagram = worker.channel.recv(1 << 22)
            except BlockingIOError:
                return
            except OSError:
                datagram = b""
            if not datagram:
                self._failed(worker)
                return
            try:
                message = wire.decode(datagram, wire.REPLY_KINDS)
            except wire.WireError:
                self.stats.drop(DropReason.MALFORMED)
                continue
            self._on_reply(worker, message)

    def _on_reply(self, worker: WorkerHandle, message: tuple[Any, ...]) -> None:
        if message[0] == wire.KEYFRAME:
            track = next((t for t, f in self._feeds.items() if f.key == message[1]), None)
            if track is not None:  # a few a second at most (the worker's limiter)
                track.request_keyframe()
        elif message[0] == wire.REPORT:
            states, counters = message[1], message[2]
            for key, state in states.items():
                remote = _remote(self._remote.get(key))
                if remote is not None:
                    remote.state = state
            self._count(worker, counters)

    def _count(self, worker: WorkerHandle, counters: wire.WorkerCounters) -> None:
        before, stats = worker.counters, self.stats
        stats.packets_out += counters.packets_out - before.packets_out
        stats.retransmissions += counters.retransmissions - before.retransmissions
        stats.dropped[DropReason.NACK_LIMITED.value] += counters.nack_limited - before.nack_limited
        stats.dropped[DropReason.SEND_FAILED.value] += counters.send_failed - before.send_failed
        stats.fanout_worker_packets += counters.packets_out - before.packets_out
        worker.counters = counters

    # --- a worker that died ----------------------------------------------------------------

    def _failed(self, worker: WorkerHandle) -> None:
        if not worker.alive:
            return
        code = worker.process.poll()
        log.warning(
            "fan-out worker %d exited (%s): main takes its subscribers back", worker.index, code
        )
        self.stats.fanout_worker_failures += 1
        self._drop_worker(worker)
        self.shares.fail(worker.index)
        for key, down in list(self._remote.items()):
            remote = _remote(down)
            if remote is not None and remote.worker is worker:
                del self._remote[key]
                self.stats.fanout_worker_down_tracks = len(self._remote)
                self._take_back(down, remote.state)
        for sid in worker.sessions:
            self._addresses.pop(sid, None)
        worker.sessions.clear()

    def _drop_worker(self, worker: WorkerHandle) -> None:
        worker.alive = False
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(worker.channel)
        worker.channel.close()
        for track, feed in list(self._feeds.items()):
            if worker in feed.workers:
                feed.workers.remove(worker)
                feed.update()
            if not feed.workers:
                del self._feeds[track]
                track.feed = None
                track.down_tracks.changed()
        worker.tracks.clear()

    def _take_back(self, down: DownTrack, state: wire.DownState) -> None:
        """Main continues a dead worker's stream: past whatever it may have sent since its last
        report, at a keyframe, with main's SRTP stream at the index the subscriber expects."""
        rewriter, rtx = state.rewriter, state.rtx
        session = None
        sink = self._sinks.get(down.subscriber_sid)
        if sink is not None:
            session = sink._dtls._tx_srtp
        if rewriter.started:
            rewriter.skip(TAKEOVER_SKIP)
            if session is not None and state.extended_seq:
                warm(session, state.out_ssrc, state.extended_seq + TAKEOVER_SKIP + 1)
        if session is not None:
            warm_rtcp(session, state.out_ssrc, state.sender_reports + TAKEOVER_RTCP_SKIP)
        if rtx is not None and state.rtx_extended_seq:
            rtx.skip(TAKEOVER_SKIP)
            if session is not None:
                warm(session, rtx.ssrc, state.rtx_extended_seq + TAKEOVER_SKIP + 1)
        down.rewriter, down.rtx = rewriter, rtx
        down.paused = state.paused
        down.waiting_for_keyframe = down.track.kind == "video" or state.waiting_for_keyframe
        down.remote = None
        down.track.down_tracks.changed()
        down.track.request_keyframe()


def _remote(down: DownTrack | None) -> RemoteDown | None:
    remote = down.remote if down is not None else None
    return remote if isinstance(remote, RemoteDown) else None
