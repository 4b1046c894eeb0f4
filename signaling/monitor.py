"""The security monitor: the I/O edge of the security-event stream (issue 15).

It listens to every audit record as it is recorded (on the event loop), classifies it
(auth/alerts.py), runs the detection rules (auth/detection.py), samples the rooms' uplinks and
the node's drop counters every `SAMPLE_INTERVAL` seconds, aggregates per `[security]
alert_window`, and sends each alert to the audit log (`security_alert`), the
`keyroom_security_alerts_total` metric and, with `webhook_alerts`, the webhook sender. Its
timer is a `TimerDriver`; the rules themselves take the time as an argument.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from auth.alerts import REFUSALS, AlertAggregator, SecurityEvent, classify
from auth.detection import Detector
from sfu.clock import TimerDriver
from sfu.metrics import record_security_alert
from signaling.state import ServerState

SAMPLE_INTERVAL = 5.0
ALERT_EVENT = "security_alert"


class SecurityMonitor:
    def __init__(
        self, state: ServerState, send: Callable[[Mapping[str, Any]], None] | None = None
    ) -> None:
        self.state = state
        self.send = send
        security = state.config.security
        self.aggregator = AlertAggregator(security.alert_window)
        self.detector = Detector(security)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._next_sample = self._loop.time() + SAMPLE_INTERVAL
        self._timer = TimerDriver(self)
        self._timer.update()

    def close(self) -> None:
        self._timer.stop()

    # -- input ------------------------------------------------------------------------------------

    def observe(self, event: str, fields: Mapping[str, Any]) -> None:
        """An AuditLog listener: one audit record, as it is recorded."""
        if event == ALERT_EVENT or threading.get_ident() != self._thread:
            return  # its own alerts; a record from another thread (none today) is not ours
        now = self._loop.time()
        found: list[SecurityEvent] = []
        classified = classify(event, fields)
        if classified is not None:
            found.append(classified)
        if event == "join_accepted":
            found += self.detector.joined(
                str(fields.get("identity")), str(fields.get("ip")), str(fields.get("room")),
                now, time.time(),
            )  # fmt: skip
        elif event in REFUSALS:
            found += self.detector.refused(fields, now)
        for security_event in found:
            self.raise_event(security_event, now)
        self._timer.update()

    def raise_event(self, event: SecurityEvent, now: float) -> None:
        alert = self.aggregator.add(event, now)
        if alert is not None:
            self._emit(alert)

    # -- timer ------------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        due = self.aggregator.next_deadline()
        return self._next_sample if due is None else min(due, self._next_sample)

    def handle_timer(self, now: float) -> None:
        for summary in self.aggregator.due(now):
            self._emit(summary)
        if now >= self._next_sample:
            self._next_sample = now + SAMPLE_INTERVAL
            self._sample(now)

    def _sample(self, now: float) -> None:
        found = self.detector.drops(self.state.stats.dropped, now)
        found += self.detector.uplinks(
            (room.name, p.identity, [(t.kind, t.bitrate) for t in p.tracks.values()],
             room.limits.max_video_bitrate)
            for room in self.state.rooms.rooms.values()
            for p in room.participants.values()
        )  # fmt: skip
        for event in found:
            self.raise_event(event, now)

    # -- output -----------------------------------------------------------------------------------

    def _emit(self, alert: Mapping[str, Any]) -> None:
        record_security_alert(str(alert["kind"]), str(alert["severity"]))
        self.state.audit.record(ALERT_EVENT, **alert)
        if self.send is not None:
            self.send(alert)
