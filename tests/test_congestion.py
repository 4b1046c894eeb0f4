"""Congestion control towards subscribers and dynacast, with time passed in: the estimate from
REMB and loss, the allocation (audio first, screen share before camera, pause rather than
congest), upward probes with back-off, and layers switched off when nobody needs them."""

from __future__ import annotations

import itertools
import math

from sfu.allocator import VideoDemand, allocate, next_step
from sfu.congestion import (
    MAX_PROBE_INTERVAL,
    PACED_PROBE_LENGTH,
    PROBE_INTERVAL,
    PROBE_LENGTH,
    Congestion,
)
from sfu.dynacast import IDLE_DELAY, Dynacast
from sfu.estimator import MAX_ESTIMATE, Estimator
from sfu.feedback import Feedback
from sfu.forwarder import SDES_MID, DownTrack, PublishedTrack
from sfu.layerswitch import PAUSED
from sfu.rtcp import ReportBlock
from sfu.sdpinfo import SimulcastOffer
from sfu.stats import Stats
from tests.sink_helpers import ListSink

LAYERS = (100_000, 400_000, 1_200_000)
# Loss reports on the video down-track (SSRC 9), no loss, each 50 packets after the last (the
# first one a congestion controller sees is its baseline: sfu/reportloss.py).
_SEQS = itertools.count(1000, 50)


def clean() -> ReportBlock:
    return ReportBlock(9, 0, 0, next(_SEQS), 0, 0, 0)


def video(key: str, priority: int = 1, max_layer: int = 2) -> VideoDemand:
    return VideoDemand(key, priority, LAYERS, max_layer)


def test_unconstrained_subscribers_get_what_they_asked_for() -> None:
    assert allocate(None, 0, [video("a"), video("b", max_layer=0)]) == {"a": 2, "b": 0}


def test_audio_first_then_screen_share_then_camera() -> None:
    videos = [video("cam"), video("screen", priority=0)]
    # 800 kbit/s: 720k usable, 64k audio; both lowest layers, then the screen share upgraded.
    assert allocate(800_000, 64_000, videos) == {"screen": 1, "cam": 0}
    # 250 kbit/s: 225k usable, 64k audio; one low layer fits, the camera is paused.
    assert allocate(250_000, 64_000, videos) == {"screen": 0, "cam": PAUSED}
    # Not even one: everything paused rather than squeezing the audio.
    assert allocate(100_000, 64_000, videos) == {"screen": PAUSED, "cam": PAUSED}
    assert next_step({"screen": PAUSED, "cam": PAUSED}, videos) == LAYERS[0]
    assert next_step({"screen": 2, "cam": 2}, videos) == 0


def test_the_first_video_plays_unless_its_lowest_layer_needs_twice_what_is_left() -> None:
    videos = [video("cam"), video("screen", priority=0)]
    # 150 kbit/s: 135k usable, 40k audio: 95k left; the screen share's 100k layer is stretched
    # into it, the camera (not first) is paused.
    assert allocate(150_000, 40_000, videos) == {"screen": 0, "cam": PAUSED}
    # 80 kbit/s: 32k left (plus 8k headroom), under half of the 100k layer: paused.
    assert allocate(80_000, 40_000, videos) == {"screen": PAUSED, "cam": PAUSED}
    # Calm (no push-back lately): every video may be stretched, within twice what is left.
    assert allocate(200_000, 40_000, videos, calm=True) == {"screen": 0, "cam": 0}
    assert allocate(200_000, 40_000, videos) == {"screen": 0, "cam": PAUSED}


def test_the_estimate_takes_the_lower_of_remb_and_loss() -> None:
    estimator = Estimator()
    assert estimator.estimate() is None
    estimator.on_remb(2_000_000, 1.0)
    estimator.on_loss(0.0, 1_000_000, 1.0)
    assert estimator.estimate() == 2_000_000 and not estimator.decreased_since(0.0)
    estimator.on_loss(0.15, 1_500_000, 2.0)  # 15 % lost: the estimate x 0.925
    assert estimator.estimate() == 1_850_000 and estimator.decreased_since(2.0)
    estimator.on_loss(0.15, 1_500_000, 2.5)  # another block of the same report: one cut
    assert estimator.estimate() == 1_850_000
    # Loss while sending little: the rate cut is at most twice what was sent.
    estimator.on_loss(0.15, 150_000, 3.0)
    assert estimator.estimate() == 277_500
    # Heavy loss: an overflowing link carries what got through (+10 %).
    overflowing = Estimator()
    overflowing.on_remb(2_000_000, 0.0)
    overflowing.on_loss(0.75, 1_200_000, 1.0)
    assert overflowing.estimate() == 330_000
    for n in range(40):
        estimator.on_loss(0.0, 200_000, 5.0 + n)
    assert estimator.estimate() == 2_000_000  # grown back to the REMB
    estimator.on_remb(-5, 50.0)
    assert estimator.estimate() == 0 and estimator.decreased_since(50.0)
    estimator.on_remb(1 << 60, 51.0)
    assert estimator.estimate() == MAX_ESTIMATE


def test_keeping_a_layer_may_use_the_headroom_but_going_up_may_not() -> None:
    videos = [video("cam")]
    # 1.3 Mbit/s: 1.17M usable, 64k audio: the top layer (1.2M) does not fit from below...
    assert allocate(1_300_000, 64_000, videos) == {"cam": 1}
    # ...but a track already on it keeps it; well below, it goes down.
    assert allocate(1_300_000, 64_000, videos, {"cam": 2}) == {"cam": 2}
    assert allocate(1_100_000, 64_000, videos, {"cam": 2}) == {"cam": 1}


def simulcast_subscription(source: str = "camera") -> tuple[PublishedTrack, DownTrack]:
    track = PublishedTrack(
        sid=f"TR_{source}", cid=source, kind="video", source=source, name="", publisher_sid="PA"
    )
    track.set_simulcast(SimulcastOffer(("q", "h", "f"), 10, None))
    for layer, bitrate in zip(track.layers, LAYERS, strict=True):
        layer.expected = bitrate
        layer.ssrc = 1000 + layer.index
    down = DownTrack(track, "PA_s")
    down.configure(
        sink=ListSink(), out_ssrc=9, mid="0", payload_types={96: 96}, extensions={SDES_MID: 1}
    )
    track.down_tracks.append(down)
    return track, down


def test_a_capped_link_drops_to_the_low_layer_and_a_probe_brings_it_back() -> None:
    track, down = simulcast_subscription()
    congestion = Congestion({track.sid: down})
    assert down.layers is not None and down.layers.target == 2
    congestion.on_remb(2_000_000, 0.0)
    # Waiting for the top layer's first keyframe: asked for again at each tick.
    assert congestion.tick(0.0) == [down]
    down.layers.current = 2
    assert congestion.tick(0.0) == []  # the top layer flows and still fits: no change
    congestion.on_remb(300_000, 1.0)  # capped
    assert congestion.tick(1.0) == [down] and down.layers.target == 0
    down.layers.current = 0
    # The REMB stays just over what the low layer gets; no probe until the interval passed.
    for t in range(2, 1 + int(PROBE_INTERVAL)):
        congestion.on_remb(300_000, t)
        congestion.tick(t)
        assert down.layers.target == 0 and not congestion.probing and down.padding == 0
    start = 1 + PROBE_INTERVAL
    congestion.on_remb(300_000, start)
    congestion.tick(start)
    # The probe: padding after the low layer's packets, the layer itself unchanged.
    assert congestion.probing and down.padding > 0 and down.layers.target == 0
    # The cap is still there: the REMB falls during the probe, the padding stops at once.
    congestion.on_remb(200_000, start + 0.5)
    assert down.padding == 0
    congestion.tick(start + 1)
    assert not congestion.probing and down.layers.target == 0 and congestion.failed_probes == 1
    t = start + 1
    while not congestion.probing:
        t += 1
        congestion.on_remb(300_000, t)
        congestion.tick(t)
    assert t - (start + 1) == MAX_PROBE_INTERVAL  # twice the interval, at most the maximum
    # Cap lifted: nothing pushes back during the probe, a report shows no loss, and the round
    # trip of the Sender Report sent as the padding ended no queue: the level is granted, the
    # next layer given.
    for n in range(1, math.ceil(PROBE_LENGTH) + 1):
        down.padding_sent += 1_000_000 // 8  # what the padding carries in a second
        congestion.on_remb(320_000, t + n)
        congestion.on_rtt(0.01, t + n - 1, t + n)
        congestion.on_report_block(clean(), t + n)
        congestion.tick(t + n)
    assert not congestion.probing and down.layers.target == 1 and down.padding == 0
    # Once flowing, the next probe reaches the top.
    down.layers.current = 1
    t += PROBE_LENGTH
    while down.layers.target != 2 and t < 60:
        t += 1
        down.padding_sent += 2_000_000 // 8 if congestion.probing else 0
        congestion.on_remb(330_000, t)
        congestion.on_rtt(0.01, t - 0.1, t)
        congestion.on_report_block(clean(), t)
        congestion.tick(t)
    assert down.layers.target == 2


def test_a_probe_without_a_clean_loss_report_fails() -> None:
    track, down = simulcast_subscription()
    congestion = Congestion({track.sid: down})
    congestion.on_remb(300_000, 0.0)
    congestion.tick(0.0)
    assert down.layers is not None and down.layers.target == 0
    down.layers.current = 0
    t = 0.0
    while not congestion.probing:
        t += 1
        congestion.on_remb(300_000, t)
        congestion.tick(t)
    start = t
    while congestion.probing:
        t += 0.5
        congestion.on_remb(300_000, t)
        congestion.tick(t)
    # No report came: not proven, and not granted either.
    assert t - start >= PACED_PROBE_LENGTH + PROBE_LENGTH and congestion.failed_probes == 1
    assert down.layers.target == 0 and down.padding == 0


def test_with_all_video_paused_the_probe_is_the_layer_itself() -> None:
    track, down = simulcast_subscription()
    congestion = Congestion({track.sid: down})
    congestion.on_remb(20_000, 0.0)  # not even the low layer fits
    congestion.tick(0.0)
    assert down.layers is not None and down.layers.target == PAUSED
    t = 0.0
    while not congestion.probing:
        t += 1
        congestion.on_remb(20_000, t)
        congestion.tick(t)
    assert down.layers.target == 0 and down.padding == 0  # nothing flows to pad


def test_loss_on_a_video_down_track_lowers_the_layer() -> None:
    track, down = simulcast_subscription()
    congestion = Congestion({track.sid: down})
    congestion.on_remb(5_000_000, 0.0)
    congestion.tick(0.0)
    assert down.layers is not None and down.layers.target == 2
    congestion.sending = 600_000
    congestion.on_report_block(ReportBlock(9, 0, 0, 1000, 0, 0, 0), 0.5)  # the baseline
    congestion.on_report_block(ReportBlock(9, 128, 50, 1100, 0, 0, 0), 1.0)  # 50 % lost
    congestion.on_report_block(ReportBlock(1234, 255, 0, 0, 0, 0, 0), 1.0)  # not ours: ignored
    # Re-allocated at once, not at the next tick: 600k sent, half of it through, +10 %.
    assert congestion.react(1.0) == [down] and congestion.react(1.0) == []
    assert congestion.estimator.estimate() == 330_000 and down.layers.target == 0


def test_dynacast_switches_off_unwatched_layers_after_a_delay_and_back_on_at_once() -> None:
    track, down = simulcast_subscription()
    dynacast = Dynacast()
    assert down.layers is not None
    down.layers.current = 2
    assert dynacast.update([track], 0.0) == []
    down.set_layer(0)
    down.layers.current = 0
    assert dynacast.update([track], 1.0) == []
    # "h" was never needed: off IDLE_DELAY after the first look; "f" only IDLE_DELAY after
    # its subscriber left it.
    [event] = dynacast.update([track], IDLE_DELAY)
    assert [x["active"] for x in event["layers"]] == [True, False, True]  # type: ignore[index]
    assert dynacast.update([track], 1.0 + IDLE_DELAY - 0.1) == []
    [event] = dynacast.update([track], 1.0 + IDLE_DELAY)
    assert event == {
        "type": "dynacast",
        "track_sid": track.sid,
        "layers": [
            {"rid": "q", "active": True},
            {"rid": "h", "active": False},
            {"rid": "f", "active": False},
        ],
    }
    assert down.set_layer(2) is True
    [event] = dynacast.update([track], 20.0)
    assert [x["active"] for x in event["layers"]] == [True, False, True]  # type: ignore[index]
    track.down_tracks.clear()
    dynacast.update([track], 21.0)
    [event] = dynacast.update([track], 21.0 + IDLE_DELAY)
    # Nobody left: the lowest layer stays on for the next subscriber's first frame.
    assert [x["active"] for x in event["layers"]] == [True, False, False]  # type: ignore[index]


def test_layers_that_never_arrived_or_stopped_are_not_given() -> None:
    """Chromium sends two of three offered layers for a small camera, and stops its top layer
    when its own uplink is short: a subscriber gets the best layer that flows."""
    track, down = simulcast_subscription()
    congestion = Congestion({track.sid: down})
    track.layers[2].ssrc = None  # never arrived
    congestion.reallocate(0.0)
    assert down.layers is not None and down.layers.target == 1
    track.layers[2].ssrc = 1002
    for layer in track.layers:
        layer.bytes_in = 10_000
        layer.measure(0.0)
    track.layers[0].bytes_in = track.layers[1].bytes_in = 20_000
    for layer in track.layers:
        layer.measure(1.0)
    assert [layer.available for layer in track.layers] == [True, True, False]
    congestion.reallocate(1.0)
    assert down.layers.target == 1
    # Paused by dynacast, a layer is still available (it comes back when asked for).
    track.layers[2].activate(False)
    assert track.layers[2].available
    track.layers[2].activate(True)
    track.layers[2].measure(2.0)
    assert track.layers[2].available


def test_a_probe_that_does_not_reach_its_level_adds_padding_and_proves_nothing() -> None:
    track, down = simulcast_subscription()
    congestion = Congestion({track.sid: down})
    congestion.on_remb(300_000, 0.0)
    congestion.tick(0.0)
    assert down.layers is not None
    down.layers.current = 0
    t = 0.0
    while not congestion.probing:
        t += 1
        down.rewriter.packets += 100  # type: ignore[union-attr]  # 100 media packets a second
        congestion.on_remb(300_000, t)
        congestion.tick(t)
    first = down.padding
    paddings = []
    while congestion.probing:
        t += 0.5
        congestion.on_remb(300_000, t)
        congestion.on_report_block(clean(), t)  # clean, but nothing was sent: no evidence
        congestion.tick(t)
        paddings.append(down.padding)
    assert max(paddings) > first and congestion.failed_probes == 1
    assert down.layers.target == 0 and down.padding == 0


def test_a_layers_expected_bitrate_ignores_its_ramp_up_and_its_switch_off() -> None:
    """bench-simulcast: dynacast switched the unwatched middle layer off, its last second
    measured the tail of its stream (tens of kbit/s), and a capped subscriber's first cut gave
    it that layer (500 kbit/s once on again) instead of the low one: seconds more to the low
    layer, and the link's queue kept full. Only a steady second counts."""
    track, down = simulcast_subscription()
    middle = track.layers[1]
    for t in range(4):  # starts: the first second is the encoder's ramp-up
        middle.bytes_in += (100_000 if t < 2 else 500_000) // 8
        middle.measure(float(t))
    assert middle.expected == 500_000
    middle.activate(False)  # dynacast: nobody needs it; its tail arrives meanwhile
    middle.bytes_in += 30_000 // 8
    middle.measure(4.0)
    middle.measure(5.0)
    assert middle.expected == 500_000
    congestion = Congestion({track.sid: down})
    congestion.on_remb(300_000, 6.0)
    congestion.reallocate(6.0)
    assert down.layers is not None and down.layers.target == 0
    middle.activate(True)  # on again: its ramp-up is not what it carries
    for t in (7.0, 8.0):
        middle.bytes_in += 60_000 // 8
        middle.measure(t)
    assert middle.expected == 500_000
    middle.bytes_in += 450_000 // 8
    middle.measure(9.0)
    assert middle.expected == 450_000


def remb_probe(remb: int = 300_000, paused: bool = False) -> tuple[Congestion, DownTrack, float]:
    """A REMB-only subscriber held to the low layer at `remb` bit/s, ticked until its probe
    starts (RTTs of 10 ms so far); `paused`: the down-track's single-layer flag set."""
    track, down = simulcast_subscription()
    down.paused = paused
    congestion = Congestion({track.sid: down})
    congestion.on_remb(remb, 0.0)
    congestion.tick(0.0)
    assert down.layers is not None and down.layers.target == 0
    down.layers.current = 0
    t = 0.0
    while not congestion.probing and t < 10:
        t += 1
        congestion.on_rtt(0.01, t - 0.5, t)
        congestion.on_remb(remb, t)
        congestion.on_report_block(clean(), t)
        congestion.tick(t)
    assert congestion.probing and down.padding > 0
    return congestion, down, t


def test_a_remb_probe_is_short_and_fails_on_the_queue_it_built() -> None:
    """Into a 300 kbit/s tbf (bench-simulcast, REMB room): the REMB neither fell nor rose during
    a probe, the loss reports came once the tbf's queue had overflowed (audio lost for 2 s).
    The padding stops at the next tick, and the Sender Report sent then, queued behind it,
    comes back late: failed at once, no loss needed."""
    congestion, down, start = remb_probe()
    assert down.layers is not None
    congestion.on_rtt(0.2, start - 0.1, start + 0.5)  # an SR from before the probe's end
    congestion.react(start + 0.5)
    assert congestion.probing and down.padding > 0  # no verdict from it
    down.padding_sent += 600_000 // 8
    congestion.tick(start + 1)
    assert down.padding == 0 and congestion.probing  # stopped, awaiting its verdict
    congestion.on_report_block(clean(), start + 1.3)  # no loss: the queue held it all
    congestion.on_rtt(0.01 + 0.25, start + 1, start + 1.5)  # the SR sent then waited 250 ms
    congestion.react(start + 1.5)
    assert not congestion.probing and congestion.failed_probes == 1
    assert down.layers.target == 0


def test_a_remb_probe_is_granted_on_a_clean_report_and_a_clear_round_trip() -> None:
    congestion, down, start = remb_probe()
    assert down.layers is not None
    down.padding_sent += 600_000 // 8
    congestion.tick(start + 1)
    congestion.on_report_block(clean(), start + 1.3)
    congestion.react(start + 1.3)
    assert congestion.probing  # a clean report alone: a queue may be holding the padding
    congestion.on_rtt(0.03, start + 1, start + 1.5)
    congestion.react(start + 1.5)
    assert not congestion.probing and down.layers.target == 1


def test_a_granted_probe_is_enough_for_the_next_layer_when_the_estimate_is_under_the_layer() -> (
    None
):
    """bench-simulcast, REMB room, after the lift: a REMB of 156 kbit/s, the low layer (155) and
    the audio held over it; the probe asked for 156 + 223 / 0.9 kbit/s, was proven and granted,
    and still gave no more than the low layer (0.9 x 404 - 40 < 379): never back up."""
    congestion, down, t = remb_probe(90_000)  # under the low layer's 100 kbit/s: held there
    assert down.layers is not None
    down.padding_sent += 1_000_000 // 8
    congestion.tick(t + 1)
    congestion.on_report_block(clean(), t + 1.2)
    congestion.on_rtt(0.01, t + 1, t + 1.3)
    congestion.react(t + 1.3)
    assert not congestion.probing and congestion.failed_probes == 0
    assert down.layers.target == 1


def test_a_remb_probe_pads_for_its_length_not_until_the_next_tick() -> None:
    """A full tick of padding at the next layer's level filled the 300 kbit/s tbf's queue (2
    audio packets lost in a full bench-simulcast run); its owner's timer stops it on time."""
    congestion, down, start = remb_probe()
    end = congestion.padding_end()
    assert end == start + PACED_PROBE_LENGTH
    congestion.end_padding(end - 0.1)
    assert down.padding > 0
    congestion.end_padding(end)
    assert down.padding == 0 and congestion.probing and congestion.padding_end() is None


def test_feedback_stops_a_probes_padding_at_its_end() -> None:
    track, down = simulcast_subscription()
    fb = Feedback(tracks={}, subscriptions={track.sid: down}, stats=Stats(),
                  max_video_bitrate=lambda: 0, rtcp_ssrc=1)  # fmt: skip
    ended: list[float] = []
    fb.congestion.padding_end = lambda: 1.8  # type: ignore[method-assign]
    fb.congestion.end_padding = ended.append  # type: ignore[method-assign,assignment]
    fb.start_sender_reports(0.0)
    fb.handle_timer(1.0)  # the once-a-second tick (a probe may start there)
    assert fb.next_deadline() == 1.8
    fb.handle_timer(1.8)
    assert ended == [1.8]


def test_a_stale_single_layer_pause_does_not_turn_probes_into_layer_switches() -> None:
    """bench-simulcast: the capped page's first allocation came before the track's layers were
    known, paused it on the single-layer path (`paused`, never cleared once the layers came),
    and its probe then switched to the middle layer instead of padding the low one: the
    middle layer's keyframe and stream overflowed the cap's queue (7 audio packets lost)."""
    congestion, down, _ = remb_probe(paused=True)
    assert down.layers is not None and down.layers.target == 0 and down.padding > 0
