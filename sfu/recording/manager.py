"""The server's recordings: start and stop them, find their files, keep the room told.

Files live in `data_dir/recordings` only and are named by their id alone (`RC_` and 16 URL-safe
characters, then `.krec`); nothing a client sends becomes part of a path. A recording follows
its room: tracks published later join it (unless it was started for named tracks), unpublished
ones leave it, and it stops when the room closes. A room whose limits say `auto_record` starts
one at its first publication. Every start and stop is audited, with who and why.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

from auth.audit import AuditLog
from sfu import clock
from sfu.clock import TimerDriver
from sfu.config import RecordingConfig
from sfu.forwarder import PublishedTrack
from sfu.participant import Participant
from sfu.recording.container import RecordingFormatError, parse_header
from sfu.recording.keys import load_public
from sfu.recording.recorder import Quota, Recording
from sfu.recording.writer import RecordingWriter
from sfu.room import Room

log = logging.getLogger("keyroom.recording")

ID_PATTERN = re.compile(r"RC_[A-Za-z0-9_-]{16}")
SUFFIX = ".krec"
HEAD_BYTES = 64 * 1024


class RecordingRefused(Exception):
    """`code` is an admin API error code (signaling/admin.py maps it to a status)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RecordingManager:
    def __init__(self, config: RecordingConfig, data_dir: str, audit: AuditLog) -> None:
        self.config = config
        self.directory = os.path.realpath(os.path.join(data_dir, "recordings"))
        self.recipient = load_public(config.public_key) if config.public_key else None
        self.audit = audit
        self.active: dict[str, Recording] = {}
        self._rooms: dict[str, Room] = {}
        self._following: set[str] = set()
        self.quota = Quota(config.quota_bytes)
        self._next_tick: float | None = None
        self._timer: TimerDriver | None = None

    # -- files ----------------------------------------------------------------------------------

    def path_of(self, rid: str) -> str:
        """The file of recording `rid`; refuses anything that is not an id."""
        if not ID_PATTERN.fullmatch(rid):
            raise RecordingRefused("invalid_message", "not a recording id")
        path = os.path.join(self.directory, rid + SUFFIX)
        if os.path.dirname(os.path.realpath(path)) != self.directory:
            raise RecordingRefused("not_found", "no such recording")
        return path

    def _files(self) -> Iterator[tuple[str, str]]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in sorted(names):
            rid, suffix = name[: -len(SUFFIX)], name[-len(SUFFIX) :]
            if suffix == SUFFIX and ID_PATTERN.fullmatch(rid):
                yield rid, os.path.join(self.directory, name)

    def disk_usage(self) -> int:
        total = 0
        for _rid, path in self._files():
            try:
                total += os.lstat(path).st_size
            except OSError:
                continue
        return total

    def describe(self, rid: str) -> dict[str, Any] | None:
        """What the header says, with size and state; None if there is no such file."""
        try:
            path = self.path_of(rid)
            with open(path, "rb") as file:
                header, _ = parse_header(file.read(HEAD_BYTES))
            size = os.path.getsize(path)
        except (OSError, RecordingFormatError, RecordingRefused):
            return None
        active = self.active.get(rid)
        return {
            "id": rid,
            "room": header.get("room"),
            "started_at": header.get("started_at"),
            "e2ee": bool(header.get("e2ee")),
            "bytes": size,
            "active": active is not None,
            "tracks": list(active.taps) if active is not None else None,
        }

    def listing(self, room: str) -> list[dict[str, Any]]:
        found = (self.describe(rid) for rid, _path in self._files())
        return [info for info in found if info is not None and info["room"] == room]

    # -- start and stop -------------------------------------------------------------------------

    def start(self, room: Room, tracks: list[str] | None, by: dict[str, Any]) -> Recording:
        """Record `tracks` of `room` (None: all of them, now and later)."""
        if not room.limits.recording_allowed:
            raise RecordingRefused("forbidden", "recording is not allowed in this room")
        if self.recipient is None:
            raise RecordingRefused("unavailable", "recording needs [recording] public_key")
        chosen = self._tracks(room, tracks)
        if not self.active:
            self.quota.used = self.disk_usage()
        if self.quota.used >= self.quota.limit:
            raise RecordingRefused("unavailable", "the recordings' disk quota is full")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        rid = "RC_" + secrets.token_urlsafe(12)
        header = {
            "id": rid,
            "room": room.name,
            "room_sid": room.sid,
            "started_at": time.time(),
            "e2ee": room.limits.e2ee_required,
        }
        writer = RecordingWriter(header, self.recipient, self.config.chunk_bytes)
        recording = Recording(
            rid,
            self.path_of(rid),
            writer,
            max_bytes=self.config.max_bytes,
            max_duration=self.config.max_duration,
            quota=self.quota,
            on_stop=self._stopped,
        )
        self.active[rid] = recording
        self._rooms[rid] = room
        if tracks is None:
            self._following.add(rid)
        for publisher, track in chosen:
            recording.attach(track, _publisher(publisher))
        room.set_recording(True)
        self.audit.record("recording_started", room=room.name, recording=rid, **by)
        self._arm()
        return recording

    def _tracks(
        self, room: Room, wanted: list[str] | None
    ) -> list[tuple[Participant, PublishedTrack]]:
        found = [
            (p, t)
            for p in room.participants.values()
            for t in p.tracks.values()
            if t.bound and (wanted is None or t.sid in wanted)
        ]
        if wanted is not None and len(found) != len(set(wanted)):
            raise RecordingRefused("not_found", "no such published track in this room")
        return found

    def stop(self, rid: str, by: dict[str, Any]) -> bool:
        recording = self.active.get(rid)
        if recording is None:
            return False
        self.audit.record("recording_stop_requested", recording=rid, **by)
        recording.stop("stopped")
        return True

    def _stopped(self, recording: Recording, reason: str) -> None:
        rid = recording.id
        self.active.pop(rid, None)
        self._following.discard(rid)
        room = self._rooms.pop(rid, None)
        name = room.name if room is not None else None
        if reason.startswith("io_error"):
            log.error("recording %s of room %s stopped: %s", rid, name, reason)
        self.audit.record(
            "recording_stopped", room=name, recording=rid, reason=reason, bytes=recording.size
        )
        if room is not None and not any(r is room for r in self._rooms.values()):
            room.set_recording(False)

    def close(self) -> None:
        for recording in list(self.active.values()):
            recording.stop("server_shutdown")
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    # -- room events (a RoomRegistry listener) --------------------------------------------------

    def on_event(
        self,
        event: str,
        room: Room,
        participant: Participant | None,
        track: PublishedTrack | None,
    ) -> None:
        if event == "track_published" and track is not None and participant is not None:
            following = [rid for rid in self._following if self._rooms.get(rid) is room]
            for rid in following:
                self.active[rid].attach(track, _publisher(participant))
            if not following and room.limits.auto_record and room.limits.recording_allowed:
                self._auto_start(room)
        elif event == "track_unpublished" and track is not None:
            for recording in self._of(room):
                recording.detach(track.sid)
        elif event == "room_finished":
            for recording in self._of(room):
                recording.stop("room_closed")

    def _auto_start(self, room: Room) -> None:
        try:
            self.start(room, None, {"by": "auto_record"})
        except (RecordingRefused, OSError) as e:
            self.audit.record("recording_refused", room=room.name, by="auto_record", reason=str(e))

    def _of(self, room: Room) -> list[Recording]:
        return [self.active[rid] for rid, r in list(self._rooms.items()) if r is room]

    # -- the flush tick (sfu/clock.py owner) ----------------------------------------------------

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = TimerDriver(self)
        if self._next_tick is None:
            self._next_tick = clock.now() + self.config.flush_interval
        self._timer.update()

    def next_deadline(self) -> float | None:
        return self._next_tick if self.active else None

    def handle_timer(self, now: float) -> None:
        for recording in list(self.active.values()):
            recording.tick()
        self._next_tick = now + self.config.flush_interval if self.active else None


def _publisher(participant: Participant) -> dict[str, Any]:
    return {"sid": participant.sid, "identity": participant.identity, "name": participant.name}
