"""Congestion control towards one subscriber: its reports -> an estimate -> each video
down-track's layer, once a second (sans-I/O, `now` passed in).

A browser's REMB only grows to about 1.5x what it receives, so a subscriber held on a low layer
would never show that its link recovered. keyroom therefore probes upwards: after
PROBE_INTERVAL without the estimate falling while some video is below what the subscriber
asked for, it grants the next layer for PROBE_LENGTH seconds. If neither REMB nor loss pushes
back meanwhile the level is kept (until they do), else it is dropped and the next probe waits
twice as long (at most MAX_PROBE_INTERVAL).
"""

from __future__ import annotations

from collections.abc import Mapping

from sfu.allocator import HEADROOM, SOURCE_PRIORITY, VideoDemand, allocate, next_step
from sfu.estimator import Estimator
from sfu.forwarder import DownTrack
from sfu.layerswitch import PAUSED
from sfu.rtcp import ReportBlock

PROBE_INTERVAL = 4.0
MAX_PROBE_INTERVAL = 60.0
PROBE_LENGTH = 3.0
# Reserved per audio down-track before any video (Opus at its usual 32-48 kbit/s, headers).
AUDIO_BITRATE = 64_000


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
        self.estimator = Estimator()
        self._octets: dict[str, tuple[float, int]] = {}
        self.sending = 0
        # A probe in progress: (start, end, budget); a level a probe proved: (since, budget).
        self._probe: tuple[float, float, int] | None = None
        self._granted: tuple[float, int] | None = None
        self._interval = PROBE_INTERVAL
        self._next_probe: float | None = None
        self.choice: dict[str, int] = {}

    def on_remb(self, bitrate: int, now: float) -> None:
        self.estimator.on_remb(bitrate, now)

    def on_report_block(self, block: ReportBlock, now: float) -> None:
        """Loss on a video down-track this subscriber receives."""
        if any(d.out_ssrc == block.ssrc for d in self._subscriptions.values() if d.cache):
            self.estimator.on_loss(block.fraction_lost / 256, self.sending, now)

    def tick(self, now: float) -> list[DownTrack]:
        """Measure what was sent and re-allocate (once a second); the down-tracks whose new
        layer needs a keyframe."""
        self.sending = sum(self._measure(sid, d, now) for sid, d in self._subscriptions.items())
        for sid in [s for s in self._octets if s not in self._subscriptions]:
            del self._octets[sid]
        return self.reallocate(now)

    def reallocate(self, now: float) -> list[DownTrack]:
        """Apply the current estimate (e.g. at once after a subscriber's set_quality)."""
        videos, downs, audio = [], {}, 0
        for down in self._subscriptions.values():
            if down.track.kind == "video":
                videos.append(demand(down))
                downs[down.track.sid] = down
            else:
                audio += AUDIO_BITRATE
        self.choice = choice = self._allocate(now, audio, videos)
        return [downs[key] for key, layer in choice.items() if downs[key].set_layer(layer)]

    def _measure(self, sid: str, down: DownTrack, now: float) -> int:
        octets = down.rewriter.octets if down.rewriter else 0
        then, before = self._octets.get(sid, (now, octets))
        self._octets[sid] = (now, octets)
        return int((octets - before) * 8 / (now - then)) if now > then else 0

    def _allocate(self, now: float, audio: int, videos: list[VideoDemand]) -> dict[str, int]:
        estimator = self.estimator
        estimate = estimator.estimate()
        if estimate is None:
            return allocate(None, audio, videos)
        budget = estimate
        if self._granted is not None:
            if estimator.decreased_since(self._granted[0]):
                self._granted = None
            else:
                budget = max(budget, self._granted[1])
        if self._probe is not None:
            start, end, level = self._probe
            if estimator.decreased_since(start):
                self._probe = None
                self._interval = min(self._interval * 2, MAX_PROBE_INTERVAL)
                self._next_probe = now + self._interval
            elif now >= end:
                self._probe = None
                self._granted = (start, level)
                self._interval = PROBE_INTERVAL
                self._next_probe = now + self._interval
                budget = max(budget, level)
            else:
                return allocate(max(budget, level), audio, videos)
        choice = allocate(budget, audio, videos)
        step = next_step(choice, videos)
        if not step:
            self._next_probe = None
        elif self._next_probe is None:
            self._next_probe = now + self._interval
        elif now >= self._next_probe and estimator.quiet_for(self._interval, now):
            level = budget + int(step / HEADROOM) + 1
            self._probe = (now, now + PROBE_LENGTH, level)
            choice = allocate(level, audio, videos)
        return choice

    @property
    def probing(self) -> bool:
        return self._probe is not None
