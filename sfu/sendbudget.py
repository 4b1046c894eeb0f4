"""Audio first on a thin downlink: a per-subscriber budget that video must fit (sans-I/O core).

A rate-capped link (a tbf, a congested Wi-Fi) queues what it cannot carry and drops what
overflows the queue, audio included. So, once keyroom has its own estimate of a subscriber's
downlink (transport-wide feedback, sfu/delaybwe.py), every video packet to that subscriber
(media, RTX, probe padding) takes its size from a token bucket filled at the estimate less the
audio's share; a packet that does not fit is not sent, and counts as lost on the wire (the
subscriber NACKs it; the retransmission has to fit as well). Audio never passes through the
bucket. The bucket holds at most DEPTH seconds of its rate (at least MIN_DEPTH bytes): a
keyframe's burst goes out at once only as far as the link's own queue could take it.
"""

from __future__ import annotations

import time

from sfu.forwarder import Sink

DEPTH = 0.4
MIN_DEPTH = 12_000


class SendBudget:
    """A token bucket in bytes; `rate` None: no limit (no estimate yet, or not enabled)."""

    __slots__ = ("rate", "_tokens", "_depth", "_at", "dropped")

    def __init__(self) -> None:
        self.rate: float | None = None  # bytes per second
        self._tokens = 0.0
        self._depth = float(MIN_DEPTH)
        self._at = 0.0
        self.dropped = 0

    def set_rate(self, bits_per_second: int | None, now: float) -> None:
        if bits_per_second is None:
            self.rate = None
            return
        self._refill(now)
        unlimited = self.rate is None
        self.rate = bits_per_second / 8
        self._depth = max(self.rate * DEPTH, MIN_DEPTH)
        # Full when it starts: the link was carrying more than this a moment ago.
        self._tokens = self._depth if unlimited else min(self._tokens, self._depth)

    def _refill(self, now: float) -> None:
        if self.rate is not None and now > self._at:
            self._tokens = min(self._tokens + (now - self._at) * self.rate, self._depth)
        self._at = now

    def allow(self, size: int, now: float) -> bool:
        if self.rate is None:
            return True
        self._refill(now)
        if self._tokens < size:
            self.dropped += 1
            return False
        self._tokens -= size
        return True


class BudgetedSink:
    """The subscriber transport's sink as its video down-tracks see it."""

    __slots__ = ("_sink", "budget")

    def __init__(self, sink: Sink, budget: SendBudget) -> None:
        self._sink = sink
        self.budget = budget

    def send(self, data: bytes) -> bool:
        if self.budget.rate is None or self.budget.allow(len(data), time.monotonic()):
            return self._sink.send(data)
        return True  # dropped here instead of in the link's queue: as if lost on the wire

    def steady(self) -> object:
        """The transport's sink's answer (sfu/fastpath/steady.py) while no budget applies:
        then the compiled fan-out may bypass this sink."""
        steady = getattr(self._sink, "steady", None)
        return steady() if self.budget.rate is None and steady is not None else None
