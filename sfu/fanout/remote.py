"""The main process's handles on the fan-out workers (sfu/fanout/pool.py uses them): a worker
process and its socket, a track's feed to the workers, and a down-track a worker sends."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from typing import Any

from sfu.fanout import wire
from sfu.stats import DropReason, Stats


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
        self.heard = 0.0  # loop time of its last message

    def send(self, kind: str, *args: object) -> None:
        if self.alive:
            with contextlib.suppress(OSError):  # a dead worker is handled by its reader
                self.channel.send(wire.encode_control(kind, *args))


class TrackFeed:
    """Called by `PublishedTrack.forward` with each packet (by `RedFanout.forward` with each
    packet as it came, for a track the publisher sends RED on): one datagram per worker."""

    __slots__ = ("key", "header", "workers", "track", "codec", "_channels", "_stats")

    def __init__(self, key: int, track: Any, stats: Stats) -> None:
        self.key = key
        self.header = wire.packet_header(key)
        self.workers: list[WorkerHandle] = []
        self.track = track  # sfu/forwarder.PublishedTrack
        self.codec = track.codec  # as the workers were told (`CODEC`)
        self._channels: list[socket.socket] = []
        self._stats = stats

    def __call__(self, data: bytes) -> None:
        if self.track.codec is not self.codec:  # renegotiated: the workers' RED split follows
            self.codec = self.track.codec
            for worker in self.workers:
                worker.send(wire.CODEC, self.key, self.codec)
        header = self.header
        for channel in self._channels:
            try:
                channel.sendmsg((header, data))
            except BlockingIOError:  # the worker is behind: dropped, as a full UDP buffer would
                self._stats.drop(DropReason.FANOUT_QUEUE_FULL)
            except OSError:
                pass  # it died: its reader takes its subscribers back

    def add(self, worker: WorkerHandle) -> None:
        """`worker` gets the track's packets from now on."""
        worker.send(wire.TRACK, self.key, self.track.kind, self.track.mime_type)
        worker.send(wire.CODEC, self.key, self.codec)
        self.workers.append(worker)
        self.update()

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

    __slots__ = ("worker", "key", "state", "padding")

    def __init__(self, worker: WorkerHandle, key: int, state: wire.DownState) -> None:
        self.worker = worker
        self.key = key
        self.state = state  # as handed over, then as last reported
        self.padding = 0  # as the worker was last told

    def retransmit(self, sequence_numbers: tuple[int, ...]) -> tuple[int, int]:
        """Forwarded to the worker; what it resent arrives with its next report."""
        self.worker.send(wire.NACK, self.key, sequence_numbers)
        return 0, 0

    def pause(self, paused: bool, waiting: bool) -> None:
        self.worker.send(wire.PAUSE, self.key, paused, waiting)


def changed(down: Any) -> None:
    """`down` (sfu/forwarder.DownTrack) moved between main and a worker: the lists main
    forwards from (its track's, or its RED stream's) are made again."""
    down.track.down_tracks.changed()
    red = down.track.red
    if red is not None and down in red.opus:
        red.downs.changed()
