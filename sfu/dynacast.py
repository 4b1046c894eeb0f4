"""Dynacast: ask a publisher to stop encoding simulcast layers nobody receives (sans-I/O).

A layer is needed while a down-track forwards it or aims at it. One unneeded for IDLE_DELAY
seconds is switched off (the page sets `active: false` on that encoding); one needed again is
switched on at once, and the down-track waiting for it gets its keyframe when it starts. The
lowest layer always stays on: a subscriber always has something to fall back to at once, and a
new one its first frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sfu.forwarder import PublishedTrack

IDLE_DELAY = 5.0


class Dynacast:
    def __init__(self) -> None:
        # (track sid, layer index) -> since when nobody needs it.
        self._idle_since: dict[tuple[str, int], float] = {}

    def update(self, tracks: Iterable[PublishedTrack], now: float) -> list[dict[str, Any]]:
        """The `dynacast` events for the tracks whose layers' activity changed."""
        events = []
        live = set()
        for track in tracks:
            if not track.layers:
                continue
            needed = self._needed(track)
            changed = False
            for layer in track.layers:
                key = (track.sid, layer.index)
                live.add(key)
                if layer.index in needed:
                    self._idle_since.pop(key, None)
                    active = True
                else:
                    since = self._idle_since.setdefault(key, now)
                    active = layer.active and now - since < IDLE_DELAY
                if active != layer.active:
                    layer.activate(active)
                    changed = True
            if changed:
                events.append(
                    {
                        "type": "dynacast",
                        "track_sid": track.sid,
                        "layers": [{"rid": x.rid, "active": x.active} for x in track.layers],
                    }
                )
        for key in [k for k in self._idle_since if k not in live]:
            del self._idle_since[key]
        return events

    @staticmethod
    def _needed(track: PublishedTrack) -> set[int]:
        needed = set()
        for down in track.down_tracks:
            if down.layers is not None:
                needed.add(down.layers.target)
                needed.add(down.layers.current)
        needed.add(0)
        if any(layer.taps for layer in track.layers):  # a recording keeps every layer it can
            needed.update(layer.index for layer in track.layers)
        return needed
