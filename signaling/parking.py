"""Participants whose socket dropped, held for the resume window (PROTOCOL 2.7): sans-I/O.

A parked participant stays in its room, media flowing, until a `resume` takes it or its deadline
passes. When the server ends a participant while its client is away (kicked, revoked, room
closed), its resume token is remembered with the reason until the same deadline, so a `resume`
gets the `leave` the client missed rather than a token error it would retry on.

Time is passed in: `handle_timer(now)` expires what is due, `next_deadline()` says when to call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from auth.tokens import Claims
from sfu.clock import Deadlines
from sfu.participant import Participant
from sfu.room import Room


@dataclass
class Parked:
    """A participant whose socket dropped, kept (media flowing) until it resumes or times out."""

    participant: Participant
    room: Room
    claims: Claims
    frames: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Ended:
    """How the server ended a participant whose client may come back with its resume token."""

    reason: str
    close_code: int
    # The participant's sid: LiveKit's SDKs resume by sid, not by resume token.
    sid: str = ""


class ParkingLot:
    def __init__(self, on_expired: Callable[[Parked], None]) -> None:
        self._on_expired = on_expired
        self._parked: dict[str, Parked] = {}
        self._ended: dict[str, Ended] = {}
        self._ended_sids: dict[str, str] = {}  # participant sid -> resume token
        self._deadlines: Deadlines[str] = Deadlines()

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, resume_token: str, parked: Parked, until: float) -> None:
        self._parked[resume_token] = parked
        self._deadlines.set(resume_token, until)

    def peek(self, resume_token: str) -> Parked | None:
        return self._parked.get(resume_token)

    def take(self, resume_token: str) -> Parked | None:
        parked = self._parked.pop(resume_token, None)
        if parked is not None:
            self._deadlines.clear(resume_token)
        return parked

    def take_all(self) -> list[Parked]:
        return [p for token in list(self._parked) if (p := self.take(token)) is not None]

    def token_of(self, participant: Participant) -> str | None:
        return next((t for t, p in self._parked.items() if p.participant is participant), None)

    def end(self, resume_token: str, ended: Ended, until: float | None = None) -> None:
        """Forget the parked participant of `resume_token` (if any) and remember how it ended
        until `until` (by default, until it would have expired)."""
        self._parked.pop(resume_token, None)
        when = until if until is not None else self._deadlines.get(resume_token)
        if when is None:
            return
        self._ended[resume_token] = ended
        if ended.sid:
            self._ended_sids[ended.sid] = resume_token
        self._deadlines.set(resume_token, when)

    def ended(self, resume_token: str) -> Ended | None:
        return self._ended.get(resume_token)

    def ended_sid(self, sid: str) -> Ended | None:
        """How the participant `sid` ended, while its resume would still be answered."""
        token = self._ended_sids.get(sid)
        return None if token is None else self._ended.get(token)

    def next_deadline(self) -> float | None:
        return self._deadlines.next()

    def handle_timer(self, now: float) -> None:
        for token in self._deadlines.pop_due(now):
            ended = self._ended.pop(token, None)
            if ended is not None:
                self._ended_sids.pop(ended.sid, None)
            parked = self._parked.pop(token, None)
            if parked is not None:
                self._on_expired(parked)
