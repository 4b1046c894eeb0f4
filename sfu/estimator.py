"""One subscriber's downlink estimate, from what its browser reports (sans-I/O, `now` passed in).

The browser estimates the path itself (REMB: its delay-based estimator, fed the abs-send-time
extension keyroom negotiates), or, where transport-wide congestion control is negotiated (the
browser then sends no REMB), keyroom does from its per-packet feedback (sfu/delaybwe.py); the
browser reports loss in its Receiver Reports. REMB alone misses a
lossy-but-not-queuing link, so loss lowers the estimate as a sender-side controller would
(GCC's loss controller: above 10 % loss, cut to rate x (1 - loss / 2), at most once a second,
the rate being the estimate but no more than twice what was being sent; above 20 %, no more
than what got through; below 2 %, back to 1.5x what was sent or up 8 %, until the REMB).
Every decrease is remembered: a probe fails when one falls inside it. Reports over 10 % twice
in a row make the link `congested`: only then is a flowing video paused (sfu/allocator.py).
"""

from __future__ import annotations

import math

HIGH_LOSS = 0.10
# From this much loss on, the estimate is what got through (a queue dropping at its cap), plus a
# margin: GCC's gentle cut is made for random loss, and would take seconds to get there.
HEAVY_LOSS = 0.20
DELIVERED_MARGIN = 1.1
# A clean report lifts the loss-based estimate to at least this much over what was sent.
CLEAN_MARGIN = 1.5
LOW_LOSS = 0.02
LOSS_GROWTH = 1.08
# This many loss reports in a row over HIGH_LOSS: the link is overflowing (`congested`).
CONGESTED_REPORTS = 2
# A REMB this much below the previous one counts as the path pushing back.
REMB_DROP = 0.95
# One cut per interval: a compound RTCP packet reports each stream, and loss lingers a while.
LOSS_INTERVAL = 0.9
# Absurd values a hostile or broken receiver might send are clamped, not trusted (bit/s).
MAX_ESTIMATE = 100_000_000


class Estimator:
    __slots__ = (
        "remb",
        "delay_based",
        "loss_based",
        "last_decrease",
        "loss",
        "_last_cut",
        "_last_clean",
        "lossy_reports",
    )

    def __init__(self) -> None:
        self.remb: int | None = None
        # keyroom's own estimate from transport-wide feedback (sfu/delaybwe.py), where negotiated.
        self.delay_based: int | None = None
        self.loss_based: int | None = None
        self.last_decrease = -math.inf
        # The last reported fraction lost (0..1) of the video sent.
        self.loss = 0.0
        self._last_cut = -math.inf
        # When a report last showed little loss.
        self._last_clean = -math.inf
        # Loss reports over HIGH_LOSS in a row, up to now.
        self.lossy_reports = 0

    def on_remb(self, bitrate: int, now: float) -> None:
        bitrate = min(max(bitrate, 0), MAX_ESTIMATE)
        if self.remb is not None and bitrate < self.remb * REMB_DROP:
            self.last_decrease = now
        self.remb = bitrate

    def on_delay_based(self, bitrate: int, now: float) -> None:
        bitrate = min(max(bitrate, 0), MAX_ESTIMATE)
        # The first one comes from an overuse (sfu/delaybwe.py): down from no limit at all.
        if self.delay_based is None or bitrate < self.delay_based * REMB_DROP:
            self.last_decrease = now
        self.delay_based = bitrate

    def on_loss(self, fraction: float, sending: int, now: float) -> None:
        """A Receiver Report: `fraction` of the packets lost since the last, while `sending`
        bit/s went to this subscriber."""
        self.loss = fraction
        self.lossy_reports = self.lossy_reports + 1 if fraction > HIGH_LOSS else 0
        if fraction > HIGH_LOSS:
            if now - self._last_cut < LOSS_INTERVAL:
                return
            rate = self.estimate()
            if rate is None or (sending > 0 and rate > 2 * sending):
                rate = 2 * sending if rate is not None else sending
            cut = rate * (1 - fraction / 2)
            if fraction >= HEAVY_LOSS and sending > 0:
                # A link this lossy is overflowing: it carries about what got through.
                cut = min(cut, sending * (1 - fraction) * DELIVERED_MARGIN)
            self.loss_based = int(max(cut, 1))
            self.last_decrease = self._last_cut = now
        elif fraction < LOW_LOSS:
            self._last_clean = now
            if self.loss_based is not None:
                # Back at once to what now gets through cleanly, then 8 % per report.
                grown = max(self.loss_based * LOSS_GROWTH, sending * CLEAN_MARGIN)
                self.loss_based = int(grown)
                known = [v for v in (self.remb, self.delay_based) if v is not None]
                ceiling = min(known, default=None)
                if ceiling is None or self.loss_based >= ceiling:
                    self.loss_based = None

    def estimate(self) -> int | None:
        """The downlink's estimated capacity (bit/s); None before any report limits it."""
        known = [v for v in (self.remb, self.delay_based, self.loss_based) if v is not None]
        return min(known) if known else None

    @property
    def congested(self) -> bool:
        """Whether the last CONGESTED_REPORTS loss reports in a row each showed over HIGH_LOSS:
        a link that keeps dropping, not one burst (a wire or a Wi-Fi hiccup)."""
        return self.lossy_reports >= CONGESTED_REPORTS

    def decreased_since(self, when: float) -> bool:
        return self.last_decrease >= when

    def clean_since(self, when: float) -> bool:
        """Whether a report since `when` showed little loss."""
        return self._last_clean >= when

    def quiet_for(self, seconds: float, now: float) -> bool:
        """Whether nothing pushed the estimate down for `seconds`."""
        return now - self.last_decrease >= seconds
