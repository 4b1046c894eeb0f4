"""Congestion control towards one subscriber: its reports -> an estimate -> each video
down-track's layer, once a second (sans-I/O, `now` passed in).

A browser's REMB only grows to about 1.5x what it receives, so a subscriber held on a low layer
would never show that its link recovered. keyroom therefore probes upwards: after
PROBE_INTERVAL without the estimate falling while some video is below what the subscriber
asked for, it sends as much as the next layer needs for PACED_PROBE_LENGTH (its verdict may
take PROBE_LENGTH more), the media it sends plus padding packets after each packet of one
flowing video down-track (sfu/padding.py). If neither REMB nor loss pushes back meanwhile
(or the estimate reaches the level), the level is granted and the layer switched up; at the
first push-back the padding stops at once and the next probe waits twice as long (at most
MAX_PROBE_INTERVAL). With no video flowing to pad (everything paused), the probe is the next
layer itself.

REMB only (`paced` off), video is not held to a send budget: the browser's REMB comes from
the abs-send-time that the publisher stamped, so whatever keyroom's pacer holds back looks to it
like a queue on the link, and the estimate and the budget chase each other down (the
unconstrained subscriber of bench-simulcast's REMB room fell from 1.1 Mbit/s to 60 kbit/s in
2 s). But a switch down stops the old layer at once there too, rather than letting it overflow a
capped link's queue (the audio behind it lost) until the lower layer's keyframe. A probe's
padding lasts PACED_PROBE_LENGTH (its owner's timer stops it), too short to overflow a rate
limiter's queue, and is proven only when, besides a clean loss report, the round trip of the
next Sender Report shows no queue (PROBE_RTT_RISE): the REMB neither fell nor rose during such
probes into a 300 kbit/s tbf, and loss reports came only after its queue had overflowed.

Where transport-cc is negotiated (`paced`), keyroom's own estimate from the subscriber's
transport feedback (sfu/delaybwe.py) joins the REMB, its loss feeds the loss controller, video
is held to a send budget at the estimate less the audio (sfu/sendbudget.py), and a probe lasts
PACED_PROBE_LENGTH, on the RTX stream where there is one, proven only by the rate the receiver
acknowledged after the probe's first PROBE_BURST, and failed as soon as the feedback shows a
queue building (PROBE_QUEUE), before a rate limiter's queue overflows.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping

from sfu.allocator import HEADROOM, SOURCE_PRIORITY, VideoDemand, allocate, bump, next_step
from sfu.delaybwe import ACKED_WINDOW, LOSS_PACKETS, DelayBasedEstimate
from sfu.estimator import LOW_LOSS, Estimator
from sfu.forwarder import DownTrack
from sfu.layerswitch import PAUSED
from sfu.reportloss import ReportLoss
from sfu.rtcp import ReportBlock
from sfu.sendbudget import SendBudget
from sfu.twcc import PacketResult

PROBE_INTERVAL = 3.0
MAX_PROBE_INTERVAL = 4.0
PROBE_LENGTH = 2.5
# With transport feedback the receiver's acknowledged rate proves a level within a second: a
# probe into a link that cannot carry it overflows its queue (media and audio with it) for no
# longer than that. What arrives in its first PROBE_BURST does not count: a rate limiter's
# token bucket lets a burst through at line rate whatever its rate.
PACED_PROBE_LENGTH = 0.8
PROBE_BURST = 0.25
# ... and it fails as soon as the feedback shows a queue this long (s): a rate limiter's queue
# filling up with padding would soon drop what comes behind, the audio included.
PROBE_QUEUE = 0.03
# Padding packets after one media packet at most (each ~280 bytes on the wire).
MAX_PADDING_PER_PACKET = 12
# A probe proves a level only if what was sent during it came this close to the level.
PROBE_REACHED = 0.85
# Nothing pushed the estimate down for this long: layers are kept more readily (allocator).
CALM_PERIOD = 3.0
PADDING_WIRE_BYTES = 280
# Reserved per audio down-track before any video (Opus at its usual ~32 kbit/s, with headers).
AUDIO_BITRATE = 40_000
# The video budget covers the chosen layers' expected bitrate with this much to spare.
PACING_SLACK = 1.25
# The pacer's drops as a loss fraction: at most this (its queue full for a whole tick still let
# the budget's rate through).
MAX_BUDGET_LOSS = 0.9
# A probe succeeds only on evidence: a loss report this long after its start, with little loss.
PROBE_SETTLE = 0.5
# REMB only, a probe's verdict: the round trip of a Sender Report sent once its padding ended (it
# waits behind whatever the probe queued) may exceed the least of the last RTT_MEMORY seconds by
# this much (s). Neither the browser's REMB nor its loss reports show a rate limiter's queue
# filling before it overflows, the audio with it: the probe stops first (PACED_PROBE_LENGTH).
PROBE_RTT_RISE = 0.1
RTT_MEMORY = 10.0

# Each allocation at DEBUG: the benchmark's timeline (loadtest/simulcastbench.py).
log = logging.getLogger(__name__)


def demand(down: DownTrack) -> VideoDemand:
    """What a video down-track could get: its layers up to the highest available one."""
    track = down.track
    top = down.max_layer
    if track.layers:
        bitrates = tuple(layer.expected for layer in track.layers)
        available = [layer.index for layer in track.layers if layer.available]
        top = min(top, max(available, default=PAUSED))
    else:
        bitrates = (max(track.bitrate, 1),)
    return VideoDemand(track.sid, SOURCE_PRIORITY.get(track.source, 2), bitrates, top)


class Congestion:
    def __init__(self, subscriptions: Mapping[str, DownTrack]) -> None:
        # The participant's own dict, read live.
        self._subscriptions = subscriptions
        # Names this subscriber in the DEBUG trace.
        self.label = ""
        self.estimator = Estimator()
        # Loss from the subscriber's report blocks, over enough packets (sfu/reportloss.py).
        self.report_loss = ReportLoss()
        self.delay_based = DelayBasedEstimate()
        # Video must fit this budget once keyroom estimates the link itself (`paced`: set when
        # transport-cc is negotiated); audio bypasses it. `_level`: the rate last allocated from.
        self.budget = SendBudget()
        self.paced = False
        self._level: int | None = None
        # The budget's (offered, dropped, passed, when) at the last count of its loss.
        self._budget_seen: tuple[int, int, int, float | None] = (0, 0, 0, None)
        self._octets: dict[str, tuple[float, int]] = {}
        # Media packets per second of each down-track, measured at each tick.
        self._packets: dict[str, tuple[float, int, float]] = {}
        self.sending = 0
        # A probe in progress: (start, end, budget); a level a probe proved: (since, budget).
        self._probe: tuple[float, float, int] | None = None
        # The down-track carrying a probe's padding.
        self._carrier: DownTrack | None = None
        self.probes = self.failed_probes = 0
        # The most sent in a tick during the probe in progress (bit/s).
        self._probe_peak = 0
        # The most the subscriber acknowledged receiving during it (transport feedback).
        self._probe_acked = 0
        # The feedback showed a queue building during it (PROBE_QUEUE), or an RTT did
        # (PROBE_RTT_RISE): it failed. REMB only: an RTT measured after it showed no queue.
        self._probe_failed = False
        self._probe_rtt_clear = False
        # (when, RTT sample) of the last RTT_MEMORY seconds: the path's round trip without a queue.
        self._rtts: deque[tuple[float, float]] = deque()
        self._granted: tuple[float, int] | None = None
        self._interval = PROBE_INTERVAL
        self._next_probe: float | None = None
        self.choice: dict[str, int] = {}
        self._react = False
        self._reacted = -math.inf

    def on_remb(self, bitrate: int, now: float) -> None:
        self.estimator.on_remb(bitrate, now)
        self._pushed_back()

    def on_transport_feedback(self, results: list[PacketResult], now: float) -> None:
        """Transport-wide feedback: keyroom's delay-based estimate joins the browser's REMB."""
        delay_based = self.delay_based
        estimate = delay_based.on_feedback(results, now)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "twcc %s t=%.3f n=%d lost=%d queue=%.3f state=%s est=%s link=%s acked=%s",
                self.label, now, len(results), sum(r.arrival_us is None for r in results),
                delay_based.queue_delay, delay_based.trendline.state, estimate,
                delay_based.link_rate(), delay_based.acked_rate(),
            )  # fmt: skip
        if estimate is not None:
            self.estimator.on_delay_based(estimate, now)
        loss, acked = delay_based.loss_report(), delay_based.acked_rate()
        if loss is not None:
            # What was sent, as far as the receiver's count tells (heavy loss: the link carries
            # what arrived; the sender's own count lags by up to a tick).
            delivered = delay_based.link_rate()
            sending = int(delivered / max(1 - loss[0], 0.05)) if delivered else loss[1]
            self.estimator.on_loss(loss[0], sending, now)
        probe = self._probe
        if probe is not None and delay_based.queue_delay > PROBE_QUEUE:
            self._probe_failed = True
            self._stop_padding()
            self._react = True  # the verdict at once, not at the next tick
        elif probe is not None and now >= probe[0] + PROBE_BURST + ACKED_WINDOW:
            self._probe_acked = max(self._probe_acked, acked or 0)
            if now >= probe[1] or self._probe_acked >= probe[2] * PROBE_REACHED:
                self._stop_padding()  # measured
                self._react = True
        self._pushed_back()

    def on_report_block(self, block: ReportBlock, now: float) -> None:
        """Loss on a video down-track this subscriber receives, counted over enough packets
        (sfu/reportloss.py): one block's own fraction can cover a handful."""
        if any(d.out_ssrc == block.ssrc for d in self._subscriptions.values() if d.cache):
            fraction = self.report_loss.on_block(block)
            if fraction is not None:
                self.estimator.on_loss(fraction, self.sending, now)
                self._pushed_back()

    def on_rtt(self, sample: float, sent_at: float, now: float) -> None:
        """A round trip (s) measured from a report block, of a Sender Report sent at `sent_at`.
        REMB only, it settles a probe: a Sender Report sent once its padding ended waited behind
        what the padding queued, if the link could not carry it."""
        rtts = self._rtts
        while rtts and rtts[0][0] < now - RTT_MEMORY:
            rtts.popleft()
        least = min((r for _, r in rtts), default=sample)
        rtts.append((now, sample))
        probe = self._probe
        if probe is None or self.paced or sent_at < probe[1]:
            return
        log.debug(
            "rtt %s t=%.3f rtt=%.3f least=%.3f sent=%.3f probe=%s",
            self.label, now, sample, least, sent_at, probe,
        )  # fmt: skip
        if sample > least + PROBE_RTT_RISE:
            self._probe_failed = True
            self._stop_padding()
        else:
            self._probe_rtt_clear = True
        self._react = True  # the verdict at once, not at the next tick

    def _pushed_back(self) -> None:
        """Padding stops at the first push-back, not at the next tick; and the layers follow a
        falling estimate at once (`react`)."""
        if self._probe is not None and self.estimator.decreased_since(self._probe[0]):
            self._stop_padding()
        if self.estimator.last_decrease > self._reacted:
            self._react = True

    def react(self, now: float) -> list[DownTrack]:
        """After a report that lowered the estimate or settled a probe: re-allocate now rather
        than at the next tick (a link that just got thinner is overflowing meanwhile; a level
        just proven is granted at once)."""
        if not self._react:
            return []
        self._react = False
        self._reacted = now
        return self.reallocate(now)

    def padding_end(self) -> float | None:
        """When the padding of the probe in progress is to stop (its owner's timer calls
        end_padding then), rather than at the next tick: a probe's excess over a thinner link
        fills its queue for as long as it lasts."""
        if self._probe is None or self._carrier is None:
            return None
        return self._probe[1]

    def end_padding(self, now: float) -> None:
        if self._probe is not None and now >= self._probe[1]:
            self._stop_padding()

    def _stop_padding(self) -> None:
        if self._carrier is not None:
            self._carrier.padding = 0
            self._carrier = None

    def tick(self, now: float) -> list[DownTrack]:
        """Measure what was sent and re-allocate (once a second); the down-tracks whose new
        layer needs a keyframe."""
        self.sending = sum(self._measure(sid, d, now) for sid, d in self._subscriptions.items())
        for sid in [s for s in self._octets if s not in self._subscriptions]:
            del self._octets[sid]
            self._packets.pop(sid, None)
        self.report_loss.keep({d.out_ssrc for d in self._subscriptions.values() if d.out_ssrc})
        if self.paced:
            self._budget_loss(now)
        return self.reallocate(now)

    def _budget_loss(self, now: float) -> None:
        """Video the budget held back is loss the link never saw: told to the loss controller
        all the same, or a layer the budget cannot carry would be kept, never delivered. The
        rate it reports is what was offered, so that what got through is what the pacer sent
        (the budget's rate), not nothing when its queue stayed full for a whole tick."""
        budget = self.budget
        offered_before, dropped_before, passed_before, then = self._budget_seen
        offered = budget.offered - offered_before
        held = budget.dropped - dropped_before
        if 0 < offered < LOSS_PACKETS:
            return  # too few to tell (a video just resumed): counted on at the next tick
        self._budget_seen = (budget.offered, budget.dropped, budget.passed, now)
        # Only as bad news: a tick without drops says nothing of the link itself.
        if then is not None and now > then and offered > 0 and held > LOW_LOSS * offered:
            fraction = min(held / offered, MAX_BUDGET_LOSS)
            passed = (budget.passed - passed_before) * 8 / (now - then)
            self.estimator.on_loss(fraction, int(passed / (1 - fraction)), now)

    def reallocate(self, now: float) -> list[DownTrack]:
        """Apply the current estimate (e.g. at once after a subscriber's set_quality)."""
        videos, downs, audio = [], {}, 0
        for down in self._subscriptions.values():
            if down.track.kind == "video":
                videos.append(demand(down))
                downs[down.track.sid] = down
            else:
                audio += AUDIO_BITRATE
        self._level = None
        self.choice = choice = self._allocate(now, audio, videos)
        self._pace(now, audio, videos)
        if log.isEnabledFor(logging.DEBUG):
            self._trace(now, choice, downs, videos)
        return [downs[key] for key, layer in choice.items() if self._switch(downs[key], layer)]

    def _trace(
        self,
        now: float,
        choice: dict[str, int],
        downs: dict[str, DownTrack],
        videos: list[VideoDemand],
    ) -> None:
        e = self.estimator
        layers = {k: (d.layers.current, d.layers.target) for k, d in downs.items() if d.layers}
        log.debug(
            "alloc %s t=%.3f remb=%s delay=%s loss=%s lossy=%d queue=%.3f budget=%s probe=%s "
            "choice=%s layers=%s bitrates=%s",
            self.label, now, e.remb, e.delay_based, e.loss_based, e.lossy_reports,
            self.delay_based.queue_delay, self.budget.rate and int(self.budget.rate * 8),
            self._probe, choice, layers, {v.key: v.bitrates for v in videos},
        )  # fmt: skip

    def _switch(self, down: DownTrack, layer: int) -> bool:
        """set_layer; once there is an estimate, a switch down also stops the current layer at
        once rather than at the lower layer's keyframe: its packets would fill a thin link's
        queue meanwhile (the audio behind them lost), and under the video budget crowd out
        that very keyframe."""
        switch = down.layers
        current = switch.current if switch is not None else PAUSED
        needs_keyframe = down.set_layer(layer)
        if self._level is not None and switch is not None and 0 <= layer < current:
            switch.current = PAUSED
        return needs_keyframe

    def _pace(self, now: float, audio: int, videos: list[VideoDemand]) -> None:
        """The video send budget (sfu/sendbudget.py): the level allocated from, less the audio,
        but never below what the chosen layers need (with PACING_SLACK for their bursts)."""
        if not self.paced or self._level is None:
            self.budget.set_rate(None, now)
            return
        chosen = sum(v.bitrates[self.choice[v.key]] for v in videos if self.choice[v.key] >= 0)
        self.budget.set_rate(max(self._level - audio, int(chosen * PACING_SLACK)), now)

    def _measure(self, sid: str, down: DownTrack, now: float) -> int:
        rewriter = down.rewriter
        octets, packets = (rewriter.octets, rewriter.packets) if rewriter else (0, 0)
        octets += down.padding_sent  # what the link carried: a probe's padding included
        then, before = self._octets.get(sid, (now, octets))
        self._octets[sid] = (now, octets)
        _, packets_before, rate = self._packets.get(sid, (now, packets, 0.0))
        if now > then:
            rate = (packets - packets_before) / (now - then)
        self._packets[sid] = (now, packets, rate)
        return int((octets - before) * 8 / (now - then)) if now > then else 0

    def _allocate(self, now: float, audio: int, videos: list[VideoDemand]) -> dict[str, int]:
        estimator = self.estimator
        estimate = estimator.estimate()
        if estimate is None:
            return allocate(None, audio, videos)
        budget = self._level = estimate
        if self._granted is not None:
            if estimator.decreased_since(self._granted[0]):
                self._granted = None
            else:
                budget = max(budget, self._granted[1])
        calm = estimator.quiet_for(CALM_PERIOD, now)
        if self._probe is not None:
            budget = self._follow_probe(now, estimate, budget)
            self._level = budget if self._probe is None else max(budget, self._probe[2])
            if self._probe is not None and self._carrier is None:
                return self.choice  # a layer probe: its layers stay until it ends
        self._level = max(self._level, budget)
        choice = allocate(budget, audio, videos, self.choice, calm, hold=not estimator.congested)
        step = next_step(choice, videos)
        if not step:
            self._next_probe = None
        elif self._next_probe is None:
            self._next_probe = now + self._interval
        elif self._probe is None and now >= self._next_probe:
            if estimator.quiet_for(self._interval, now):
                # Enough for the allocation to give the next layer: a flowing video may be
                # held over the estimate (allocator `hold`), and then the estimate plus the step
                # still would not make room for it (granted, and nothing changed).
                flowing = sum(v.bitrates[choice[v.key]] for v in videos if choice[v.key] >= 0)
                level = int(max(budget, (flowing + audio) / HEADROOM) + step / HEADROOM) + 1
                self._level = level
                return self._start_probe(now, level, audio, videos)
        return choice

    def _follow_probe(self, now: float, estimate: int, budget: int) -> int:
        """End the probe in progress if it failed or proved its level (then granted: the budget
        returned includes it), else make sure it sends enough."""
        assert self._probe is not None
        start, end, level = self._probe
        estimator = self.estimator
        self._probe_peak = max(self._probe_peak, self.sending)
        # With transport feedback, what arrived must have reached the level, not only what
        # was sent (a rate cap passes its capacity and queues or drops the rest); and a probe
        # of half a second is measured there, not in a tick's average of what was sent.
        reached = self._probe_acked if self.paced else self._probe_peak
        proven = estimator.clean_since(start + PROBE_SETTLE) and reached >= level * PROBE_REACHED
        proven = proven and (self.paced or self._probe_rtt_clear)
        failed = estimator.decreased_since(start) or self._probe_failed
        if now >= end:
            self._stop_padding()
        if failed or (now >= end + PROBE_LENGTH and not proven):
            self._end_probe(now)
            self.failed_probes += 1
            self._interval = min(self._interval * 2, MAX_PROBE_INTERVAL)
            self._next_probe = now + self._interval
        elif estimate >= level or (now >= end and proven):
            self._end_probe(now)
            self._granted = (start, level)
            self._interval = PROBE_INTERVAL
            return max(budget, level)
        elif self._carrier is not None and self.sending < level * PROBE_REACHED:
            # Short of the level (the carrier sends fewer packets than measured): more.
            padding = self._carrier.padding
            self._carrier.padding = min(MAX_PADDING_PER_PACKET, padding + 1 + padding // 2)
        return budget

    def _start_probe(
        self, now: float, level: int, audio: int, videos: list[VideoDemand]
    ) -> dict[str, int]:
        """Send `level` bit/s for a while: padding on a flowing video, else the layers."""
        self.probes += 1
        self._probe = (now, now + PACED_PROBE_LENGTH, level)
        self._probe_peak = self._probe_acked = 0
        self._probe_failed = self._probe_rtt_clear = False
        carrier = self._carrier_for()
        if carrier is None:
            # Nothing flows to pad: the probe is the next layer of the first video short of it.
            return bump(self.choice, videos)
        pps = self._packets.get(carrier.track.sid, (0, 0, 0.0))[2]
        extra = (level - self.sending) / 8 / PADDING_WIRE_BYTES  # padding packets per second
        carrier.padding = max(1, min(MAX_PADDING_PER_PACKET, math.ceil(extra / max(pps, 1.0))))
        self._carrier = carrier
        return self.choice

    def _end_probe(self, now: float) -> None:
        self._probe = None
        self._stop_padding()
        self._next_probe = now + self._interval

    def _carrier_for(self) -> DownTrack | None:
        """A video down-track that is forwarding media, the busiest: padding follows it."""
        # Simulcast: its current layer says (`paused` is single-layer state).
        flowing = [
            d
            for d in self._subscriptions.values()
            if d.track.kind == "video"
            and (not d.paused if d.layers is None else d.layers.current != PAUSED)
        ]
        return max(
            flowing, key=lambda d: self._packets.get(d.track.sid, (0, 0, 0.0))[2], default=None
        )

    @property
    def probing(self) -> bool:
        return self._probe is not None
