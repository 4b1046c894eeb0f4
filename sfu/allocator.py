"""Which layer of each video track a subscriber gets from its estimated downlink (sans-I/O).

Audio first: its bitrate is reserved before any video. Then video by priority (screen share
before camera): first every track's lowest layer while it fits, so as many tracks as possible
play, then upgrades in the same order, each to the highest layer under the subscriber's cap
that fits. A track whose lowest layer does not fit is paused rather than congesting the audio.

Hysteresis: going above the layer a track has now must fit in HEADROOM of the estimate, while
keeping it may use the whole estimate. Otherwise a REMB that sits near a layer's bitrate (it
follows what the browser receives) would flip the track between two layers every second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sfu.layerswitch import PAUSED

# Part of the estimate spent: queues stay short, and the estimate may be a little optimistic.
HEADROOM = 0.9
SOURCE_PRIORITY = {"screen_share": 0, "camera": 1}


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
) -> dict[str, int]:
    """key -> layer (PAUSED: nothing) for `budget` bit/s (None: unconstrained) of which `audio`
    goes to audio; `current`: the layers the tracks have now (see the hysteresis above)."""
    if budget is None:
        return {v.key: v.top for v in videos}
    now = current or {}
    spend = _Spending(budget * HEADROOM - audio, budget * (1 - HEADROOM))
    order = sorted(videos, key=lambda v: (v.priority, v.key))
    choice: dict[str, int] = {}
    for video in order:
        choice[video.key] = PAUSED
        if video.top >= 0 and spend.take(video.bitrates[0], now.get(video.key, PAUSED) >= 0):
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
