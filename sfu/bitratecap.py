"""`limits.max_video_bitrate` enforced (pure): REMB only asks a publisher to stay under it, and
a modified or broken client may ignore it. A video track measured over the limit by MARGIN for
WARN_AFTER seconds is warned; still over it PAUSE_AFTER seconds after it first went over, it is
paused for subscribers; paused, RESUME_AFTER seconds under the limit resume it.

`BitrateCap.observe` takes each track's once-a-second measurement (sfu/feedback.py) and the time,
and returns what to do; the participant's owner does it (signaling/bitratepolicy.py).
"""

from __future__ import annotations

from dataclasses import dataclass

MARGIN = 1.25  # REMB is a target, encoders overshoot it briefly: 25% over before acting
WARN_AFTER = 3.0
PAUSE_AFTER = 10.0
RESUME_AFTER = 5.0

WARN = "warning"
PAUSE = "paused"
RESUME = "resumed"


@dataclass
class _Track:
    over_since: float | None = None
    under_since: float | None = None
    warned: bool = False
    paused: bool = False


class BitrateCap:
    def __init__(self) -> None:
        self._tracks: dict[str, _Track] = {}

    def observe(self, sid: str, bitrate: int, limit: int, now: float) -> str | None:
        """One measurement of track `sid` (bits per second) against `limit` (0: none)."""
        state = self._tracks.setdefault(sid, _Track())
        if limit and bitrate > limit * MARGIN:
            state.under_since = None
            if state.over_since is None:
                state.over_since = now
            over = now - state.over_since
            if not state.paused and over >= PAUSE_AFTER:
                state.paused = True
                return PAUSE
            if not state.warned and over >= WARN_AFTER:
                state.warned = True
                return WARN
            return None
        state.over_since = None
        if not state.paused:
            state.warned = False
            return None
        if not limit or bitrate <= limit:
            if state.under_since is None:
                state.under_since = now
            if now - state.under_since >= RESUME_AFTER:
                self._tracks[sid] = _Track()
                return RESUME
        return None

    def paused(self, sid: str) -> bool:
        state = self._tracks.get(sid)
        return state is not None and state.paused

    def forget(self, sid: str) -> None:
        self._tracks.pop(sid, None)
