"""The main process's side of the fan-out workers (`[rtc] fanout_workers = N`).

Main keeps signaling, ICE, DTLS and all RTCP for every participant. Once a subscriber's DTLS is
up, each of its single-layer down-tracks is handed to the worker that owns the subscriber
(`wire.Shares`): its sending state and the subscriber's SRTP keys go over, and from then on the
publisher's ingress feeds each input packet once per worker that has subscribers of the track
(`TrackFeed`, called by `PublishedTrack.forward`) instead of rewriting it per subscriber.
A track the publisher sends RED on is fed as its packets came (by `RedFanout.forward`): the
worker splits them as main does (sfu/redtrack.py), RED to the subscribers that negotiated it,
with their own Opus payload type in the block headers, the primary Opus to the others.

NACKs, pauses, unmutes and Sender Report data reach the worker as control messages; the worker
keeps the NACK cache and sends the Sender Reports of its streams. A worker that exits (reads as
end of file on its socket) is never waited for: each of its down-tracks is continued by main
from the worker's last report, a few thousand sequence numbers further on so none is reused, at
a keyframe, with main's SRTP stream warmed to the same index.

Simulcast tracks and connections whose pair is not on the shared port stay in main (a client
relaying through TURN is on it: the server gathers no relay candidate of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

from aiortc.rtcdtlstransport import State

from sfu import clock
from sfu.fanout import wire
from sfu.fanout.handoff import TAKEOVER_SKIP, media_address, spawn_worker, srtp_keys, take_back
from sfu.fanout.remote import RemoteDown, TrackFeed, WorkerHandle, changed
from sfu.forwarder import DownTrack, PublishedTrack
from sfu.internals.egress import RtpSink
from sfu.internals.sharedport import SharedPort
from sfu.stats import DropReason, Stats

log = logging.getLogger("keyroom.fanout")

# Seconds between checks that remote subscribers' ICE pairs have not moved and that every
# worker still reports (four times a second); one silent for STALL_TIMEOUT is ended.
TICK = 0.5
STALL_TIMEOUT = 5.0
# A worker gets subscribers once it has reported; one not heard from this long never will.
START_TIMEOUT = 60.0

_current: FanoutPool | None = None


def current() -> FanoutPool | None:
    """The process's pool, when `[rtc] fanout_workers` is set."""
    return _current


class FanoutPool:
    def __init__(self, count: int, shared: SharedPort, stats: Stats) -> None:
        self.count = count
        self.shared = shared
        self.stats = stats
        self.shares = wire.Shares(count, starting=set(range(count)))
        self.workers: list[WorkerHandle] = []
        self._keys = itertools.count(1)
        self._feeds: dict[PublishedTrack, TrackFeed] = {}
        self._remote: dict[int, DownTrack] = {}  # down key -> down-track
        self._sinks: dict[str, RtpSink] = {}  # subscriber -> its sink
        self._waiting: dict[str, list[DownTrack]] = {}  # DTLS not up yet
        self._addresses: dict[str, tuple[str, tuple[str, int]]] = {}
        # Subscribers taken back from a dead worker: main has sent on their SSRCs since, so
        # they stay in main (another worker's fresh SRTP streams could not continue them).
        self._taken_back: set[str] = set()
        self._next_tick: float | None = None
        self._ready = asyncio.Event()  # every worker has reported once (or died)
        self._timer: clock.TimerDriver | None = None

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
        now = loop.time()
        for worker in self.workers:
            worker.heard = now
        self._next_tick = now + TICK
        self._timer = clock.TimerDriver(self)
        self._timer.update()
        _current = self
        log.info("fan-out: %d worker processes (%s path)", self.count, fanout)

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until every worker is up (the server opens to joins after that, so the first
        subscribers are shared out too); a late one gets subscribers once it reports."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            log.warning(
                "fan-out: %d worker(s) not up after %.0f s", len(self.shares.starting), timeout
            )

    def close(self) -> None:
        global _current
        if _current is self:
            _current = None
        if self._timer is not None:
            self._timer.stop()
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
        if down.rewriter is not None and down.rewriter.started:
            # Past what the worker may have sent since its last report: a recycled section's
            # next track continues from here on the same SSRC.
            down.rewriter.skip(TAKEOVER_SKIP)
        self._remote.pop(remote.key, None)
        self.stats.fanout_worker_down_tracks = len(self._remote)
        remote.worker.send(wire.UNDOWN, remote.key)
        self._unfeed(down.track, remote.worker)

    def forget(self, sid: str) -> None:
        """The subscriber left: its session goes from its worker."""
        self._waiting.pop(sid, None)
        self._sinks.pop(sid, None)
        self._addresses.pop(sid, None)
        self._taken_back.discard(sid)
        index = self.shares.release(sid)
        if index is not None:
            worker = self.workers[index]
            worker.sessions.discard(sid)
            worker.send(wire.UNSESSION, sid)

    def _hand_off(self, down: DownTrack, sink: RtpSink) -> None:
        red = down.track.red
        opus = red.opus.get(down) if red is not None else None  # a RED subscriber's Opus
        if down.remote is not None or (down not in down.track.down_tracks and opus is None):
            return
        sid = down.subscriber_sid
        where = media_address(sink)
        keys = srtp_keys(sink._dtls)
        eligible = where is not None and keys is not None and sid not in self._taken_back
        index = self.shares.assign(sid) if eligible else None
        if where is None or keys is None or index is None:
            # Not on the shared port, taken back, or no worker: main forwards.
            # The reason only: `keys` is the subscriber's SRTP key material, never logged.
            reason = (
                "not on the shared port" if where is None
                else "no SRTP keys" if keys is None
                else "taken back" if sid in self._taken_back
                else "no worker"
            )  # fmt: skip
            log.info("fan-out: %s stays in the main process (%s)", sid, reason)
            return
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
        worker.send(wire.DOWN, key, sid, feed.key, state, opus)
        down.remote = RemoteDown(worker, key, state)
        self._remote[key] = down
        self.stats.fanout_worker_down_tracks = len(self._remote)
        changed(down)  # main's forwarding list leaves it out now

    def _feed(self, track: PublishedTrack, worker: WorkerHandle) -> TrackFeed:
        feed = self._feeds.get(track)
        if feed is None:
            feed = self._feeds[track] = TrackFeed(next(self._keys), track, self.stats)
            track.feed = feed
        if feed.key not in worker.tracks:
            worker.tracks[feed.key] = 0
            feed.add(worker)
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
        self._stop_feeding(track, feed, worker)

    def _stop_feeding(self, track: PublishedTrack, feed: TrackFeed, worker: WorkerHandle) -> None:
        """`worker` gets no more of `track`; with no worker left, main forwards it all."""
        feed.workers.remove(worker)
        feed.update()
        if not feed.workers:
            del self._feeds[track]
            track.feed = None
            track.down_tracks.changed()
            if track.red is not None:
                track.red.downs.changed()

    def next_deadline(self) -> float | None:
        return self._next_tick

    def handle_timer(self, now: float) -> None:
        self._next_tick = now + TICK
        for worker in self.workers:
            if worker.alive:
                self._readable(worker)  # what waits was sent in time (main's loop was late)
            limit = START_TIMEOUT if worker.index in self.shares.starting else STALL_TIMEOUT
            if worker.alive and now - worker.heard > limit:
                log.warning(
                    "fan-out worker %d silent for %.1f s: ended", worker.index, now - worker.heard
                )
                with contextlib.suppress(OSError):
                    worker.process.kill()
                self._failed(worker)
        self._check_addresses()
        self._sync_padding()

    def _sync_padding(self) -> None:
        """Congestion control's probe padding (set on main's down-track) to the worker."""
        for down in self._remote.values():
            remote = _remote(down)
            if remote is not None and remote.padding != down.padding:
                remote.padding = down.padding
                remote.worker.send(wire.PADDING, remote.key, down.padding)

    def _check_addresses(self) -> None:
        """A subscriber whose media moved (a new nominated pair): its worker follows."""
        for sid, where in list(self._addresses.items()):
            sink = self._sinks.get(sid)
            now = media_address(sink) if sink is not None else None
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
            worker.heard = asyncio.get_running_loop().time()
            self.shares.started(worker.index)
            if not self.shares.starting:
                self._ready.set()
            self._on_reply(worker, message)

    def _on_reply(self, worker: WorkerHandle, message: tuple[Any, ...]) -> None:
        if message[0] == wire.KEYFRAME:
            track = next((t for t, f in self._feeds.items() if f.key == message[1]), None)
            if track is not None:  # a few a second at most (the worker's limiter)
                track.request_keyframe()
        elif message[0] == wire.REPORT:
            states, counters = message[1], message[2]
            for key, state in states.items():
                down = self._remote.get(key)
                remote = _remote(down)
                if down is not None and remote is not None:
                    # Main's copy mirrors the worker's (a report old at most): what congestion
                    # control measures, and where a recycled section's next track goes on.
                    remote.state = state
                    down.rewriter, down.rtx = state.rewriter, state.rtx
                    down.padding_sent = state.padding_sent
            self._count(worker, counters)

    def _count(self, worker: WorkerHandle, counters: wire.WorkerCounters) -> None:
        before, stats = worker.counters, self.stats
        stats.packets_out += counters.packets_out - before.packets_out
        stats.bytes_out += counters.bytes_out - before.bytes_out
        stats.retransmissions += counters.retransmissions - before.retransmissions
        stats.dropped[DropReason.NACK_LIMITED.value] += counters.nack_limited - before.nack_limited
        stats.dropped[DropReason.SEND_FAILED.value] += counters.send_failed - before.send_failed
        stats.fanout_worker_packets += counters.packets_out - before.packets_out
        stats.fanout_worker_red_packets += counters.red_packets - before.red_packets
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
        if not self.shares.starting:
            self._ready.set()
        for key, down in list(self._remote.items()):
            remote = _remote(down)
            if remote is not None and remote.worker is worker:
                del self._remote[key]
                self.stats.fanout_worker_down_tracks = len(self._remote)
                take_back(down, remote.state, self._sinks.get(down.subscriber_sid))
        for sid in worker.sessions:
            self._addresses.pop(sid, None)
            self._taken_back.add(sid)
        worker.sessions.clear()

    def _drop_worker(self, worker: WorkerHandle) -> None:
        worker.alive = False
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(worker.channel)
        worker.channel.close()
        for track, feed in list(self._feeds.items()):
            if worker in feed.workers:
                self._stop_feeding(track, feed, worker)
        worker.tracks.clear()


def _remote(down: DownTrack | None) -> RemoteDown | None:
    remote = down.remote if down is not None else None
    return remote if isinstance(remote, RemoteDown) else None
