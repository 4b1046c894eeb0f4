"""A participant's connection quality: RTT, loss, jitter and estimated bandwidth, and a level.

Fed by the feedback state machine: report blocks from the subscriber's RTCP (downlink loss and
jitter per received stream), keyroom's own reports on the publisher's streams (uplink loss), the
RTT estimator (sfu/rtt.py) and the subscriber's REMB (its receive-side bandwidth estimate).
`evaluate()` runs every `INTERVAL` seconds and returns the new level when it changed and held for
two evaluations in a row (one bad second does not flap the indicator). Values out of range in a
report (a fraction above 255/256, a negative jitter) are clamped: they come from the network.
"""

from __future__ import annotations

from dataclasses import dataclass

INTERVAL = 2.0
EXCELLENT = "excellent"
GOOD = "good"
POOR = "poor"
LEVELS = (EXCELLENT, GOOD, POOR)
# (max loss fraction, max RTT s, max jitter s) for excellent and good; anything worse is poor.
_THRESHOLDS = ((EXCELLENT, 0.02, 0.15, 0.03), (GOOD, 0.08, 0.4, 0.1))


def level(loss: float, rtt: float | None, jitter: float) -> str:
    rtt = rtt or 0.0
    for name, max_loss, max_rtt, max_jitter in _THRESHOLDS:
        if loss <= max_loss and rtt <= max_rtt and jitter <= max_jitter:
            return name
    return POOR


@dataclass
class QualitySnapshot:
    level: str | None
    rtt_ms: float | None
    loss_down: float
    loss_up: float
    jitter_ms: float
    bandwidth_bps: int | None

    def as_dict(self) -> dict[str, object]:
        return {
            "quality": self.level,
            "rtt_ms": self.rtt_ms,
            "loss_down": self.loss_down,
            "loss_up": self.loss_up,
            "jitter_ms": self.jitter_ms,
            "bandwidth_bps": self.bandwidth_bps,
        }


class ConnectionQuality:
    __slots__ = ("_down", "_up", "bandwidth", "level", "_candidate")

    def __init__(self) -> None:
        # Received-stream SSRC -> (loss fraction, jitter s); uplink track sid -> loss fraction.
        self._down: dict[int, tuple[float, float]] = {}
        self._up: dict[str, float] = {}
        self.bandwidth: int | None = None
        self.level: str | None = None
        self._candidate: str | None = None

    def on_down_block(self, ssrc: int, fraction_lost: int, jitter: int, clock_rate: int) -> None:
        loss = min(max(fraction_lost, 0), 255) / 256
        self._down[ssrc] = (loss, max(jitter, 0) / clock_rate if clock_rate > 0 else 0.0)

    def on_up_block(self, sid: str, fraction_lost: int) -> None:
        self._up[sid] = min(max(fraction_lost, 0), 255) / 256

    def forget(self, ssrc: int | None = None, sid: str | None = None) -> None:
        if ssrc is not None:
            self._down.pop(ssrc, None)
        if sid is not None:
            self._up.pop(sid, None)

    def on_bandwidth(self, bitrate: int) -> None:
        self.bandwidth = max(bitrate, 0)

    def snapshot(self, rtt: float | None) -> QualitySnapshot:
        loss_down = max((loss for loss, _ in self._down.values()), default=0.0)
        jitter = max((j for _, j in self._down.values()), default=0.0)
        return QualitySnapshot(
            level=self.level,
            rtt_ms=None if rtt is None else round(rtt * 1000, 1),
            loss_down=round(loss_down, 4),
            loss_up=round(max(self._up.values(), default=0.0), 4),
            jitter_ms=round(jitter * 1000, 1),
            bandwidth_bps=self.bandwidth,
        )

    def evaluate(self, rtt: float | None) -> str | None:
        """The new level if it changed (and held twice in a row), else None."""
        if not self._down and not self._up and rtt is None:
            return None  # nothing measured yet
        shot = self.snapshot(rtt)
        now = level(max(shot.loss_down, shot.loss_up), rtt, shot.jitter_ms / 1000)
        if now == self.level:
            self._candidate = None
            return None
        if self.level is not None and self._candidate != now:
            self._candidate = now
            return None
        self.level, self._candidate = now, None
        return now
