"""One recording's file: the I/O edge around `RecordingWriter`.

A `TrackTap` is one more consumer of a published track, beside its down-tracks: it appends each
packet as received to the recording (no decoding, no rewriting). Chunks are appended with one
`os.write` each, so a killed server leaves whole chunks behind. The caps (size, duration, the
shared quota) and any OSError stop the recording, never the room: `on_stop` tells the manager.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from sfu.forwarder import PublishedTrack
from sfu.recording.container import RTP, SENDER_REPORT, SENDER_REPORT_BODY, TRACK
from sfu.recording.writer import RecordingWriter
from sfu.rtp import RtpInfo
from sfu.tap import Tap

log = logging.getLogger("keyroom.recording")

# Room left under the caps for the final chunk's framing and stop note.
FINAL_RESERVE = 1024


@dataclass
class Quota:
    """Bytes all recordings may hold together; `used` counts the files on disk and growing."""

    limit: int
    used: int = 0


class TrackTap:
    __slots__ = ("recording", "index")

    def __init__(self, recording: Recording, index: int) -> None:
        self.recording = recording
        self.index = index

    def packet(self, data: bytes, info: RtpInfo) -> None:
        self.recording.add(RTP, self.index, data)

    def sender_report(self, ntp: int, rtp_timestamp: int) -> None:
        self.recording.add(SENDER_REPORT, self.index, SENDER_REPORT_BODY.pack(ntp, rtp_timestamp))


class Recording:
    def __init__(
        self,
        rid: str,
        path: str,
        writer: RecordingWriter,
        *,
        max_bytes: int,
        max_duration: float,
        quota: Quota,
        on_stop: Callable[[Recording, str], None],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.id = rid
        self.path = path
        self.writer = writer
        self.max_bytes = max_bytes - FINAL_RESERVE
        self.quota = quota
        self.on_stop = on_stop
        self._wall = wall
        self.started_at = wall()
        self.ends_at = self.started_at + max_duration
        self.size = 0
        self.stopped: str | None = None
        # Per track sid: each tap and the list it sits in (the track's, or a simulcast layer's).
        self.taps: dict[str, list[tuple[list[Tap], TrackTap]]] = {}
        self._next_tap = 0
        # O_EXCL: an id names a new file or none; 0600: only the server's user reads it.
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        error = self._append(writer.prefix)
        if error is not None:
            raise OSError(error)

    def attach(self, track: PublishedTrack, publisher: dict[str, Any]) -> None:
        """Record `track` from now on (a keyframe is asked for, so the video starts clean). A
        simulcast track is recorded layer by layer: which layers a camera sends depends on its
        size and uplink, so export keeps the best one that arrived."""
        owners: list[list[Tap]] = [layer.taps for layer in track.layers] or [track.taps]
        if self.stopped is not None or track.sid in self.taps or self._next_tap + len(owners) > 255:
            return
        codec = track.codec
        described = {
            **track.info(),
            "clock_rate": codec.clock_rate if codec else 0,
            "payload_type": codec.payload_type if codec else 0,
            "participant": publisher,
        }
        attached = self.taps[track.sid] = []
        for layer, owner in enumerate(owners):
            tap = TrackTap(self, self._next_tap)
            self._next_tap += 1
            named = {"layer": layer, "rid": track.layers[layer].rid} if track.layers else {}
            self.add(TRACK, tap.index, orjson.dumps({**described, **named}))
            owner.append(tap)
            attached.append((owner, tap))
        if track.kind == "video":
            track.request_keyframe()

    def detach(self, track_sid: str) -> None:
        for owner, tap in self.taps.get(track_sid, []):
            if tap in owner:
                owner.remove(tap)

    def add(self, kind: int, track: int, body: bytes) -> None:
        """One record (the RTP hot path for RTP records: a few comparisons and an append)."""
        if self.stopped is not None:
            return
        now = self._wall()
        if now >= self.ends_at:
            self.stop("max_duration")
            return
        # Checked before sealing: a chunk sealed but not written would break the chain.
        growth = self.writer.pending_bytes + len(body) + 64
        quota = self.quota
        if self.size + growth > self.max_bytes:
            self.stop("max_bytes")
        elif quota.used + growth > quota.limit - FINAL_RESERVE:
            self.stop("quota")
        else:
            chunk = self.writer.add(kind, track, now, body)
            if chunk is not None:
                self._write(chunk)

    def tick(self) -> None:
        """Periodic: seal what is buffered (a crash loses at most one interval), end at the cap."""
        if self.stopped is not None:
            return
        if self._wall() >= self.ends_at:
            self.stop("max_duration")
            return
        chunk = self.writer.flush()
        if chunk is not None:
            self._write(chunk)

    def _write(self, chunk: bytes) -> None:
        error = self._append(chunk)
        if error is not None:
            self.stop(f"io_error: {error}")

    def _append(self, data: bytes) -> str | None:
        """Append `data`; the error that closed the file, if any."""
        if self._fd is None:
            return "closed"
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self.size += written
                self.quota.used += written
        except OSError as e:
            log.warning("recording %s: %s: stopped", self.id, e.strerror)
            self._close()
            return e.strerror or "I/O error"
        return None

    def stop(self, reason: str) -> None:
        """Detach from every track, write the final chunk (if the file still takes it)."""
        if self.stopped is not None:
            return
        self.stopped = reason
        for sid in list(self.taps):
            self.detach(sid)
        if self._fd is not None:
            note = orjson.dumps({"stopped": reason})
            final = self.writer.finish(note, self._wall())
            if final is not None:
                self._append(final)
            self._close()
        self.on_stop(self, reason)

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "active": self.stopped is None,
            "started_at": self.started_at,
            "bytes": self.size,
            "tracks": list(self.taps),
            "stopped": self.stopped,
        }
