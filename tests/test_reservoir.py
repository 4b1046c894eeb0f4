"""The load generator's latency sample (loadtest/reservoir.py): bounded, and uniform over the
whole stream while most values cost a decrement."""

from __future__ import annotations

import random

import pytest

from loadtest.reservoir import Reservoir


def test_keeps_everything_until_full_then_at_most_the_limit() -> None:
    r = Reservoir(100)
    for v in range(60):
        r.offer(v)
    assert r.values == list(range(60)) and r.seen == 60
    for v in range(60, 100_000):
        r.offer(v)
    assert len(r.values) == 100 and r.seen == 100_000


def test_every_part_of_the_stream_is_equally_likely_to_be_kept() -> None:
    random.seed(14)
    kept = [0] * 10
    for _ in range(500):
        r = Reservoir(50)
        for v in range(10_000):
            r.offer(v)
        for v in r.values:
            kept[v // 1000] += 1
    # 25,000 kept values, 2,500 expected per tenth of the stream (binomial sd ~47).
    assert all(2300 < n < 2700 for n in kept), kept


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        Reservoir(0)
