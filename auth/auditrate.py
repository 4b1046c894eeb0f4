"""Repeated refusals become one audit record per window, so a flood cannot flood the log.

The first refusal of a kind (event, address, reason) in a window is written at once; the others
are counted and written as one summary record (`repeated`: how many) when the window ends. The
number of kinds tracked at once is bounded: past it, refusals from further addresses are counted
together under `ip: "*"`. Pure: the writer passes `now` in and asks for the summaries due.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AGGREGATED_EVENTS = frozenset(
    {
        "join_refused",
        "resume_refused",
        "refresh_refused",
        "admin_refused",
        "brake_engaged",
        "offer_refused",
    }
)
WINDOW = 10.0
MAX_KINDS = 1000


@dataclass
class _Window:
    ends: float
    repeated: int = 0


class RefusalAggregator:
    def __init__(self, window: float = WINDOW, max_kinds: int = MAX_KINDS) -> None:
        self.window = window
        self.max_kinds = max_kinds
        self._windows: dict[tuple[str, Any, Any], _Window] = {}

    def admit(self, event: str, fields: dict[str, Any], now: float) -> bool:
        """True if the record is to be written now; False if it was counted into a summary."""
        if event not in AGGREGATED_EVENTS:
            return True
        kind = (event, fields.get("ip"), fields.get("reason"))
        window = self._windows.get(kind)
        if window is None and len(self._windows) >= self.max_kinds:
            kind = (event, "*", fields.get("reason"))
            window = self._windows.setdefault(kind, _Window(now + self.window))
        if window is None:
            self._windows[kind] = _Window(now + self.window)
            return True
        window.repeated += 1
        return False

    def next_deadline(self) -> float | None:
        return min((w.ends for w in self._windows.values()), default=None)

    def due(self, now: float) -> list[dict[str, Any]]:
        """Summary records (event and fields) of the windows that have ended."""
        summaries = []
        for kind, window in list(self._windows.items()):
            if window.ends > now:
                continue
            del self._windows[kind]
            if window.repeated:
                event, ip, reason = kind
                summary: dict[str, Any] = {"event": event, "repeated": window.repeated}
                summary["window"] = self.window
                if ip is not None:
                    summary["ip"] = ip
                if reason is not None:
                    summary["reason"] = reason
                summaries.append(summary)
        return summaries
