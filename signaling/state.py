"""What every signaling session shares: configuration, rooms, token verifier, counters."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from auth.audit import AuditLog
from auth.brake import FailureBrake
from auth.store import AuthStore
from auth.tokens import Claims, TokenVerifier
from sfu.config import Config
from sfu.participant import Participant
from sfu.room import Room, RoomRegistry
from sfu.stats import Stats

# Server frames kept for a parked participant; past this, resuming would lose events: it ends.
MAX_PARKED_FRAMES = 1000


@dataclass
class Parked:
    """A participant whose socket dropped, kept (media flowing) until it resumes or times out."""

    participant: Participant
    room: Room
    claims: Claims
    timer: asyncio.TimerHandle | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)


if TYPE_CHECKING:
    from signaling.session import Session


@dataclass
class ServerState:
    config: Config
    verifier: TokenVerifier
    rooms: RoomRegistry
    audit: AuditLog
    store: AuthStore
    brake: FailureBrake
    stats: Stats = field(default_factory=Stats)
    sessions_by_participant: dict[str, Session] = field(default_factory=dict)
    sessions: set[Session] = field(default_factory=set)
    accepting: bool = True
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    parked: dict[str, Parked] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rooms.on_expired = self._room_expired

    def _room_expired(self, room: Room) -> None:
        self.spawn(self.close_room(room, "room_closed"))

    async def end_participant(self, participant: Participant, room: Room, reason: str) -> None:
        """End a participant's session from the server side (kick, revoke, room closed)."""
        session = self.sessions_by_participant.get(participant.sid)
        room.detach(participant, reason)  # forwarding to and from it stops now
        if session is not None:
            session.end(reason)  # its cleanup closes the peer connections
        else:
            self.forget_parked(participant)
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
        already send `max_bitrate_in` (as measured over the last second)."""
        node = self.config.node
        tracks = [
            t
            for room in self.rooms.rooms.values()
            for p in room.participants.values()
            for t in p.tracks.values()
        ]
        if node.max_tracks and len(tracks) >= node.max_tracks:
            return True
        return bool(node.max_bitrate_in and sum(t.bitrate for t in tracks) >= node.max_bitrate_in)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def park(self, resume_token: str, participant: Participant, room: Room, claims: Claims) -> bool:
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
        parked.timer = asyncio.get_running_loop().call_later(window, self._expire, resume_token)
        self.parked[resume_token] = parked
        return True

    def take_parked(self, resume_token: str) -> Parked | None:
        parked = self.parked.pop(resume_token, None)
        if parked is not None and parked.timer is not None:
            parked.timer.cancel()
        return parked

    def forget_parked(self, participant: Participant) -> None:
        for token, parked in list(self.parked.items()):
            if parked.participant is participant:
                self.take_parked(token)

    def _expire(self, resume_token: str) -> None:
        parked = self.take_parked(resume_token)
        if parked is not None:
            self.spawn(parked.room.remove(parked.participant, "disconnected"))
