"""The delay-based estimate from transport-wide feedback (sfu/delaybwe.py), fed synthetic
arrival patterns: a bottleneck queue, a clean link, jitter, loss. Time is passed in."""

from __future__ import annotations

import random

import pytest

from sfu.delaybwe import EARLY_QUEUE, OVERUSE, OVERUSE_QUEUE, DelayBasedEstimate, Trendline
from sfu.twcc import PacketResult

SIZE = 1200  # bytes


class Link:
    """A bottleneck of `capacity` bit/s with a FIFO queue (arrival = when it leaves the queue)
    and a fixed propagation delay; feedback every 100 ms with what arrived by then."""

    def __init__(self, capacity: float, jitter: float = 0.0, loss: float = 0.0) -> None:
        self.capacity = capacity
        self.jitter = jitter
        self.loss = loss
        self.clock = 0.0
        self.sequence = 0
        self.free_at = 0.0  # when the queue is empty
        self.pending: list[PacketResult] = []
        self.random = random.Random(7)

    def run(self, estimate: DelayBasedEstimate, rate: float, seconds: float) -> list[int | None]:
        """Send `rate` bit/s for `seconds`; the estimate after each feedback."""
        interval = SIZE * 8 / rate
        end = self.clock + seconds
        next_feedback = self.clock + 0.1
        estimates: list[int | None] = []
        send = self.clock
        while send < end:
            while next_feedback <= send:
                estimates.append(self._feedback(estimate, next_feedback))
                next_feedback += 0.1
            leaves = max(send, self.free_at) + SIZE * 8 / self.capacity
            self.free_at = leaves
            arrival = leaves + 0.02 + self.random.uniform(0, self.jitter)
            lost = self.random.random() < self.loss
            self.pending.append(
                PacketResult(self.sequence, send, SIZE, None if lost else int(arrival * 1e6))
            )
            self.sequence += 1
            send += interval
        self.clock = end
        return estimates

    def _feedback(self, estimate: DelayBasedEstimate, now: float) -> int | None:
        arrived = [p for p in self.pending if p.arrival_us is None or p.arrival_us <= now * 1e6]
        self.pending = [p for p in self.pending if p not in arrived]
        return estimate.on_feedback(arrived, now)


def test_a_link_that_keeps_up_is_never_called_congested() -> None:
    estimate = DelayBasedEstimate()
    link = Link(capacity=2_000_000)
    assert all(e is None for e in link.run(estimate, 1_000_000, 10.0))
    assert estimate.overuses == 0


def test_jitter_without_a_trend_is_not_congestion() -> None:
    estimate = DelayBasedEstimate()
    link = Link(capacity=3_000_000, jitter=0.008)
    link.run(estimate, 1_000_000, 15.0)
    assert estimate.overuses == 0


def test_a_filling_queue_brings_the_estimate_under_the_capacity_within_a_second() -> None:
    estimate = DelayBasedEstimate()
    link = Link(capacity=300_000)
    estimates = link.run(estimate, 600_000, 1.5)
    first = next(n for n, e in enumerate(estimates) if e is not None)
    assert first <= 10  # feedbacks, 100 ms apart
    assert estimate.trendline.state == OVERUSE or estimate.overuses >= 1
    value = estimates[first]
    assert value is not None and 200_000 <= value <= 300_000


def test_after_backing_off_the_estimate_grows_but_only_towards_what_is_sent() -> None:
    estimate = DelayBasedEstimate()
    link = Link(capacity=300_000)
    link.run(estimate, 600_000, 1.5)
    assert estimate.estimate is not None
    # Sending 200 kbit/s under the cap: the queue drains (at the capacity: that much got
    # through), then the estimate grows at most to 1.5x what gets through, never back to the
    # 600 kbit/s that overflowed the link.
    link.run(estimate, 200_000, 8.0)
    assert estimate.estimate is not None
    assert 200_000 <= estimate.estimate <= 1.5 * 300_000


def test_the_estimate_grows_gradually_and_never_jumps_to_a_burst() -> None:
    estimate = DelayBasedEstimate()
    link = Link(capacity=300_000)
    link.run(estimate, 600_000, 2.0)
    link.run(estimate, 200_000, 3.0)
    before = estimate.estimate
    assert before is not None
    link.capacity = 50_000_000  # a token bucket's burst, or a freed link: 1.2 Mbit/s arrives
    link.run(estimate, 1_200_000, 0.5)
    after = estimate.estimate
    assert after is not None and before <= after <= before * 1.08**0.7
    link.run(estimate, 1_200_000, 5.0)  # sustained without a queue: it keeps growing
    assert estimate.estimate is not None and estimate.estimate > after * 1.2


def test_at_the_capacity_the_estimate_saw_tooths_just_under_it() -> None:
    estimate = DelayBasedEstimate()
    link = Link(capacity=300_000)
    link.run(estimate, 600_000, 1.0)
    samples = []
    for _ in range(20):  # a sender that follows the estimate
        rate = max(estimate.estimate or 300_000, 50_000)
        samples += [e for e in link.run(estimate, rate, 1.0) if e is not None]
    tail = samples[len(samples) // 2 :]
    assert max(tail) <= 1.5 * 300_000
    assert sum(tail) / len(tail) >= 0.6 * 300_000


def test_loss_is_counted_and_skipped_by_the_trend() -> None:
    estimate = DelayBasedEstimate()
    link = Link(capacity=2_000_000, loss=0.1)
    link.run(estimate, 500_000, 5.0)
    assert estimate.lost > 0 and estimate.received > 0
    assert estimate.overuses == 0


def test_a_link_that_suddenly_narrows_is_measured_at_its_new_rate() -> None:
    estimate = DelayBasedEstimate()
    link = Link(capacity=5_000_000)
    assert all(e is None for e in link.run(estimate, 1_500_000, 3.0))
    link.capacity = 300_000  # a cap falls: what arrives before it must not inflate the cut
    after = link.run(estimate, 1_500_000, 1.5)  # one value per 100 ms
    first = next(n for n, e in enumerate(after) if e is not None)
    assert first <= 3
    # The first cut is made from the last 200 ms of arrivals (the 1.5 Mbit/s before the cap
    # would make it ~950 kbit/s), the next ones from the narrowed link alone.
    assert after[first] is not None and after[first] <= 2 * 300_000
    assert max(e for e in after[first + 4 :] if e is not None) <= 300_000


def test_the_queuing_delay_is_what_every_packet_of_a_feedback_waited_beyond_the_least() -> None:
    estimate = DelayBasedEstimate()
    link = Link(capacity=2_000_000, jitter=0.01)
    link.run(estimate, 500_000, 3.0)
    assert estimate.queue_delay < 0.01  # jitter: some packets late, never all of them
    link.capacity = 400_000  # sent faster than it leaves: the queue grows 250 ms a second
    link.run(estimate, 500_000, 0.5)
    assert 0.05 < estimate.queue_delay < 0.16
    link.capacity = 2_000_000
    link.run(estimate, 500_000, 1.0)  # drained
    assert estimate.queue_delay < 0.01


def test_the_link_rate_is_what_arrived_after_the_first_packet_over_the_time_since() -> None:
    estimate = DelayBasedEstimate()
    link = Link(capacity=300_000)
    link.run(estimate, 300_000, 2.0)
    rate = estimate.link_rate()
    assert rate is not None and 290_000 <= rate <= 306_000  # was a packet more: ~360k


def standing(estimate: DelayBasedEstimate, start: float, seconds: float, queue: float) -> None:
    """300 kbit/s through a link that carries it, every packet `queue` s late: no trend."""
    for n in range(int(seconds * 10)):
        t = start + n / 10
        results = [
            PacketResult(
                int(t * 1000) + k, t + k / 32, SIZE, int((t + k / 32 + 0.02 + queue) * 1e6)
            )
            for k in range(3)
        ]
        estimate.on_feedback(results, t + 0.1)


def test_a_queue_kept_full_at_the_link_rate_is_drained() -> None:
    """A trend sees a queue growing, not one standing: after a cap fell, a sender at the link's
    own rate kept ~450 ms queued for 5 s (bench-simulcast), the audio dropped whenever the
    rate limiter's queue overflowed. Once an estimate exists, a standing queue is cut like an
    overuse, and the estimate does not grow into it."""
    estimate = DelayBasedEstimate()
    standing(estimate, 0.0, 3.0, 0.0)
    estimate.estimate = 400_000  # after a first overuse
    standing(estimate, 3.0, 1.0, 0.0)
    assert estimate.estimate >= 400_000  # no queue: it grows
    standing(estimate, 4.0, 2.0, 0.2)
    assert estimate.queue_delay == pytest.approx(0.2)
    assert estimate.estimate is not None and estimate.estimate <= 0.86 * 300_000


def test_a_stall_of_a_feedback_or_two_is_no_standing_queue_and_a_cut_never_raises() -> None:
    estimate = DelayBasedEstimate()
    standing(estimate, 0.0, 3.0, 0.0)
    estimate.estimate = 400_000
    estimate.trendline = Trendline()  # a fresh trend (too few groups to say): the rule alone
    standing(estimate, 3.0, 0.3, 0.2)  # every packet 200 ms late for 300 ms: a stall
    standing(estimate, 3.3, 1.0, 0.0)
    assert estimate.estimate >= 400_000
    estimate.estimate = 100_000
    estimate.trendline.state = OVERUSE  # an overuse while 300 kbit/s arrive: no rise to 255k
    estimate.on_feedback([], 10.0)
    assert estimate.estimate == 100_000


def test_an_overuse_without_a_queue_is_a_stall_not_congestion() -> None:
    """bench-simulcast on a loaded machine: the unconstrained subscriber's feedback after a
    stall (arrivals bunched, one packet through an empty queue) read as an overuse; cut to 85 %
    of what arrived, it left the top layer for seconds. With no queue nothing is cut (nor
    grown); with every packet of the feedback queued, the same overuse is."""
    estimate = DelayBasedEstimate()
    standing(estimate, 0.0, 1.0, 0.0)
    estimate.trendline.state = OVERUSE
    estimate.on_feedback([], 1.1)
    assert estimate.estimate is None and estimate.overuses == 0
    standing(estimate, 1.2, 0.2, 2 * OVERUSE_QUEUE)
    assert estimate.queue_delay >= OVERUSE_QUEUE
    estimate.trendline.state = OVERUSE
    estimate.on_feedback([], 1.5)
    assert estimate.estimate is not None and estimate.overuses == 1


def test_a_queue_growing_past_a_threshold_is_an_overuse_before_the_trend_says_so() -> None:
    """bench-simulcast: under a new 300 kbit/s cap the feedback showed 12, 49, 100, 134 ms of
    queue and the trend said overuse at 232 ms, 0.25 s later; the tbf's queue (~0.5 s)
    overflowed meanwhile, audio included. A queue growing past EARLY_QUEUE cuts at once, and
    again while it grows (the first cut may rest on a rate inflated by the tbf's token burst);
    one that shrinks (a stall's bunched arrivals) or jumps from nothing (one late feedback)
    does not."""
    jump = DelayBasedEstimate()
    standing(jump, 0.0, 1.0, 0.0)
    standing(jump, 1.0, 0.1, 2 * EARLY_QUEUE)
    assert jump.estimate is None
    standing(jump, 1.1, 0.1, 1.5 * EARLY_QUEUE)  # shrinking
    assert jump.estimate is None
    growing = DelayBasedEstimate()
    standing(growing, 0.0, 1.0, 0.0)
    standing(growing, 1.0, 0.1, OVERUSE_QUEUE + 0.01)
    assert growing.estimate is None
    standing(growing, 1.1, 0.1, EARLY_QUEUE + 0.01)
    assert growing.estimate is not None and growing.overuses == 1
    standing(growing, 1.2, 0.3, EARLY_QUEUE + 0.01)  # stays: no second cut
    assert growing.overuses == 1
    standing(growing, 1.5, 0.1, EARLY_QUEUE + 0.05)  # grows again
    assert growing.overuses == 2
