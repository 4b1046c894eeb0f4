"""What every signaling session shares: configuration, rooms, token verifier, counters."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from auth.audit import AuditLog
from auth.brake import FailureBrake
from auth.nonces import NonceStore
from auth.store import AuthStore
from auth.tokens import Claims, TokenVerifier
from sfu.clock import TimerDriver
from sfu.config import Config
from sfu.participant import Participant
from sfu.recording.manager import RecordingManager
from sfu.room import Room, RoomRegistry
from sfu.stats import Stats
from sfu.tasks import TaskSet
from signaling.messages import Join, ServerMessage
from signaling.parking import Ended, Parked, ParkingLot
from signaling.protocol import CLOSE_NORMAL, LEAVE_CLOSE

# Server frames kept for a parked participant; past this, resuming would lose events: it ends.
MAX_PARKED_FRAMES = 1000


class JoinRouter(Protocol):
    """The cluster's say on a join before this node's own checks (signaling/cluster/node.py):
    None to admit here, else the first frame's answer (a redirect or a refusal)."""

    async def route(self, join: Join, wall: float) -> ServerMessage | None: ...

    def drain(self) -> None: ...

    async def close(self) -> None: ...


class SessionHandle(Protocol):
    """What the server asks of a live session: to end it, whatever its wire format; which
    token admitted it (key revocation ends the sessions of a key)."""

    claims: Claims | None

    def end(self, reason: str, *, close_code: int | None = None) -> None: ...


@dataclass
class ServerState:
    config: Config
    verifier: TokenVerifier
    rooms: RoomRegistry
    audit: AuditLog
    store: AuthStore
    brake: FailureBrake
    stats: Stats = field(default_factory=Stats)
    sessions_by_participant: dict[str, SessionHandle] = field(default_factory=dict)
    sessions: set[SessionHandle] = field(default_factory=set)
    accepting: bool = True
    recordings: RecordingManager | None = None
    cluster: JoinRouter | None = None  # with `[cluster] redis_url`
    tasks: TaskSet = field(default_factory=lambda: TaskSet("server"))
    parking: ParkingLot = field(init=False)
    nonces: NonceStore = field(init=False)
    _parking_timer: TimerDriver | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.rooms.on_expired = self._room_expired
        self.parking = ParkingLot(self._parked_expired)
        security = self.config.security
        self.nonces = NonceStore(security.nonce_ttl, security.max_nonces)

    def _room_expired(self, room: Room) -> None:
        self.spawn(self.close_room(room, "room_closed"))

    def detach_participant(self, participant: Participant, room: Room, reason: str) -> bool:
        """End a participant from the server side (kick, revoke, room closed, replaced): it is
        out of the room when this returns. True when the caller must close its connections
        (nobody else will: it has no live session)."""
        session = self.sessions_by_participant.get(participant.sid)
        room.detach(participant, reason)  # forwarding to and from it stops now
        if session is not None:
            session.end(reason)  # its cleanup closes the peer connections
            return False
        token = self.parking.token_of(participant)
        if token is not None:
            self.parking.end(token, Ended(reason, leave_close(reason), participant.sid))
        return True

    async def end_participant(self, participant: Participant, room: Room, reason: str) -> None:
        if self.detach_participant(participant, room, reason):
            await participant.close()

    async def close_room(self, room: Room, reason: str) -> None:
        for participant in list(room.participants.values()):
            await self.end_participant(participant, room, reason)
        self.rooms.remove(room)

    def node_full(self, *, new_room: bool) -> bool:
        """Whether `[node]` limits refuse another participant (and, if needed, another room)."""
        node = self.config.node
        if node.max_participants and self.rooms.participant_count() >= node.max_participants:
            return True
        return bool(new_room and node.max_rooms and len(self.rooms.rooms) >= node.max_rooms)

    def node_tracks_full(self) -> bool:
        """Whether `[node]` refuses another published track: by count, or because publishers
        already send `max_bitrate_in` (as measured over the last second). O(1): the counts are
        kept by every publish, unpublish and bitrate measurement."""
        node, stats = self.config.node, self.stats
        if node.max_tracks and stats.tracks >= node.max_tracks:
            return True
        return bool(node.max_bitrate_in and stats.bitrate_in >= node.max_bitrate_in)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self.tasks.spawn(coro)

    # -- parking (PROTOCOL 2.7) -----------------------------------------------------------------

    def park(
        self, resume_token: str, participant: Participant, room: Room, claims: Claims, now: float
    ) -> bool:
        """Keep a participant whose socket dropped for `resume_window`; False if not allowed."""
        window = self.config.server.resume_window
        if window <= 0 or not resume_token or participant.closed or not self.accepting:
            return False
        parked = Parked(participant, room, claims)

        def hold(frame: dict[str, Any]) -> None:
            if len(parked.frames) >= MAX_PARKED_FRAMES:
                self._expire(resume_token)
            else:
                parked.frames.append(frame)

        participant.notify = hold
        participant.on_connection_failed = lambda p: self._expire(resume_token)
        self.parking.park(resume_token, parked, now + window)
        self._parking_timer_update()
        return True

    def remember_end(
        self, resume_token: str, reason: str, close_code: int, now: float, sid: str = ""
    ) -> None:
        """A live session the server ended: if its client was already gone and resumes, it
        gets this `leave` (for the resume window)."""
        window = self.config.server.resume_window
        if window > 0 and resume_token:
            self.parking.end(resume_token, Ended(reason, close_code, sid), now + window)
            self._parking_timer_update()

    def _parking_timer_update(self) -> None:
        if self._parking_timer is None:
            self._parking_timer = TimerDriver(self.parking)
        self._parking_timer.update()

    def _expire(self, resume_token: str) -> None:
        parked = self.parking.take(resume_token)
        if parked is not None:
            self._parked_expired(parked)

    def _parked_expired(self, parked: Parked) -> None:
        self.spawn(parked.room.remove(parked.participant, "disconnected"))


def leave_close(reason: str) -> int:
    """The close code that follows `leave` with `reason` (PROTOCOL 2.7)."""
    return LEAVE_CLOSE.get(reason, CLOSE_NORMAL)
