"""LiveKit's `ConnectionQualityUpdate` from keyroom's connection quality (sfu/quality.py).

LiveKit's server tells each participant the quality of its own connection and of the others'
(the SDKs show it per participant). keyroom measures each participant's level from its RTCP
(`excellent`, `good`, `poor`; a connection not measured yet is `excellent`, as keyroom's own
clients are told). `QualityReport` is a timer owner (sfu/clock.py): every `INTERVAL` seconds it
reads the levels of the room's visible participants and sends those that changed since its last
update (the first update names everyone). Sans-I/O: `now` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from livekit.protocol import models, rtc

from sfu.quality import EXCELLENT, GOOD, INTERVAL, POOR

QUALITY = {EXCELLENT: models.EXCELLENT, GOOD: models.GOOD, POOR: models.POOR}
# LiveKit's score is a MOS-like 1..5; keyroom's levels stand for these.
SCORE = {EXCELLENT: 4.5, GOOD: 3.5, POOR: 2.0}


def quality_update(sent: Mapping[str, str], levels: Mapping[str, str]) -> rtc.SignalResponse | None:
    """The update for the participants whose level is not the one `sent` to the client."""
    updates = [
        rtc.ConnectionQualityInfo(participant_sid=sid, quality=QUALITY[level], score=SCORE[level])
        for sid, level in levels.items()
        if sent.get(sid) != level and level in QUALITY
    ]
    if not updates:
        return None
    return rtc.SignalResponse(connection_quality=rtc.ConnectionQualityUpdate(updates=updates))


class QualityReport:
    """Sends `send(update)` every INTERVAL when a level in `levels()` (sid -> level) changed."""

    def __init__(
        self,
        levels: Callable[[], Mapping[str, str]],
        send: Callable[[rtc.SignalResponse], None],
        now: float,
    ) -> None:
        self._levels = levels
        self._send = send
        self._due = now + INTERVAL
        self._sent: dict[str, str] = {}

    def next_deadline(self) -> float | None:
        return self._due

    def handle_timer(self, now: float) -> None:
        if now < self._due:
            return
        self._due = now + INTERVAL
        levels = dict(self._levels())
        response = quality_update(self._sent, levels)
        self._sent = levels
        if response is not None:
            self._send(response)
