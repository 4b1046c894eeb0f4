"""Audio first on a thin downlink: a per-subscriber budget that video must fit, paced.

A rate-capped link (a tbf, a congested Wi-Fi) queues what it cannot carry and drops what
overflows the queue, audio included. So, once keyroom has its own estimate of a subscriber's
downlink (transport-wide feedback, sfu/delaybwe.py), every video packet to that subscriber
(media, RTX, probe padding) takes its size from a token bucket filled at the estimate less the
audio's share. Audio never passes through the bucket. The bucket holds DEPTH seconds of its
rate (at least MIN_DEPTH bytes): that much goes out at once, the rest waits its turn.

A packet that does not fit waits in the pacer's queue (in order) and leaves when the bucket
has refilled for it, as libwebrtc's pacer does: a keyframe (tens of kilobytes after a layer
switch) leaves whole, spread over a fraction of a second, instead of overflowing the link's
queue in one burst (the audio behind it lost) or being cut to the bucket's depth (the frame
never decodes, the subscriber asks for another keyframe, and so on). Only what would make the
queue longer than QUEUE seconds of the rate is dropped (counted: a layer the budget cannot
carry is loss, sfu/congestion.py), and the subscriber sees it as lost on the wire.
"""

from __future__ import annotations

from array import array
from collections import deque

from sfu import clock
from sfu.forwarder import Sink

DEPTH = 0.1
MIN_DEPTH = 6_000
# The pacer's queue: at most this many seconds of the rate (at least MIN_QUEUE bytes).
QUEUE = 0.6
MIN_QUEUE = 24_000
# Tokens short by less than this fit: at `ready_at` a packet must leave, whatever the float.
_ROUNDING = 1e-6


class SendBudget:
    """A token bucket in bytes; `rate` None: no limit (no estimate yet, or not enabled)."""

    __slots__ = ("rate", "cell", "offered", "dropped", "passed")

    def __init__(self) -> None:
        self.rate: float | None = None  # bytes per second
        # [tokens (bytes), depth (bytes), rate (bytes/s, -1: None), time of the last refill,
        # bytes waiting in the pacer], in an array: the compiled fan-out (sfu/fastpath/_build.py
        # `kr_fanout`) takes the tokens of the copies it sends through a pointer to it, as
        # `take` does, and sends none while the pacer holds any.
        self.cell = array("d", [0.0, float(MIN_DEPTH), -1.0, 0.0, 0.0])
        # Packets offered to the pacer (media, RTX), those it dropped, bytes that left.
        self.offered = self.dropped = self.passed = 0

    def set_rate(self, bits_per_second: int | None, now: float) -> None:
        if bits_per_second is None:
            self.rate = None
            self.cell[2] = -1.0
            return
        self._refill(now)
        unlimited = self.rate is None
        self.rate = max(bits_per_second, 0) / 8
        cell = self.cell
        cell[2] = self.rate
        depth = cell[1] = max(self.rate * DEPTH, MIN_DEPTH)
        # Full when it starts: the link was carrying more than this a moment ago. Nothing at
        # all when the audio takes the whole level.
        cell[0] = depth if unlimited else min(cell[0], depth)
        if not self.rate:
            cell[0] = 0.0

    def _refill(self, now: float) -> None:
        cell = self.cell
        if self.rate is not None and now > cell[3]:
            cell[0] = min(cell[0] + (now - cell[3]) * self.rate, cell[1])
        cell[3] = max(cell[3], now)

    def take(self, size: int, now: float) -> bool:
        """Whether `size` bytes fit now (then they are spent)."""
        if self.rate is None:
            return True
        self._refill(now)
        cell = self.cell
        if cell[0] < min(size, cell[1]) - _ROUNDING:
            return False
        cell[0] -= size  # a packet over the depth leaves the bucket in debt
        return True

    def ready_at(self, size: int) -> float | None:
        """When `size` bytes will fit (None: never at this rate)."""
        at = self.cell[3]
        if self.rate is None:
            return at
        missing = min(size, self.cell[1]) - self.cell[0]
        if missing <= 0:
            return at
        return at + missing / self.rate if self.rate > 0 else None

    def queue_limit(self) -> float:
        """The most bytes the pacer may hold at this rate."""
        if self.rate is None or self.rate <= 0:
            return 0.0
        return max(self.rate * QUEUE, MIN_QUEUE)


class Pacer:
    """The video packets waiting for the budget (sans-I/O, `now` passed in)."""

    __slots__ = ("budget", "_queue", "queued")

    def __init__(self, budget: SendBudget) -> None:
        self.budget = budget
        self._queue: deque[bytes] = deque()
        self.queued = 0  # bytes waiting

    def offer(self, data: bytes, now: float) -> list[bytes]:
        """`data` to send: the packets that may leave now, in order (`data` among them, or
        queued, or dropped and counted when the queue is full)."""
        self.budget.offered += 1
        if not self._queue and self.budget.take(len(data), now):
            self.budget.passed += len(data)
            return [data]
        if self.queued + len(data) > self.budget.queue_limit() and self.budget.rate is not None:
            self.budget.dropped += 1
        else:
            self._queue.append(data)
            self.queued += len(data)
        return self.due(now)

    def due(self, now: float) -> list[bytes]:
        """The queued packets that may leave now."""
        queue, budget = self._queue, self.budget
        out = []
        while queue and budget.take(len(queue[0]), now):
            packet = queue.popleft()
            self.queued -= len(packet)
            budget.passed += len(packet)
            out.append(packet)
        budget.cell[4] = self.queued
        return out

    def next_deadline(self) -> float | None:
        return self.budget.ready_at(len(self._queue[0])) if self._queue else None


class BudgetedSink:
    """The subscriber transport's sink as its video down-tracks see it: paced within the
    budget (the I/O edge of Pacer: its timer sends what waited)."""

    __slots__ = ("_sink", "pacer", "budget", "_timer")

    def __init__(self, sink: Sink, budget: SendBudget) -> None:
        self._sink = sink
        self.budget = budget
        self.pacer = Pacer(budget)
        self._timer: clock.TimerDriver | None = None

    def send(self, data: bytes) -> bool:
        pacer = self.pacer
        if self.budget.rate is None and not pacer.queued:
            return self._sink.send(data)
        for packet in pacer.offer(data, clock.now()):
            self._sink.send(packet)
        self._arm()
        return True  # queued, or dropped here instead of in the link's queue

    def send_padding(self, data: bytes) -> bool:
        """A probe's padding: sent only if nothing waits and it fits now, else dropped
        uncounted (padding that waits proves nothing, and would crowd the media out of the
        queue; its drops are no loss of the video). False when not sent."""
        budget = self.budget
        if budget.rate is not None:
            if self.pacer.queued or not budget.take(len(data), clock.now()):
                return False
        return self._sink.send(data)

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = clock.TimerDriver(self)
        self._timer.update()

    def next_deadline(self) -> float | None:
        return self.pacer.next_deadline()

    def handle_timer(self, now: float) -> None:
        for packet in self.pacer.due(now):
            self._sink.send(packet)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.stop()

    def steady(self) -> object:
        """The transport's sink's answer (sfu/fastpath/steady.py) while nothing waits in the
        pacer: then the compiled fan-out may bypass this sink, spending the budget's tokens
        itself (`budget`) and handing back to `send` a copy that does not fit."""
        steady = getattr(self._sink, "steady", None)
        if not self.pacer.queued and steady is not None:
            return steady()
        return None
