"""Simulcast for LiveKit's SDKs: the layers a publisher declares, and a subscriber's
`UpdateTrackSettings` as keyroom's layer choice (sfu/allocator.py). Pure but for `Declared`.

A LiveKit publisher declares each simulcast layer's dimensions in its `AddTrackRequest`; keyroom
keeps them beside the track (`Declared`, weakly: they go with the track) and reports them in
`TrackInfo.layers`. A subscriber's settings become the highest layer it wants, as LiveKit's
server chooses it: the smallest layer at least as large as the rendered size (within 10 %),
else the largest (without declared sizes, LiveKit's defaults: 180 and 360 lines, then the
top); or the quality it names; `disabled` is a pause (nothing forwarded until enabled again).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from livekit.protocol import models, rtc

from sfu.forwarder import PublishedTrack
from sfu.layerswitch import PAUSED

# keyroom's layer index by LiveKit's quality (a track's layers, lowest first).
QUALITY_LAYER: dict[int, int] = {models.LOW: 0, models.MEDIUM: 1, models.HIGH: 2}
DEFAULT_SIZES = (180, 360)
TOLERANCE = 0.9  # LiveKit's layerSelectionTolerance

Dimensions = Mapping[int, tuple[int, int]]  # quality -> (width, height)


@dataclass(frozen=True)
class TrackSettings:
    """A subscriber's `UpdateTrackSettings` for one track."""

    track_sid: str
    quality: int
    width: int
    height: int
    disabled: bool
    req: int


def declared_dimensions(add: rtc.AddTrackRequest) -> dict[int, tuple[int, int]]:
    """quality -> (width, height) as the publisher declared them; a single-layer video's size
    is its HIGH (and only) layer's."""
    sizes: dict[int, tuple[int, int]] = {
        int(layer.quality): (layer.width, layer.height) for layer in add.layers if layer.height
    }
    if not sizes and add.width and add.height:
        sizes[int(models.HIGH)] = (add.width, add.height)
    return sizes


def wanted_layer(settings: TrackSettings, sizes: Dimensions) -> int:
    """The highest layer the subscriber wants (PAUSED: none)."""
    if settings.disabled:
        return PAUSED
    if not (settings.width or settings.height):
        return QUALITY_LAYER.get(settings.quality, 2)
    # The shorter side (a portrait video's width), as LiveKit compares heights of landscape video.
    requested = min(s for s in (settings.width, settings.height) if s) * TOLERANCE
    declared = sorted(min(w, h) for w, h in sizes.values() if w and h)
    steps = declared[:-1] if len(declared) > 1 else list(DEFAULT_SIZES)
    for layer, size in enumerate(steps):
        if size >= requested:
            return layer
    return 2


class Declared:
    """The dimensions each LiveKit publisher declared for its tracks."""

    def __init__(self) -> None:
        self._sizes: WeakKeyDictionary[PublishedTrack, dict[int, tuple[int, int]]] = (
            WeakKeyDictionary()
        )

    def remember(self, track: PublishedTrack, add: rtc.AddTrackRequest) -> None:
        sizes = declared_dimensions(add)
        if sizes:
            self._sizes[track] = sizes

    def of(self, track: PublishedTrack | None) -> Dimensions:
        return self._sizes.get(track, {}) if track is not None else {}

    def annotate(self, info: dict[str, Any], tracks: Mapping[str, PublishedTrack]) -> None:
        """A participant's info dict with its tracks' declared sizes (convert.track_info)."""
        for track_info in info.get("tracks", ()):
            sizes = self.of(tracks.get(str(track_info.get("sid"))))
            if sizes:
                track_info["declared_layers"] = dict(sizes)
                track_info["width"], track_info["height"] = max(sizes.values())


DECLARED = Declared()
