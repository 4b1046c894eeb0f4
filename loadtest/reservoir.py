"""A bounded uniform sample of a stream of values, cheap per value (the load generator offers
every received packet's latency, tens of thousands a second, on the core it must not saturate).

Li's Algorithm L: once the sample is full, the number of values to pass over before the next
one is kept is drawn at random, so most values cost a counter decrement, not a random number.
Every value of the stream has the same chance `limit / seen` of being in the sample.
"""

from __future__ import annotations

import math
import random


class Reservoir:
    __slots__ = ("values", "limit", "seen", "_skip", "_w")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.values: list[int] = []
        self.limit = limit
        self.seen = 0
        self._skip = 0
        self._w = 1.0

    def offer(self, value: int) -> None:
        self.seen += 1
        if self._skip:
            self._skip -= 1
            return
        values = self.values
        if len(values) < self.limit:
            values.append(value)
            if len(values) < self.limit:
                return
        else:
            values[random.randrange(self.limit)] = value
        self._w *= math.exp(math.log(_uniform()) / self.limit)
        self._skip = _geometric(self._w)


def _uniform() -> float:
    """In (0, 1]: a logarithm can be taken."""
    return 1.0 - random.random()


def _geometric(w: float) -> int:
    """How many values to pass over when each is kept with probability `w`."""
    if w >= 1.0:
        return 0
    return int(math.log(_uniform()) / math.log1p(-w))
