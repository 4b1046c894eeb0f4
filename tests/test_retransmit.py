"""The retransmission budget: once per interval per packet, bytes earned from the media."""

from __future__ import annotations

import pytest

from sfu.retransmit import RetransmitBudget


def test_a_packet_is_resent_at_most_once_per_interval() -> None:
    budget = RetransmitBudget(min_interval=0.1)
    assert budget.allow(5, 1000, now=0.0)
    assert not budget.allow(5, 1000, now=0.05)
    assert budget.allow(5, 1000, now=0.11)


def test_resent_bytes_are_paid_from_a_share_of_the_media() -> None:
    budget = RetransmitBudget(share=0.25, burst=2000, min_interval=0.0)
    assert budget.requested([1, 2, 3], media_octets=0) == [1, 2, 3]
    assert budget.allow(1, 1000, now=0.0) and budget.allow(2, 1000, now=0.0)
    assert not budget.allow(3, 1000, now=0.0)  # burst spent
    budget.requested([3], media_octets=4000)  # 4,000 media bytes forwarded earn 1,000
    assert budget.allow(3, 1000, now=0.0)
    assert not budget.allow(4, 1, now=0.0)
    budget.requested([], media_octets=1_000_000)
    assert budget.tokens == 2000  # earning never exceeds the burst


def test_one_nack_considers_a_bounded_number_of_distinct_packets() -> None:
    budget = RetransmitBudget(max_per_nack=4)
    assert budget.requested([9, 9, 1, 9, 2, 3, 4, 5], media_octets=0) == [9, 1, 2, 3]


def test_the_memory_of_resent_packets_stays_bounded() -> None:
    budget = RetransmitBudget(burst=10**9, min_interval=0.1, max_per_nack=8)
    for seq in range(10_000):
        budget.allow(seq, 1, now=seq * 0.001)
    assert len(budget._sent_at) <= 4 * 8 + 1 + 100


def test_a_repeat_nack_is_answered_once_the_resend_should_have_arrived() -> None:
    # A short path (4 ms round trip): Chromium's repeat 20 ms later means the resend was lost.
    budget = RetransmitBudget()
    assert budget.allow(5, 1000, now=0.0, rtt=0.004)
    assert not budget.allow(5, 1000, now=0.005, rtt=0.004)  # within MIN_REPEAT
    assert budget.allow(5, 1000, now=0.02, rtt=0.004)
    # No RTT known: Chromium repeats every 100 ms, which the wire may bring a little early.
    assert budget.allow(6, 1000, now=1.0)
    assert budget.allow(6, 1000, now=1.097)


def test_a_repeat_sent_before_the_resend_could_arrive_is_refused() -> None:
    budget = RetransmitBudget()
    assert budget.allow(5, 1000, now=0.0, rtt=0.2)
    assert not budget.allow(5, 1000, now=0.05, rtt=0.2)
    assert budget.repeat_interval(0.2) == budget.repeat_interval(None) == pytest.approx(0.075)
    assert budget.repeat_interval(0.0) == 0.01
