"""A sender-side estimate of one subscriber's downlink from transport-wide feedback (sans-I/O,
`now` passed in): GCC's delay-based controller (draft-ietf-rmcat-gcc, libwebrtc's trendline
estimator) in a small form.

Packets sent within BURST of each other form a group; between consecutive groups, how much
longer the arrivals took than the sends (the delay variation) accumulates into the queuing
delay, smoothed. The slope of that delay over the last WINDOW groups (least squares) is the
trend: a queue filling up makes it positive. Scaled by the number of deltas and compared with
an adaptive threshold (it follows the trend's own noise, so a jittery path is not taken for a
congested one), it says overuse, underuse or normal.

The rate: on overuse, BACKOFF of what the receiver got over the last LINK_WINDOW (with a queue
building, the bottleneck's rate), at most once per DECREASE_INTERVAL; in the normal state it
grows GROWTH per second, never beyond ACKED_CAP times the acknowledged rate (what was not sent
was not tested). It never jumps to an acknowledged rate: a rate limiter's token bucket passes a
burst at line rate, which says nothing of its rate. Probing (sfu/congestion.py) proves more.
Underuse holds the rate (the queue drains).

The queue itself: each feedback's least one-way delay over the least of the last BASE_WINDOW
(`queue_delay`). Once an estimate exists, a queue standing over DRAIN_QUEUE for STANDING is
backed off from like an overuse (a trend sees a queue grow, not one kept full at the link's
rate), and the estimate does not grow over HOLD_QUEUE; probes stop on it (sfu/congestion.py).
An overuse while a packet of the feedback crossed an almost empty queue (OVERUSE_QUEUE) is no
congestion: the trend of a stalled receiver's bunched arrivals. A queue growing past
EARLY_QUEUE is an overuse without waiting for the trend.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from sfu.twcc import PacketResult

BURST = 0.005
WINDOW = 20
SMOOTHING = 0.9
TREND_GAIN = 4.0
MAX_DELTAS = 60
# Adaptive threshold (ms), as libwebrtc: starts here, moves towards the trend's magnitude.
THRESHOLD_START = 12.5
THRESHOLD_MIN = 6.0
THRESHOLD_MAX = 600.0
THRESHOLD_UP = 0.039
THRESHOLD_DOWN = 0.0087
# Overuse must last this long (s) over at least two groups before it counts.
OVERUSE_TIME = 0.01
BACKOFF = 0.85
DECREASE_INTERVAL = 0.3
GROWTH = 1.08
ACKED_CAP = 1.5
ACKED_SLACK = 10_000
# The acknowledged rate: bytes received over the last ACKED_WINDOW of arrival time.
ACKED_WINDOW = 0.5
LINK_WINDOW = 0.2
MIN_ESTIMATE = 30_000
# Loss is reported to the loss-based controller (sfu/estimator.py) per this much send time,
# over at least this many packets: faster than Receiver Reports, and over every stream.
LOSS_PERIOD = 0.5
LOSS_PACKETS = 20
# The path's one-way delay (the receiver's clock less the send time: their offset cancels) at
# its lowest over this many seconds is the empty-queue delay; a feedback whose every packet
# took longer shows a queue of that much (one late packet is jitter, all of them a queue).
BASE_WINDOW = 10.0
# A queue of DRAIN_QUEUE (s) is drained (a rate limiter's queue kept full drops the audio that
# joins it); over HOLD_QUEUE the estimate does not grow.
DRAIN_QUEUE = 0.1
HOLD_QUEUE = 0.05
# ... a queue that stood this long (s): a stall of a loaded machine delays a feedback or two.
STANDING = 0.5
# An overuse is acted on only while the feedback shows a queue of at least this much (s): a
# trend with a packet that crossed an empty queue is a loaded machine's stall (arrivals bunched
# after it), not a link filling up; cut on it, an unconstrained subscriber left its top layer.
OVERUSE_QUEUE = 0.02
# A queue of EARLY_QUEUE (s) that grew since the previous feedback (itself over OVERUSE_QUEUE)
# is an overuse: a link capped under what flows fills its queue at the excess, and the trend
# took 0.2-0.25 s more to say so (bench-simulcast: by then a 300 kbit/s tbf's ~0.5 s queue
# overflowed and dropped audio; a stall's bunched arrivals show a queue that shrinks, not one
# that grows). Also once an estimate exists: the first cut may come while the tbf's token
# burst still inflates what arrived (600 kbit/s through a 300 kbit/s cap), and the queue goes
# on growing.
EARLY_QUEUE = 0.06

NORMAL, OVERUSE, UNDERUSE = "normal", "overuse", "underuse"


class Trendline:
    """Overuse detection from (send time s, arrival time µs) of received packets, in send order."""

    def __init__(self) -> None:
        # The group being filled: first send time, last send time, last arrival (s).
        self._group: tuple[float, float, float] | None = None
        self._previous: tuple[float, float] | None = None  # last complete group: send, arrival
        self._first_arrival: float | None = None
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._points: deque[tuple[float, float]] = deque(maxlen=WINDOW)
        self._deltas = 0
        self.threshold = THRESHOLD_START
        self._last_threshold_update: float | None = None
        self._overuse_since: float | None = None
        self._overuse_count = 0
        self._trend = 0.0
        self.state = NORMAL

    def packet(self, send_time: float, arrival_us: int) -> None:
        arrival = arrival_us / 1e6
        group = self._group
        if group is None:
            self._group = (send_time, send_time, arrival)
            return
        first, _, last_arrival = group
        if send_time - first <= BURST:
            self._group = (first, max(send_time, group[1]), max(arrival, last_arrival))
            return
        self._complete(group[1], last_arrival)
        self._group = (send_time, send_time, arrival)

    def _complete(self, send: float, arrival: float) -> None:
        previous = self._previous
        self._previous = (send, arrival)
        if previous is None:
            return
        variation_ms = ((arrival - previous[1]) - (send - previous[0])) * 1000
        self._deltas = min(self._deltas + 1, MAX_DELTAS)
        self._accumulated += variation_ms
        self._smoothed = SMOOTHING * self._smoothed + (1 - SMOOTHING) * self._accumulated
        if self._first_arrival is None:
            self._first_arrival = arrival
        self._points.append(((arrival - self._first_arrival) * 1000, self._smoothed))
        trend = _slope(self._points) if len(self._points) == WINDOW else self._trend
        self._detect(trend, (send - previous[0]), arrival)

    def _detect(self, trend: float, send_delta: float, now: float) -> None:
        modified = min(self._deltas, MAX_DELTAS) * trend * TREND_GAIN
        if modified > self.threshold:
            if self._overuse_since is None:
                self._overuse_since = now - send_delta / 2
            self._overuse_count += 1
            lasted = now - self._overuse_since
            if lasted > OVERUSE_TIME and self._overuse_count > 1 and trend >= self._trend:
                self._overuse_since, self._overuse_count = None, 0
                self.state = OVERUSE
        elif modified < -self.threshold:
            self._overuse_since, self._overuse_count = None, 0
            self.state = UNDERUSE
        else:
            self._overuse_since, self._overuse_count = None, 0
            self.state = NORMAL
        self._trend = trend
        self._adapt(modified, now)

    def _adapt(self, modified: float, now: float) -> None:
        last = self._last_threshold_update
        self._last_threshold_update = now
        if last is None or abs(modified) > self.threshold + 15:
            return  # a spike (a route change, a stall) does not move the threshold
        k = THRESHOLD_UP if abs(modified) > self.threshold else THRESHOLD_DOWN
        elapsed_ms = min((now - last) * 1000, 100.0)
        self.threshold += k * (abs(modified) - self.threshold) * elapsed_ms
        self.threshold = min(max(self.threshold, THRESHOLD_MIN), THRESHOLD_MAX)


def _slope(points: Sequence[tuple[float, float]]) -> float:
    n = len(points)
    mean_x = sum(p[0] for p in points) / n
    mean_y = sum(p[1] for p in points) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in points)
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return num / den if den else 0.0


class DelayBasedEstimate:
    """The rate (bit/s) the subscriber's downlink carries without a queue building; None until
    its first overuse (until then nothing limits the allocation, as before any REMB)."""

    def __init__(self) -> None:
        self.trendline = Trendline()
        self.estimate: int | None = None
        self._acked: deque[tuple[int, int]] = deque()  # (arrival µs, bytes)
        self._acked_bytes = 0
        self._last_decrease = -1e9
        self._last_update: float | None = None
        self.lost = self.received = 0
        self.overuses = 0
        # (send time, the least one-way delay) of each feedback over BASE_WINDOW; the queuing
        # delay the last feedback showed (s).
        self._delays: deque[tuple[float, float]] = deque()
        self.queue_delay = 0.0
        self._last_queue = 0.0  # the feedback's before
        self._queued_since: float | None = None  # since when over DRAIN_QUEUE
        # Since the last loss report: packets lost, packets, bytes, first and last send time.
        self._period: tuple[int, int, int, float, float] | None = None

    def on_feedback(self, results: Sequence[PacketResult], now: float) -> int | None:
        """Feed one feedback's packets (send order); the estimate after it."""
        least: float | None = None
        for result in results:
            self._count(result)
            if result.arrival_us is None:
                self.lost += 1
                continue
            self.received += 1
            self.trendline.packet(result.send_time, result.arrival_us)
            self._ack(result.arrival_us, result.size)
            delay = result.arrival_us / 1e6 - result.send_time
            least = delay if least is None else min(least, delay)
        if least is not None:
            self._queue(results[-1].send_time, least)
        self._update(now)
        return self.estimate

    def _queue(self, sent: float, least: float) -> None:
        # A monotonic deque: increasing delays, so its first entry is the window's least.
        delays = self._delays
        while delays and delays[-1][1] >= least:
            delays.pop()
        delays.append((sent, least))
        while delays[0][0] < sent - BASE_WINDOW:
            delays.popleft()
        self._last_queue = self.queue_delay
        self.queue_delay = least - delays[0][1]

    def _count(self, result: PacketResult) -> None:
        lost = result.arrival_us is None
        if self._period is None:
            self._period = (int(lost), 1, result.size, result.send_time, result.send_time)
            return
        n_lost, n, size, first, last = self._period
        t = result.send_time
        self._period = (n_lost + lost, n + 1, size + result.size, min(first, t), max(last, t))

    def loss_report(self) -> tuple[float, int] | None:
        """(fraction lost, bit/s sent) of the packets reported since the last call, once they
        span LOSS_PERIOD of send time and number LOSS_PACKETS; else None (keep counting)."""
        period = self._period
        if period is None:
            return None
        lost, n, size, first, last = period
        if last - first < LOSS_PERIOD or n < LOSS_PACKETS:
            return None
        self._period = None
        return lost / n, int(size * 8 / (last - first))

    def _ack(self, arrival_us: int, size: int) -> None:
        acked = self._acked
        acked.append((arrival_us, size))
        self._acked_bytes += size
        horizon = arrival_us - ACKED_WINDOW * 1e6
        while acked and acked[0][0] < horizon:
            self._acked_bytes -= acked.popleft()[1]

    def acked_rate(self) -> int | None:
        """What the receiver got over the last ACKED_WINDOW (bit/s); None before enough."""
        acked = self._acked
        if len(acked) < 2:
            return None
        span = max((acked[-1][0] - acked[0][0]) / 1e6, ACKED_WINDOW / 2)
        return int(self._acked_bytes * 8 / span)

    def link_rate(self) -> int | None:
        """What arrived over the last LINK_WINDOW: while a queue builds, the bottleneck's own
        rate (its queue is never empty), not yet diluted by what came before the congestion."""
        acked = self._acked
        if len(acked) < 2:
            return None
        last = acked[-1][0]
        horizon = last - LINK_WINDOW * 1e6
        size, first, first_size = 0, last, 0
        for arrival, length in reversed(acked):
            if arrival < horizon:
                break
            size, first, first_size = size + length, arrival, length
        if last - first < LINK_WINDOW * 1e6 / 2:
            return self.acked_rate()
        # What arrived after the first packet, over the time since: counting the first too
        # overstated the rate by a packet (a fifth at 300 kbit/s), and a cut to 85 % of that
        # left the link's queue full.
        return int((size - first_size) * 8 / ((last - first) / 1e6))

    def _update(self, now: float) -> None:
        elapsed = 0.0 if self._last_update is None else min(now - self._last_update, 1.0)
        self._last_update = now
        acked = self.acked_rate()
        state = self.trendline.state
        # Once an estimate exists (a cap was met), a queue that stands is drained like one that
        # grows: the trend sees a queue filling, not one kept full at the link's rate.
        if self.queue_delay <= DRAIN_QUEUE:
            self._queued_since = None
        elif self._queued_since is None:
            self._queued_since = now
        since = self._queued_since
        standing = self.estimate is not None and since is not None and now - since >= STANDING
        if state == OVERUSE and self.queue_delay < OVERUSE_QUEUE and not standing:
            return  # no cut, no growth either (see OVERUSE_QUEUE)
        queue, last = self.queue_delay, self._last_queue
        growing = queue >= EARLY_QUEUE and OVERUSE_QUEUE <= last < queue
        if state == OVERUSE or standing or growing:
            if now - self._last_decrease >= DECREASE_INTERVAL:
                base = self.link_rate() or self.estimate
                if base is not None:
                    cut = max(int(base * BACKOFF), MIN_ESTIMATE)
                    # Never up: after a stall, a burst arrives at line rate.
                    self.estimate = cut if self.estimate is None else min(cut, self.estimate)
                    self._last_decrease = now
                    self.overuses += 1
            return
        if state == UNDERUSE or self.estimate is None or acked is None:
            return
        if self.queue_delay > HOLD_QUEUE:
            return  # growing now would only keep the queue
        grown = self.estimate * GROWTH**elapsed
        cap = acked * ACKED_CAP + ACKED_SLACK
        # The cap stops growth; it does not cut an estimate made when more was being sent.
        self.estimate = int(max(min(grown, cap), self.estimate))
