"""The garbage collector in a forwarding process: what exists before serving is frozen, every
collection's pause is measured, and in the server full collections follow departures.

Steady forwarding allocates next to nothing the collector tracks (the compiled receive and
fan-out pass bytes and preallocated buffers around): at 21 rooms of 9 participants, 3 young
collections and no full one in 20 s. What the old generation holds is the participants
themselves, ~970 tracked objects each (aiortc's peer connections, transports, parsed SDP,
tasks; docs/benchmarks.md "What the collector walks"), and a full collection walks them all at
~0.5 µs each: 90 ms at 189 participants, every room's packets waiting meanwhile. CPython runs
one whenever the old generation has grown by a quarter, so joins alone (objects that are all
alive) set them off: 5 in a ramp of 189 joins, the last ones 30-90 ms, and the tail of a ramp
lands in the steady run after it.

What a full collection finds is, above all, the cycles of participants who have left. So the
server runs them itself (`OldGeneration`): once a quarter of the participants present have left
since the last one (the same proportion as CPython's trigger, counted in what becomes garbage
rather than in what grows), or, for anything else that reaches the old generation, when
CPython's own condition holds but at most once in MAX_INTERVAL (a ramp of joins: one a minute
instead of one per quarter of growth). A process without participants (a fan-out worker) keeps
CPython's schedule.

The modules, classes and configuration loaded at start live as long as the process, so they
are moved out of the collector's scans (`gc.freeze`). The young thresholds stay CPython's:
raising the young generation's (tried: 50,000) let the cycles of participants who left wait
for a rare full collection (the churn soak's RSS grew 16 % in 35 s).

Each collection's duration goes to `keyroom_gc_pause_seconds{generation}` (a callback at its
start and stop), so a benchmark reads how many full collections fell in its window and how
long they stopped the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Iterator

from sfu.clock import TimerDriver
from sfu.metrics import GC_PAUSE_SECONDS

# A full collection is owed once this share of the participants present has left since the
# last one ...
DEPARTED_SHARE = 0.25
# ... or, for what else reaches the old generation, once CPython's own condition holds (what
# the middle collections promoted since the last full one exceeds a quarter of what that one
# left), but at most once in this long (s).
MAX_INTERVAL = 60.0
PROMOTED_SHARE = 0.25
# How often the server looks (s).
CHECK_INTERVAL = 1.0
# gc.set_threshold's third value: middle collections before CPython's own full one (never).
NEVER = 2**31 - 1

_departures = 0


def apply() -> None:
    """Called once, just before the process starts serving."""
    if not any(isinstance(c, PauseTimer) for c in gc.callbacks):
        gc.callbacks.append(PauseTimer())
    gc.collect()
    gc.freeze()


def departed() -> None:
    """A participant has left (its peer connections are being closed)."""
    global _departures
    _departures += 1


def owed(departed: int, present: int, elapsed: float, promoted: int, old: int) -> bool:
    """Whether a full collection is due: since the last one, `elapsed` s ago, `departed`
    participants left and `present` remain, and `promoted` objects reached the old generation,
    which that collection left with `old`."""
    if departed and departed >= DEPARTED_SHARE * present:
        return True
    return elapsed >= MAX_INTERVAL and promoted > PROMOTED_SHARE * old


class OldGeneration:
    """When the server's full collections run (a `sfu/clock.py` owner; `start` takes them over
    from CPython, `stop` gives them back)."""

    def __init__(self, present: Callable[[], int], now: float) -> None:
        self._present = present
        self._last = now
        self._departures = _departures
        self._next = now + CHECK_INTERVAL
        self._thresholds: tuple[int, int, int] | None = None
        self.promotions = Promotions()
        self.collections = 0

    def start(self) -> None:
        if self._thresholds is None:
            self._thresholds = gc.get_threshold()
            young, middle, _ = self._thresholds
            gc.set_threshold(young, middle, NEVER)
            self.promotions.old = len(gc.get_objects(2))
            # First: a full collection's pause, as PauseTimer times it, includes its count.
            gc.callbacks.insert(0, self.promotions)

    def stop(self) -> None:
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
            gc.callbacks.remove(self.promotions)

    def next_deadline(self) -> float | None:
        return self._next

    def handle_timer(self, now: float) -> None:
        self._next = now + CHECK_INTERVAL
        departed, promotions = _departures - self._departures, self.promotions
        if owed(departed, self._present(), now - self._last, promotions.promoted, promotions.old):
            gc.collect()
            self._last, self._departures = now, _departures
            self.collections += 1


@contextlib.contextmanager
def full_collections(present: Callable[[], int]) -> Iterator[None]:
    """Inside, the running loop runs this process's full collections (the server's, with its
    participant count); CPython's schedule again after."""
    owner = OldGeneration(present, asyncio.get_running_loop().time())
    owner.start()
    driver = TimerDriver(owner)
    driver.update()
    try:
        yield
    finally:
        driver.stop()
        owner.stop()


class Promotions:
    """A `gc.callbacks` entry counting what CPython counts to schedule full collections: the
    objects middle collections promote to the old generation (those they examined less those
    they freed) and what the last full collection left there. Counting costs a list of the
    young objects per middle collection (a few thousand, every few seconds) and one of the old
    generation per full collection."""

    __slots__ = ("promoted", "old", "_examined")

    def __init__(self) -> None:
        self.promoted = 0
        self.old = 0
        self._examined = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        generation = info["generation"]
        if generation == 1:
            if phase == "start":
                self._examined = len(gc.get_objects(0)) + len(gc.get_objects(1))
            else:
                self.promoted += max(0, self._examined - info["collected"])
        elif generation == 2 and phase == "stop":
            self.promoted, self.old = 0, len(gc.get_objects(2))


class PauseTimer:
    """A `gc.callbacks` entry: each collection's duration, by generation, to the histogram."""

    __slots__ = ("_started", "_observe")

    def __init__(self) -> None:
        self._started = 0.0
        self._observe: tuple[Callable[[float], None], ...] = tuple(
            GC_PAUSE_SECONDS.labels(generation=str(g)).observe for g in range(3)
        )

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self._observe[info["generation"]](time.perf_counter() - self._started)
