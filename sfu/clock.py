"""One clock and one timer per owner, in the style of aioquic's sans-I/O connection.

Every stateful owner (room, session, a participant's feedback) is a state machine that takes
`now` as an argument: it exposes `next_deadline()` and `handle_timer(now)`, and never reads a
clock or arms a loop timer itself. `TimerDriver` is the only piece that touches the event loop:
it keeps one `call_at` handle per owner, at the owner's next deadline, on the loop's monotonic
clock (`loop.time()`). Tests drive owners directly with chosen `now` values, without sleeping.

Wall-clock instants (a token's `exp`) are converted to this clock at the edge, once, with
`deadline_at`.

Periodic work that need not be exact (reports once a second, quality every 2 s, the speaker
round, the loop-lag probe) is due on one grid of the loop clock (`on_tick`): the timers of every
owner due in the same slot then fire in one loop wake-up instead of one wake-up each. An idle
server's CPU is mostly wake-ups (docs/benchmarks.md, "Per-input and idle cost"). Owners with
work per participant (a participant's reports) or per room (its speaker round) take one of
PHASES offsets within the tick (`Phases`), so that a busy server's reports are not all due in
one wake-up: at 216 participants the tick's one wake-up held 5-8 ms of reports, every packet
arriving meanwhile waited behind them (the receive-to-send p99).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Generic, Protocol, TypeVar

log = logging.getLogger("keyroom.clock")

K = TypeVar("K")

# The grid of periodic deadlines, in seconds: a power-of-two fraction, so every grid instant is
# the same float whoever computes it. TICK_SLACK: a deadline may come this much early rather
# than a whole tick late (a timer that fired a millisecond late re-arms for the same phase).
TICK = 0.25
TICK_SLACK = 0.05
# Offsets within a tick for per-participant periodic work: whole milliseconds, as the loop's
# timers are (an offset between two of its milliseconds would wake the loop up early again and
# again until the deadline is reached). One phase per PER_PHASE owners present, up to PHASES:
# a small server keeps its few wake-ups (each costs the loop a pass: idle CPU), a busy one
# spreads its reports.
PHASES = 16
PHASE_STEP = 0.015
PER_PHASE = 8


class Timed(Protocol):
    def next_deadline(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


def now() -> float:
    """The server's one clock: the running loop's monotonic time, in seconds."""
    return asyncio.get_running_loop().time()


def deadline_at(unix_time: float, now: float, wall_now: float | None = None) -> float:
    """The loop-clock instant at which the wall clock reads `unix_time`."""
    return now + unix_time - (time.time() if wall_now is None else wall_now)


def on_tick(when: float, phase: float = 0.0) -> float:
    """The grid instant for a periodic deadline meant for `when`: the first at or after
    `when - TICK_SLACK`, on the grid shifted by `phase` (0 <= phase < TICK)."""
    grid = math.ceil((when - phase - TICK_SLACK) / TICK) * TICK
    return grid + phase if not phase else round(grid + phase, 3)


class Phases:
    """Deals tick offsets to owners of periodic work: the least used of the phases that the
    owners present call for, so owners joining at one instant still spread once there are
    enough of them, and the phases stay balanced as the population grows."""

    def __init__(self) -> None:
        self._owners = [0] * PHASES

    def take(self) -> float:
        present = sum(self._owners) + 1
        usable = min(PHASES, -(-present // PER_PHASE))
        index = min(range(usable), key=self._owners.__getitem__)
        self._owners[index] += 1
        return round(index * PHASE_STEP, 3)

    def give_back(self, phase: float) -> None:
        index = round(phase / PHASE_STEP)
        if self._owners[index]:
            self._owners[index] -= 1


# The server's dealers: participants' reports (sfu/feedback.py), rooms' speaker rounds
# (sfu/room.py). Rooms have their own, so that a server of many small rooms spreads their
# rounds as it spreads its participants' reports.
phases = Phases()
room_phases = Phases()


class Deadlines(Generic[K]):
    """An owner's named deadlines: the earliest is its `next_deadline()`; `pop_due` takes, in
    time order, those that have come."""

    def __init__(self) -> None:
        self._at: dict[K, float] = {}

    def set(self, key: K, when: float) -> None:
        self._at[key] = when

    def clear(self, key: K) -> None:
        self._at.pop(key, None)

    def get(self, key: K) -> float | None:
        return self._at.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def next(self) -> float | None:
        return min(self._at.values(), default=None)

    def pop_due(self, now: float) -> list[K]:
        due = sorted(
            (when, n, key) for n, (key, when) in enumerate(self._at.items()) if when <= now
        )
        for _when, _n, key in due:
            del self._at[key]
        return [key for _when, _n, key in due]


class TimerDriver:
    """Drives one `Timed` owner from the event loop with a single timer handle.

    Call `update()` after any input that may have moved the owner's next deadline."""

    def __init__(self, owner: Timed, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._owner = owner
        self._loop = loop or asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None
        self._stopped = False

    def update(self) -> None:
        if self._stopped:
            return
        deadline = self._owner.next_deadline()
        if deadline == self._armed_for and self._handle is not None:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_for = deadline
        if deadline is not None:
            self._handle = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_for = None
        now = self._loop.time()
        try:
            self._owner.handle_timer(now)
        except Exception:
            log.exception("timer of %s failed", type(self._owner).__name__)
            deadline = self._owner.next_deadline()
            if deadline is not None and deadline <= now:
                # Firing again at once would spin the loop on the same failure.
                return
        self.update()

    def stop(self) -> None:
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
