"""Audio first under a cap (sfu/sendbudget.py): the video budget, and congestion control
driving it from transport feedback (sfu/congestion.py). Time is passed in."""

from __future__ import annotations

from sfu.congestion import PACING_SLACK, Congestion
from sfu.forwarder import DownTrack
from sfu.layerswitch import PAUSED
from sfu.sendbudget import DEPTH, MIN_DEPTH, BudgetedSink, SendBudget
from sfu.twcc import PacketResult
from tests.sink_helpers import ListSink
from tests.test_congestion import simulcast_subscription


def test_no_rate_means_no_limit() -> None:
    budget = SendBudget()
    assert all(budget.allow(1200, 0.0) for _ in range(1000))
    assert budget.dropped == 0


def test_the_bucket_passes_its_rate_and_a_bounded_burst() -> None:
    budget = SendBudget()
    budget.set_rate(400_000, 0.0)  # 50 kB/s
    depth = int(max(50_000 * DEPTH, MIN_DEPTH))
    burst = sum(budget.allow(1000, 0.0) for _ in range(100))
    assert burst == depth // 1000
    # Ten seconds later: never more than the depth at once.
    passed = sum(budget.allow(1000, 10.0) for _ in range(100))
    assert passed == depth // 1000
    sent = 0
    for n in range(1, 1001):  # 1000 packets offered over 10 s at 800 kbit/s
        sent += budget.allow(1000, 10.0 + n / 100)
    assert 50 * 10 - 2 <= sent <= 50 * 10 + 1
    assert budget.dropped == 100 - burst + 100 - passed + 1000 - sent


def test_a_budgeted_sink_drops_what_does_not_fit_as_if_lost_on_the_wire() -> None:
    sink = ListSink()
    budget = SendBudget()
    budgeted = BudgetedSink(sink, budget)
    assert budgeted.send(b"x" * 1200)  # no rate: straight through
    budget.set_rate(100_000, 0.0)
    results = [budgeted.send(b"x" * 1200) for _ in range(50)]
    assert all(results)  # the forwarder carries on as after a loss on the link
    assert len(sink.sent) < 50 and budget.dropped == 50 + 1 - len(sink.sent)


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
    assert unpaced.budget.rate is None  # REMB only: as before, no budget

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


def test_what_the_budget_holds_back_counts_as_loss() -> None:
    track, down = simulcast_subscription()
    congestion = Congestion({track.sid: down})
    congestion.paced = True
    congestion.on_remb(2_000_000, 0.0)
    congestion.tick(0.0)
    assert down.rewriter is not None
    down.rewriter.packets += 100
    congestion.tick(1.0)
    assert congestion.estimator.estimate() == 2_000_000  # nothing held back: no news
    # A layer the budget cannot carry: 40 of 140 packets held back. The link saw no loss, but
    # the estimate falls, and the layer with it, rather than a video that never arrives.
    down.rewriter.packets += 140
    congestion.budget.dropped += 40
    congestion.tick(2.0)
    estimate = congestion.estimator.estimate()
    assert estimate is not None and estimate < 2_000_000
    assert congestion.estimator.decreased_since(2.0)


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


def test_paced_a_switch_down_stops_the_old_layer_at_once() -> None:
    for paced in (False, True):
        congestion, down = estimated(3_000_000, paced)
        assert down.layers is not None and down.layers.target == 2
        down.layers.current = 2
        congestion.estimator.on_delay_based(300_000, 1.0)  # a cap falls
        assert congestion.tick(1.0) == [down] and down.layers.target == 0
        # Unpaced the top layer flows on until the low layer's keyframe; paced it stops now.
        assert down.layers.current == (PAUSED if paced else 2)
