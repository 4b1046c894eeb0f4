"""Which layer of each video track a subscriber gets from its estimated downlink (sans-I/O).

Audio first: its bitrate is reserved before any video. Then video by priority (screen share
before camera): first every track's lowest layer while it fits, so as many tracks as possible
play, then upgrades in the same order, each to the highest layer under the subscriber's cap
that fits. A track whose lowest layer does not fit is paused rather than congesting the audio;
the first one (and, while nothing pushed the estimate down lately, any) only when its lowest
layer needs more than twice what is left: a video that plays matters more than an estimate
that errs low (a browser's REMB starts low and follows what it receives).

Pausing needs loss (`hold` otherwise): a video that flows is not paused on a delay-based
estimate alone (the browser's REMB, keyroom's own from transport feedback). Such an estimate
errs low on a path whose delay merely varies: Chromium cuts its REMB to 0.85x what it receives
at a delay spike and climbs back at a few dozen kbit/s a second, so at 100 ms + 1 % loss it sat
at 0.4-0.6x what the link was carrying without loss, and each pause froze the picture for seconds
(until a lower estimate let it resume, then a keyframe). A link that really cannot carry the
video keeps dropping packets, audio's included: loss reports over 10 % in a row
(sfu/estimator.py `congested`) end the hold; one burst does not. A lower simulcast layer is
still taken on the estimate alone: that costs no freeze.

Hysteresis: going above the layer a track has now must fit in HEADROOM of the estimate, while
keeping it may use the whole estimate, and CALM_SLACK more while nothing pushed the estimate
down lately. Otherwise a REMB that sits near a layer's bitrate (it follows what the browser
receives, at most ~1.5x) would flip the track between two layers every few seconds: a layer is
left on a sign of congestion, not on an estimate that merely lags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sfu.layerswitch import PAUSED

# Part of the estimate spent: queues stay short, and the estimate may be a little optimistic.
HEADROOM = 0.9
SOURCE_PRIORITY = {"screen_share": 0, "camera": 1}
FIRST_VIDEO_STRETCH = 2.0
CALM_SLACK = 0.3


@dataclass(frozen=True)
class VideoDemand:
    key: str
    # Lower is served first (SOURCE_PRIORITY).
    priority: int
    # Expected bit/s of each layer, lowest first; one entry for a single-layer track.
    bitrates: tuple[int, ...]
    # The highest layer the subscriber wants (set_quality, tile size); PAUSED: none.
    max_layer: int

    @property
    def top(self) -> int:
        return min(self.max_layer, len(self.bitrates) - 1)


def allocate(
    budget: int | None,
    audio: int,
    videos: Sequence[VideoDemand],
    current: Mapping[str, int] | None = None,
    calm: bool = False,
    hold: bool = False,
) -> dict[str, int]:
    """key -> layer (PAUSED: nothing) for `budget` bit/s (None: unconstrained) of which `audio`
    goes to audio; `current`: the layers the tracks have now, kept more readily while `calm`
    (nothing pushed the estimate down lately; see the hysteresis above); `hold`: the link is not
    seen dropping what flows (see above), so no flowing video is paused."""
    if budget is None:
        return {v.key: v.top for v in videos}
    now = current or {}
    slack = budget * (1 - HEADROOM + (CALM_SLACK if calm else 0))
    spend = _Spending(budget * HEADROOM - audio, slack)
    order = sorted(videos, key=lambda v: (v.priority, v.key))
    choice: dict[str, int] = {}
    for n, video in enumerate(order):
        choice[video.key] = PAUSED
        flowing = now.get(video.key, PAUSED) >= 0
        if video.top < 0:
            continue
        if spend.take(video.bitrates[0], flowing):
            choice[video.key] = 0
        elif hold and flowing:
            spend.left -= video.bitrates[0]
            choice[video.key] = 0
        elif (n == 0 or calm) and spend.stretch(video.bitrates[0]):
            choice[video.key] = 0
    for video in order:
        layer = choice[video.key]
        while 0 <= layer < video.top:
            step = video.bitrates[layer + 1] - video.bitrates[layer]
            if not spend.take(step, layer + 1 <= now.get(video.key, PAUSED)):
                break
            layer += 1
        choice[video.key] = layer
    return choice


class _Spending:
    """What is left of the budget: `left` for anything, `slack` only to keep a layer."""

    def __init__(self, left: float, slack: float) -> None:
        self.left = left
        self.slack = slack

    def take(self, amount: int, keeping: bool) -> bool:
        if amount <= self.left:
            self.left -= amount
            return True
        if keeping and amount <= self.left + self.slack:
            self.slack -= amount - max(self.left, 0)
            self.left = min(self.left, 0)
            return True
        return False

    def stretch(self, amount: int) -> bool:
        """The first video's lowest layer: paused only when it needs more than FIRST_VIDEO_STRETCH
        times what is left (a REMB under a rate cap often sits well below the cap)."""
        if amount > FIRST_VIDEO_STRETCH * max(self.left + self.slack, 0):
            return False
        self.left -= amount
        return True


def bump(choice: Mapping[str, int], videos: Sequence[VideoDemand]) -> dict[str, int]:
    """`choice` with the first video (by priority) short of its cap one layer up."""
    bumped = {v.key: choice.get(v.key, PAUSED) for v in videos}
    for video in sorted(videos, key=lambda v: (v.priority, v.key)):
        if bumped[video.key] < video.top:
            bumped[video.key] += 1
            break
    return bumped


def next_step(choice: dict[str, int], videos: Sequence[VideoDemand]) -> int:
    """The extra bit/s the first (by priority) video short of its cap would need for one more
    layer; 0 when every video has what it asked for."""
    for video in sorted(videos, key=lambda v: (v.priority, v.key)):
        layer = choice.get(video.key, PAUSED)
        if layer < video.top:
            if layer == PAUSED:
                return video.bitrates[0]
            return video.bitrates[layer + 1] - video.bitrates[layer]
    return 0
