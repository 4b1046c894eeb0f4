"""Rooms: who is in them, what they publish, and who receives what.

A room owns the membership rules (limits, duplicate identities, visibility) and wires publications
to subscriptions; each `Participant` owns its own peer connections. Its timers (active-speaker
rounds, empty timeout, max duration) are named deadlines on the one clock (sfu/clock.py): the
room reads `now` from the clock it is given and is driven through `handle_timer(now)`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import orjson

from auth.grants import VideoGrant
from auth.policy import may_publish_track, may_subscribe
from sfu import clock
from sfu.clock import Deadlines, TimerDriver
from sfu.config import LimitsConfig
from sfu.datarelay import Envelope
from sfu.forwarder import PublishedTrack
from sfu.participant import Participant
from sfu.speakers import active_speakers

log = logging.getLogger("keyroom.room")

SPEAKER_INTERVAL = 0.5


def new_sid(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(9)}"


class JoinRefused(Exception):
    """A join the room cannot admit: `code` is the protocol error code, `reason` the precise
    cause for the audit log when it says more than the code."""

    def __init__(self, code: str, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


# Lifecycle listeners (webhooks, metrics) get (event, room, participant, track); the six events
# are LiveKit's: room_started, room_finished, participant_joined, participant_left,
# track_published, track_unpublished. A listener must not block: it is called inline.
Listener = Callable[[str, "Room", Participant | None, PublishedTrack | None], None]


class Room:
    def __init__(
        self,
        name: str,
        limits: LimitsConfig,
        *,
        metadata: str = "",
        listeners: list[Listener] | None = None,
        now: Callable[[], float] = clock.now,
        phases: clock.Phases = clock.room_phases,
    ) -> None:
        self.sid = new_sid("RM")
        self.name = name
        self.metadata = metadata
        self.limits = limits
        self.created_at = time.time()
        self.participants: dict[str, Participant] = {}
        self.closed = False
        # Called when the room has been empty for `empty_timeout` seconds.
        self.on_empty: Callable[[Room], None] | None = None
        # Called when the room reaches its max_duration (the server ends its sessions).
        self.on_expired: Callable[[Room], None] | None = None
        self.listeners: list[Listener] = listeners if listeners is not None else []
        self._now = now
        self._deadlines: Deadlines[str] = Deadlines()
        # Arms the loop timer for `next_deadline()`; None where nothing drives the room (tests
        # call handle_timer themselves).
        self.timer: TimerDriver | None = None
        self._speakers: list[str] = []
        # The speaker round's offset within the tick: every room's round in one loop pass
        # held it for rooms x ~30 µs (sfu/clock.py, Phases).
        self._phases = phases
        self.phase = phases.take()
        self.recording = False  # whether any of its tracks is being recorded (sfu/recording/)

    def info(self) -> dict[str, Any]:
        limits = asdict(self.limits)
        return {
            "sid": self.sid,
            "name": self.name,
            "metadata": self.metadata,
            "limits": limits,
            "e2ee_required": self.limits.e2ee_required,
            "relay_only": self.limits.relay_only,
            "num_participants": sum(1 for p in self.participants.values() if not p.hidden),
            "created_at": int(self.created_at),
        }

    # -- timers -------------------------------------------------------------------------------

    def start(self) -> None:
        """The room exists: it closes after `empty_timeout` unless someone joins, and after
        `max_duration` in any case."""
        now = self._now()
        self._arm_empty_timer(now)
        if self.limits.max_duration > 0:
            self._deadlines.set("expired", now + self.limits.max_duration)
        self._rearm()

    def next_deadline(self) -> float | None:
        return self._deadlines.next()

    def handle_timer(self, now: float) -> None:
        for key in self._deadlines.pop_due(now):
            if self.closed:
                return
            if key == "speakers":
                self._speaker_round()
                self._deadlines.set("speakers", clock.on_tick(now + SPEAKER_INTERVAL, self.phase))
            elif key == "empty":
                if not self.participants and self.on_empty is not None:
                    self.on_empty(self)
            elif key == "expired" and self.on_expired is not None:
                self.on_expired(self)

    def _rearm(self) -> None:
        if self.timer is not None:
            self.timer.update()

    def _speaker_round(self) -> None:
        """Tell everyone who is speaking, whenever that changes (PROTOCOL 2.6)."""
        levels = []
        for participant in self.participants.values():
            if participant.hidden:
                continue
            loudness = [
                level
                for track in participant.tracks.values()
                if track.kind == "audio" and not track.muted
                for level in (track.take_loudness(),)
                if level is not None
            ]
            if loudness:
                levels.append((participant.sid, max(loudness)))
        speakers = active_speakers(levels)
        sids = [str(s["sid"]) for s in speakers]
        if sids != self._speakers:
            self._speakers = sids
            self.broadcast({"type": "active_speakers", "speakers": speakers})

    def _arm_empty_timer(self, now: float) -> None:
        if self.on_empty is not None:
            self._deadlines.set("empty", now + self.limits.empty_timeout)

    # -- membership ---------------------------------------------------------------------------

    def emit(
        self,
        event: str,
        participant: Participant | None = None,
        track: PublishedTrack | None = None,
    ) -> None:
        for listener in self.listeners:
            try:
                listener(event, self, participant, track)
            except Exception:
                log.exception("lifecycle listener failed on %s", event)

    def by_identity(self, identity: str) -> Participant | None:
        return next((p for p in self.participants.values() if p.identity == identity), None)

    def visible_to(self, viewer: Participant) -> list[Participant]:
        return [p for p in self.participants.values() if p is not viewer and not p.hidden]

    def check_admission(self, identity: str) -> Participant | None:
        """Raise JoinRefused, or return the participant a `replace` join will evict."""
        existing = self.by_identity(identity)
        if existing is not None:
            if self.limits.duplicate_identity != "replace":
                raise JoinRefused("conflict", "this identity is already in the room")
            return existing
        limit = self.limits.max_participants
        if limit and len(self.participants) >= limit:
            raise JoinRefused("room_full", "the room is full")
        return None

    def add(self, participant: Participant) -> None:
        """Admit a participant (synchronously, so concurrent joins cannot overshoot limits)."""
        self.participants[participant.sid] = participant
        self._deadlines.clear("empty")
        if "speakers" not in self._deadlines:
            due = clock.on_tick(self._now() + SPEAKER_INTERVAL, self.phase)
            self._deadlines.set("speakers", due)
        self._rearm()
        self.emit("participant_joined", participant)
        if not participant.hidden:
            self.broadcast(
                {"type": "participant_joined", "participant": participant.info()},
                exclude=participant,
            )

    def subscribe_all(self, participant: Participant) -> None:
        if not participant.auto_subscribe or not may_subscribe(participant.grant).allowed:
            participant.start_negotiation()
            return
        subscribed = False
        for other in self.visible_to(participant):
            for track in other.tracks.values():
                if track.bound:
                    subscribed |= self._auto_subscribe(participant, track)
        if not subscribed:
            participant.start_negotiation()

    def _auto_subscribe(self, participant: Participant, track: PublishedTrack) -> bool:
        """Subscribe unless max_subscriptions_per_participant is reached (then the client can
        still pick what it wants with explicit `subscribe`/unsubscribe)."""
        limit = self.limits.max_subscriptions_per_participant
        if limit and len(participant.subscriptions) >= limit:
            return False
        return participant.subscribe(track)

    def detach(self, participant: Participant, reason: str) -> bool:
        """Take a participant out now: nothing is forwarded to or from it after this returns."""
        if self.participants.pop(participant.sid, None) is None:
            return False
        for track_sid in list(participant.tracks):
            self.unpublish(participant, track_sid, notify_publisher=False)
        participant.detach()
        self.emit("participant_left", participant)
        if not participant.hidden:
            self.broadcast(
                {
                    "type": "participant_left",
                    "sid": participant.sid,
                    "identity": participant.identity,
                    "reason": reason,
                }
            )
        if not self.participants:
            self._arm_empty_timer(self._now())
            self._rearm()
        return True

    async def remove(self, participant: Participant, reason: str) -> None:
        self.detach(participant, reason)
        await participant.close()

    def broadcast(self, frame: dict[str, Any], exclude: Participant | None = None) -> None:
        for participant in list(self.participants.values()):
            if participant is not exclude:
                participant.notify(frame)

    def track_bound(self, publisher: Participant, track: PublishedTrack) -> None:
        """A track's media section was negotiated: announce it and subscribe the others."""
        self.emit("track_published", publisher, track)
        if publisher.hidden:
            return
        self.broadcast(
            {"type": "track_published", "participant_sid": publisher.sid, "track": track.info()},
            exclude=publisher,
        )
        for other in self.others(publisher):
            if other.auto_subscribe and may_subscribe(other.grant).allowed:
                self._auto_subscribe(other, track)

    def others(self, participant: Participant) -> list[Participant]:
        return [p for p in self.participants.values() if p is not participant]

    def unpublish(self, publisher: Participant, track_sid: str, *, notify_publisher: bool) -> bool:
        track = publisher.remove_track(track_sid)
        if track is None:
            return False
        for other in self.participants.values():
            other.unsubscribe(track_sid)
        track.down_tracks.clear()
        if track.bound:
            self.emit("track_unpublished", publisher, track)
        if track.bound and not publisher.hidden:
            self.broadcast(
                {
                    "type": "track_unpublished",
                    "participant_sid": publisher.sid,
                    "track_sid": track_sid,
                },
                exclude=None if notify_publisher else publisher,
            )
        return True

    def apply_grant(self, participant: Participant, grant: VideoGrant) -> None:
        """A live permission change, enforced on the media at once: tracks it may no longer
        publish are unpublished, subscriptions dropped if it may no longer subscribe."""
        had_subscribe = may_subscribe(participant.grant).allowed
        participant.grant = grant
        for track in list(participant.tracks.values()):
            if not may_publish_track(grant, track.kind, track.source).allowed:
                self.unpublish(participant, track.sid, notify_publisher=True)
        if not may_subscribe(grant).allowed:
            for track_sid in list(participant.subscriptions):
                participant.unsubscribe(track_sid)
        elif not had_subscribe:
            self.subscribe_all(participant)
        participant.notify({"type": "permissions_changed", "permissions": grant.to_permissions()})
        self.participant_updated(participant)

    def set_muted(
        self,
        participant: Participant,
        track: PublishedTrack,
        muted: bool,
        *,
        notify_publisher: bool,
    ) -> None:
        if track.muted == muted:
            return
        track.set_muted(muted)
        if track.bound and not participant.hidden:
            self.broadcast(
                {
                    "type": "track_muted",
                    "participant_sid": participant.sid,
                    "track_sid": track.sid,
                    "muted": muted,
                },
                exclude=None if notify_publisher else participant,
            )
        if not muted:
            track.request_keyframe()

    def set_recording(self, active: bool) -> None:
        """Tell everyone whether the room is being recorded, when that changes (PROTOCOL 7)."""
        if active != self.recording:
            self.recording = active
            self.broadcast({"type": "recording", "active": active})

    def participant_updated(self, participant: Participant) -> None:
        if not participant.hidden:
            self.broadcast(
                {"type": "participant_updated", "participant": participant.info()},
                exclude=participant,
            )

    def find_track(self, track_sid: str) -> tuple[Participant, PublishedTrack] | None:
        for participant in self.participants.values():
            track = participant.tracks.get(track_sid)
            if track is not None:
                return participant, track
        return None

    def deliver_data(self, sender: Participant, label: str, envelope: Envelope) -> int:
        """Relay a data message; `from` is always the sender's authenticated identity."""
        message = orjson.dumps(
            {
                **(envelope.extra or {}),  # first: receivers tell LiveKit-only packets by it
                "from": sender.identity,
                "from_sid": sender.sid,
                "topic": envelope.topic,
                "payload": envelope.payload,
            }
        )
        to = envelope.to
        wanted = set(to) if to is not None else None
        delivered = 0
        for participant in self.participants.values():
            if participant is sender or not may_subscribe(participant.grant).allowed:
                continue
            if wanted is not None and participant.identity not in wanted:
                continue
            if participant.send_data(label, message):
                delivered += 1
        return delivered

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._phases.give_back(self.phase)
        self._deadlines = Deadlines()
        if self.timer is not None:
            self.timer.stop()
        self.emit("room_finished")


class RoomRegistry:
    def __init__(self, default_limits: LimitsConfig) -> None:
        self.default_limits = default_limits
        self.rooms: dict[str, Room] = {}
        # Shared by every room, so a listener added later sees rooms created earlier too.
        self.listeners: list[Listener] = []
        # Called when a room reaches its max_duration (the server ends its sessions).
        self.on_expired: Callable[[Room], None] | None = None

    def get(self, name: str) -> Room | None:
        return self.rooms.get(name)

    def create(self, name: str, *, limits: LimitsConfig | None = None, metadata: str = "") -> Room:
        room = Room(
            name, limits or self.default_limits, metadata=metadata, listeners=self.listeners
        )
        room.on_empty = self._drop_empty
        room.on_expired = self._expired
        self.rooms[name] = room
        room.emit("room_started")
        room.timer = TimerDriver(room)
        room.start()
        return room

    def remove(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        room.close()

    def _expired(self, room: Room) -> None:
        if self.on_expired is not None:
            self.on_expired(room)

    def _drop_empty(self, room: Room) -> None:
        if not room.participants:
            self.remove(room)
            log.info("room %s closed after empty_timeout", room.sid)

    def participant_count(self) -> int:
        return sum(len(r.participants) for r in self.rooms.values())
