"""The security-event stream (issue 15): typed events with a severity, aggregated per window.

Audit records are classified into `SecurityEvent`s (`classify`); detection rules
(auth/detection.py) add their own. `AlertAggregator` turns a flood into one alert per kind and
subject per window: the first at once, the rest counted into a summary when the window ends, so
a NACK flood or a refusal storm gives two alerts a minute, not one per packet. Pure: `now` is
passed in, and the caller (signaling/monitor.py) writes alerts to the audit log and webhooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

INFO, WARNING, CRITICAL = "info", "warning", "critical"
MAX_SUBJECTS = 1000
OVERFLOW_SUBJECT = "*"

REFUSALS = frozenset({"join_refused", "resume_refused", "refresh_refused"})
ADMIN_ACTIONS = frozenset(
    {"admin_call", "revoked", "kicked", "permissions_changed", "key_revoked", "identity_revoked"}
)
GRANT_REFUSALS = frozenset({"publish_refused", "subscribe_refused", "metadata_refused"})
# The audit fields an alert carries along (never a token or a secret: audit records hold none).
CARRIED = ("ip", "room", "identity", "key_id", "reason", "detail", "path", "method", "address")


@dataclass(frozen=True)
class SecurityEvent:
    """`kind` (what happened), `severity`, `subject` (what it is about: an identity, an
    address, a room, a key id, `node`) and the record's fields that tell the story."""

    kind: str
    severity: str
    subject: str
    fields: Mapping[str, Any] = field(default_factory=dict)


def _carried(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: fields[name] for name in CARRIED if fields.get(name) is not None}


def _who(fields: Mapping[str, Any]) -> str:
    return str(fields.get("identity") or fields.get("ip") or "unknown")


def classify(event: str, fields: Mapping[str, Any]) -> SecurityEvent | None:
    """The security event an audit record is, if any. Plain token refusals are not: one typo
    is no incident; their bursts engage the brake (`brake_engaged`) and the detection rules."""
    reason = fields.get("reason")
    carried = _carried(fields)
    if event in REFUSALS and reason == "pop_failed":
        return SecurityEvent("proof_failed", WARNING, _who(fields), carried)
    if event in REFUSALS and reason == "jti_reused":
        return SecurityEvent("token_reuse", WARNING, _who(fields), carried)
    if event == "brake_engaged":
        return SecurityEvent("brake_engaged", WARNING, str(fields.get("ip")), carried)
    if event == "admin_refused":
        return SecurityEvent("admin_refused", WARNING, str(fields.get("ip")), carried)
    if event == "abuse_close":
        return SecurityEvent("abuse_close", WARNING, _who(fields), carried)
    if event == "offer_refused":  # e.g. the cap on media sections (transceivers) per connection
        return SecurityEvent("offer_refused", WARNING, _who(fields), carried)
    if event in ("key_revoked", "identity_revoked"):
        subject = str(fields.get("key_id") or fields.get("identity"))
        return SecurityEvent(event, CRITICAL, subject, {**carried, "action": event})
    if event in ADMIN_ACTIONS:
        subject = str(fields.get("key_id") or "admin")
        return SecurityEvent("admin_action", INFO, subject, {**carried, "action": event})
    if event in GRANT_REFUSALS:
        return SecurityEvent("grant_refused", INFO, _who(fields), {**carried, "action": event})
    return None


@dataclass
class _Window:
    ends: float
    first: SecurityEvent
    count: int = 1


class AlertAggregator:
    """One alert per (kind, subject) per window; past `max_subjects` open windows, further
    subjects share one window under subject `*`."""

    def __init__(self, window: float, max_subjects: int = MAX_SUBJECTS) -> None:
        self.window = window
        self.max_subjects = max_subjects
        self._windows: dict[tuple[str, str], _Window] = {}

    def add(self, event: SecurityEvent, now: float) -> dict[str, Any] | None:
        """The alert to send now (the first of its window), or None if counted into one."""
        key = (event.kind, event.subject)
        window = self._windows.get(key)
        if window is None and len(self._windows) >= self.max_subjects:
            key = (event.kind, OVERFLOW_SUBJECT)
            window = self._windows.get(key)
            if window is None:
                event = SecurityEvent(event.kind, event.severity, OVERFLOW_SUBJECT, {})
        if window is not None:
            window.count += 1
            return None
        self._windows[key] = _Window(now + self.window, event)
        return self._alert(event, 1)

    def next_deadline(self) -> float | None:
        return min((w.ends for w in self._windows.values()), default=None)

    def due(self, now: float) -> list[dict[str, Any]]:
        """Summaries of the windows that ended with more than their first event."""
        summaries = []
        for key, window in list(self._windows.items()):
            if window.ends <= now:
                del self._windows[key]
                if window.count > 1:
                    summaries.append(self._alert(window.first, window.count - 1, summary=True))
        return summaries

    def _alert(self, event: SecurityEvent, count: int, *, summary: bool = False) -> dict[str, Any]:
        alert: dict[str, Any] = {
            "kind": event.kind,
            "severity": event.severity,
            "subject": event.subject,
            "count": count,
            "window": self.window,
            **event.fields,
        }
        if summary:
            alert["summary"] = True  # `count` more since the first alert of this window
        return alert
