"""Audio first under a cap (sfu/sendbudget.py): the video budget, and congestion control
driving it from transport feedback (sfu/congestion.py). Time is passed in."""

from __future__ import annotations

import pytest

from sfu import clock
from sfu.congestion import PACING_SLACK, Congestion
from sfu.forwarder import DownTrack
from sfu.layerswitch import PAUSED
from sfu.sendbudget import DEPTH, MIN_DEPTH, MIN_QUEUE, QUEUE, BudgetedSink, Pacer, SendBudget
from sfu.twcc import PacketResult
from tests.conftest import eventually
from tests.sink_helpers import ListSink
from tests.test_congestion import simulcast_subscription


def test_no_rate_means_no_limit() -> None:
    pacer = Pacer(SendBudget())
    assert all(pacer.offer(b"x" * 1200, 0.0) == [b"x" * 1200] for _ in range(1000))
    assert pacer.budget.dropped == 0 and pacer.next_deadline() is None


def drain(pacer: Pacer, start: float) -> list[tuple[float, int]]:
    """Run the pacer's timer until its queue is empty: (when, bytes) of what left."""
    left = []
    while (deadline := pacer.next_deadline()) is not None:
        assert deadline >= start
        left += [(deadline, len(p)) for p in pacer.due(deadline)]
    return left


def test_a_burst_leaves_at_the_rate_and_only_what_overflows_the_queue_is_dropped() -> None:
    budget = SendBudget()
    budget.set_rate(400_000, 0.0)  # 50 kB/s
    depth, limit = max(50_000 * DEPTH, MIN_DEPTH), max(50_000 * QUEUE, MIN_QUEUE)
    pacer = Pacer(budget)
    burst = [b"x" * 1000 for _ in range(60)]
    at_once = [p for packet in burst for p in pacer.offer(packet, 0.0)]
    assert len(at_once) == depth // 1000  # the bucket's depth goes out at once
    assert pacer.queued == limit and budget.dropped == 60 - len(at_once) - limit // 1000
    left = drain(pacer, 0.0)
    assert len(left) == limit // 1000
    # Never faster than the rate (beyond the depth), and all gone within the queue's time.
    for n, (when, _) in enumerate(left):
        assert (len(at_once) + n + 1) * 1000 <= depth + 50_000 * when + 1
    assert left[-1][0] <= QUEUE + 0.01
    assert pacer.offer(b"y" * 1000, left[-1][0]) == []  # waits for the bucket to refill
    assert drain(pacer, left[-1][0])[0][0] > left[-1][0]


def test_a_keyframe_under_a_thin_budget_leaves_whole_and_paced() -> None:
    """A low layer's keyframe after a switch (24 kB) at 300 kbit/s: the bucket alone cut it
    to its depth, the frame never decoded, and the subscriber asked for another, and so on."""
    budget = SendBudget()
    budget.set_rate(300_000, 0.0)
    pacer = Pacer(budget)
    keyframe = [bytes([n]) * 1200 for n in range(20)]
    sent = [p for packet in keyframe for p in pacer.offer(packet, 0.0)]
    left = drain(pacer, 0.0)
    assert budget.dropped == 0 and len(sent) + len(left) == 20
    assert left[-1][0] == pytest.approx((24_000 - len(sent) * 1200) / 37_500, abs=0.05)


def test_an_unlimited_budget_flushes_the_queue_and_a_zero_one_passes_nothing() -> None:
    budget = SendBudget()
    budget.set_rate(100_000, 0.0)  # 12.5 kB/s: the minimum depth (5 packets) at once
    pacer = Pacer(budget)
    assert sum(len(pacer.offer(b"x" * 1200, 0.0)) for _ in range(10)) == MIN_DEPTH // 1200
    budget.set_rate(None, 0.1)  # the estimate is gone: what waited leaves at once
    deadline = pacer.next_deadline()
    assert deadline is not None and deadline <= 0.1
    assert len(pacer.due(0.1)) == 10 - MIN_DEPTH // 1200
    budget.set_rate(-40_000, 0.2)  # the audio takes the whole level
    assert pacer.offer(b"x" * 1200, 0.2) == [] and pacer.queued == 0 and budget.dropped == 1
    assert pacer.next_deadline() is None


async def test_a_budgeted_sink_sends_what_waited_from_its_timer() -> None:
    sink = ListSink()
    budget = SendBudget()
    budgeted = BudgetedSink(sink, budget)
    assert budgeted.send(b"x" * 1200) and len(sink.sent) == 1  # no rate: straight through
    budget.set_rate(400_000, clock.now())
    assert all(budgeted.send(bytes([n]) * 1200) for n in range(20))  # the forwarder carries on
    assert len(sink.sent) < 21
    await eventually(lambda: len(sink.sent) == 21, 5, "the queued packets never left")
    assert [p[0] for p in sink.sent[1:]] == list(range(20))  # in order
    assert budget.dropped == 0


def feedback(
    first: int, count: int, start: float, spacing: float, delay: float
) -> list[PacketResult]:
    """`count` 1200-byte packets sent `spacing` apart from `start`, arriving after a delay
    that grows by `delay` per packet (a filling queue) or stays (delay 0)."""
    return [
        PacketResult(
            first + n,
            start + n * spacing,
            1200,
            int((start + n * spacing + 0.02 + (first + n) * delay) * 1e6),
        )
        for n in range(count)
    ]


def test_paced_congestion_sets_the_video_budget_from_its_own_estimate() -> None:
    track, down = simulcast_subscription()
    unpaced = Congestion({track.sid: down})
    unpaced.on_remb(300_000, 0.0)
    unpaced.tick(0.0)
    # REMB only: no budget (the browser would read the pacer's delay as a queue on the link)
    assert unpaced.budget.rate is None

    congestion = Congestion({track.sid: down})
    congestion.paced = True
    congestion.tick(0.0)
    assert congestion.budget.rate is None  # no estimate yet: nothing to pace at
    # 2 Mbit/s into a link whose queue grows 2 ms per packet: overuse, the estimate falls
    # below what arrived, and the budget follows at once (the layers at the next reaction).
    t, seq = 0.0, 0
    while congestion.estimator.delay_based is None and t < 5:
        congestion.on_transport_feedback(feedback(seq, 20, t, 0.005, 0.002), t + 0.1)
        congestion.react(t + 0.1)
        seq, t = seq + 20, t + 0.1
    estimate = congestion.estimator.estimate()
    assert estimate is not None and estimate < 2_000_000
    assert congestion.budget.rate is not None
    # No audio here: video may have the whole level, and at least its chosen layers' need.
    chosen = track.layers[congestion.choice[track.sid]].expected
    assert congestion.budget.rate * 8 == max(estimate, int(chosen * PACING_SLACK))


def paced_under_remb() -> Congestion:
    """A paced subscriber of a simulcast track, its estimate a 2 Mbit/s REMB, allocated at 0."""
    track, down = simulcast_subscription()
    congestion = Congestion({track.sid: down})
    congestion.paced = True
    congestion.on_remb(2_000_000, 0.0)
    congestion.tick(0.0)
    return congestion


def test_what_the_budget_holds_back_counts_as_loss() -> None:
    congestion = paced_under_remb()
    budget = congestion.budget
    budget.offered += 100
    budget.passed += 100_000
    congestion.tick(1.0)
    assert congestion.estimator.estimate() == 2_000_000  # nothing held back: no news
    # A layer the budget cannot carry: 40 of 140 packets held back. The link saw no loss, but
    # the estimate falls, and the layer with it, rather than a video that never arrives.
    budget.offered += 140
    budget.dropped += 40
    budget.passed += 100_000
    congestion.tick(2.0)
    estimate = congestion.estimator.estimate()
    assert estimate is not None and estimate < 2_000_000
    assert congestion.estimator.decreased_since(2.0)


def test_a_pacer_that_held_back_everything_offered_still_passed_its_rate() -> None:
    """Its queue full for a whole tick: every new packet dropped, but the queue still drained
    at the budget's rate. Read as 100 % loss, the estimate fell to 1 bit/s and the video was
    paused (bench-simulcast, right after the cap fell)."""
    congestion = paced_under_remb()
    budget = congestion.budget
    budget.offered += 60
    budget.dropped += 60
    budget.passed += 30_000  # 240 kbit/s left the queue
    congestion.tick(1.0)
    estimate = congestion.estimator.estimate()
    assert estimate is not None and 240_000 <= estimate <= 300_000


def test_a_few_packets_held_back_right_after_a_resume_are_not_a_third_lost() -> None:
    """Seen in bench-simulcast: a video resumed, 2 of its first 6 packets waited too long, and
    the "33 % loss" paused it again, over and over for 8 s."""
    congestion = paced_under_remb()
    budget = congestion.budget
    budget.offered += 6
    budget.dropped += 2
    budget.passed += 5_000
    congestion.tick(1.0)
    assert congestion.estimator.estimate() == 2_000_000  # too few to tell: counted on
    budget.offered += 94  # 2 of 100 over two ticks: little loss
    budget.passed += 100_000
    congestion.tick(2.0)
    assert congestion.estimator.estimate() == 2_000_000
    budget.offered += 20
    budget.dropped += 10
    budget.passed += 10_000
    congestion.tick(3.0)
    assert (congestion.estimator.estimate() or 0) < 2_000_000


def estimated(bitrate: int, paced: bool) -> tuple[Congestion, DownTrack]:
    """A simulcast subscription whose delay-based estimate is `bitrate`, allocated at 0 s."""
    track, down = simulcast_subscription()
    congestion = Congestion({track.sid: down})
    congestion.paced = paced
    congestion.estimator.on_delay_based(bitrate, 0.0)
    congestion.tick(0.0)
    return congestion, down


def probe_under_feedback(arrived_bps: int) -> tuple[Congestion, DownTrack]:
    """A paced subscriber on the low layer probes; the feedback during the probe shows
    `arrived_bps` reaching it without a queue building. Ticks until the probe's verdict."""
    congestion, down = estimated(300_000, paced=True)
    assert down.layers is not None and down.layers.target == 0
    down.layers.current = 0
    t = 0.0
    while not congestion.probing and t < 10:
        t += 1.0
        congestion.tick(t)
    assert congestion.probing and down.padding > 0
    count = int(arrived_bps * 0.5 / 8 / 1200)
    # What arrived after the first quarter second (a token bucket's burst) is what counts.
    congestion.on_transport_feedback(feedback(0, count, t + 0.25, 0.55 / count, 0.0), t + 0.8)
    assert down.padding == 0  # measured (or over): padding stops before the verdict
    for n in range(1, 5):
        congestion.tick(t + n)
    return congestion, down


def test_a_probe_under_transport_feedback_is_proven_by_what_arrived() -> None:
    congestion, down = probe_under_feedback(800_000)
    assert down.layers is not None and down.layers.target == 1
    assert congestion.failed_probes == 0
    # Sent but not received: a rate cap passed 300 kbit/s of the probe's ~630.
    congestion, down = probe_under_feedback(300_000)
    assert down.layers is not None and down.layers.target == 0
    assert congestion.failed_probes == 1


def test_a_switch_down_stops_the_old_layer_at_once() -> None:
    for paced in (False, True):
        congestion, down = estimated(3_000_000, paced)
        assert down.layers is not None and down.layers.target == 2
        down.layers.current = 2
        congestion.estimator.on_delay_based(300_000, 1.0)  # a cap falls
        assert congestion.tick(1.0) == [down] and down.layers.target == 0
        # REMB only too, the top layer stops now, not at the low layer's keyframe: its packets
        # would fill the capped link's queue meanwhile.
        assert down.layers.current == PAUSED


def probing_on_the_low_layer() -> tuple[Congestion, DownTrack, float]:
    """A paced subscriber held to the low layer at 300 kbit/s, ticked until its probe starts."""
    congestion, down = estimated(300_000, paced=True)
    assert down.layers is not None
    down.layers.current = 0
    t = 0.0
    while not congestion.probing and t < 10:
        t += 1.0
        congestion.tick(t)
    return congestion, down, t


def test_a_probe_stops_at_the_first_feedback_showing_a_queue_and_fails_at_once() -> None:
    """Into a rate limiter: what the probe adds queues behind it. The feedback shows it before
    the queue overflows (and drops the audio with the padding): no overuse needed."""
    congestion, down, t = probing_on_the_low_layer()
    assert down.layers is not None and congestion.probing and down.padding > 0
    # Before: no queue (a base delay); then 1 ms more per packet (sequence number).
    congestion.on_transport_feedback(feedback(0, 20, t - 0.5, 0.005, 0.0), t)
    assert congestion.react(t) == [] and congestion.probing
    congestion.on_transport_feedback(feedback(20, 10, t + 0.01, 0.005, 0.001), t + 0.06)
    assert congestion.probing and down.padding > 0  # 20-29 ms late: not yet
    congestion.on_transport_feedback(feedback(40, 10, t + 0.06, 0.005, 0.001), t + 0.11)
    assert down.padding == 0
    congestion.react(t + 0.11)  # the verdict at once, not at the next tick
    assert not congestion.probing and congestion.failed_probes == 1
    assert down.layers.target == 0
    assert congestion.estimator.delay_based == 300_000  # no overuse was needed


def test_a_proven_probe_is_granted_at_once() -> None:
    congestion, down, t = probing_on_the_low_layer()
    assert down.layers is not None
    congestion.on_transport_feedback(feedback(0, 20, t - 0.5, 0.005, 0.0), t)
    congestion.react(t)  # (the estimate's last decrease, reacted to)
    count = int(800_000 * 0.55 / 8 / 1200)
    congestion.on_transport_feedback(feedback(20, count, t + 0.25, 0.55 / count, 0.0), t + 0.8)
    assert down.padding == 0 and down.layers.target == 0
    congestion.react(t + 0.8)
    assert not congestion.probing and down.layers.target == 1


async def test_probe_padding_never_waits_and_never_counts_as_the_videos_loss() -> None:
    """A probe's padding queued in the pacer crowded the media out (52 video packets dropped,
    counted as 26 % loss: every video paused, in a loaded e2ee room)."""
    sink = ListSink()
    budget = SendBudget()
    budgeted = BudgetedSink(sink, budget)
    assert budgeted.send_padding(b"p" * 280)  # no rate: sent
    budget.set_rate(400_000, clock.now())  # 6 kB at once
    sent = sum(budgeted.send_padding(b"p" * 280) for _ in range(40))
    assert 0 < sent < 40 and budget.offered == budget.dropped == budget.passed == 0
    budgeted.send(b"m" * 1200)  # the media waits for the bucket, the padding does not
    assert budgeted.pacer.queued == 1200 and not budgeted.send_padding(b"p" * 280)
