"""Detection rules for abnormal patterns (issue 15); thresholds from `[security]`.

Each rule is a pure check over what the server saw, with time passed in (`now`: any monotonic
clock; `wall`: Unix time, for room hours), and returns `SecurityEvent`s (auth/alerts.py) that
the caller aggregates and sends. Memory is bounded: each window keeps at most `MAX_KEYS` keys
(least recently seen dropped first) and `MAX_VALUES` values per key.

Rules (docs/incident-response.md explains each and what to do):
- `identity_many_addresses`: one identity joins from `identity_addresses` or more distinct
  addresses within `identity_addresses_window`;
- `address_many_identities`: `address_identities` or more identities join from one address
  within `address_identities_window`;
- `revoked_token_used`: a join, resume or refresh with a token of a revoked identity or key;
- `join_outside_hours`: a join to a room outside its `room_hours` (UTC);
- `uplink_over_grant`: a video track above `uplink_factor` times its room's
  `max_video_bitrate`, or a participant above `max_uplink_bitrate` in all, on two samples in a
  row (a keyframe burst is not an attack);
- `room_refusal_spike`: `room_refusals` or more refused joins naming one room within
  `room_refusals_window`;
- `drop_spike`: datagrams dropped as from a foreign source, NACKs over budget or data channel
  overflow, above `drop_spike` per second between two samples.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from auth.alerts import CRITICAL, WARNING, SecurityEvent
from sfu.config import SecurityConfig

UplinkSample = tuple[str, str, Sequence[tuple[str, int]], int]
MAX_KEYS = 10000
MAX_VALUES = 256
REVOKED_REASONS = frozenset({"revoked", "key_revoked"})
SPIKE_DROPS = ("foreign_source", "nack_limited", "data_overflow")
SECONDS_PER_DAY = 86400


class DistinctWindow:
    """Per key, the distinct values seen within the last `window` seconds."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._keys: OrderedDict[Hashable, dict[Hashable, float]] = OrderedDict()

    def add(self, key: Hashable, value: Hashable, now: float) -> int:
        values = self._keys.pop(key, None) or {}
        self._keys[key] = values  # most recently seen last
        values.pop(value, None)
        values[value] = now
        for old in [v for v, seen in values.items() if seen <= now - self.window]:
            del values[old]
        while len(values) > MAX_VALUES:
            del values[next(iter(values))]
        while len(self._keys) > MAX_KEYS:
            self._keys.popitem(last=False)
        return len(values)


class CountWindow:
    """Per key, how many times it was seen within the last `window` seconds."""

    def __init__(self, window: float, cap: int) -> None:
        self.window = window
        self.cap = cap
        self._keys: OrderedDict[Hashable, deque[float]] = OrderedDict()

    def add(self, key: Hashable, now: float) -> int:
        times = self._keys.pop(key, None) or deque(maxlen=self.cap)
        self._keys[key] = times
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        while len(self._keys) > MAX_KEYS:
            self._keys.popitem(last=False)
        return len(times)


def within_hours(wall: float, hours: tuple[int, int]) -> bool:
    """Whether Unix time `wall` falls in the UTC span (start, end) in minutes; may wrap."""
    minute = int(wall % SECONDS_PER_DAY) // 60
    start, end = hours
    return start <= minute < end if start <= end else minute >= start or minute < end


class Detector:
    def __init__(self, config: SecurityConfig) -> None:
        self.config = config
        self._addresses = DistinctWindow(config.identity_addresses_window)
        self._identities = DistinctWindow(config.address_identities_window)
        self._refusals = CountWindow(config.room_refusals_window, config.room_refusals)
        self._over: dict[tuple[str, str], int] = {}
        self._drops: tuple[float, dict[str, int]] | None = None

    def joined(
        self, identity: str, ip: str, room: str, now: float, wall: float
    ) -> list[SecurityEvent]:
        config, found = self.config, []
        where = {"identity": identity, "ip": ip, "room": room}
        addresses = self._addresses.add(identity, ip, now)
        if addresses >= config.identity_addresses:
            found.append(
                SecurityEvent(
                    "identity_many_addresses", WARNING, identity, {**where, "addresses": addresses}
                )
            )
        identities = self._identities.add(ip, identity, now)
        if identities >= config.address_identities:
            found.append(
                SecurityEvent(
                    "address_many_identities", WARNING, ip, {**where, "identities": identities}
                )
            )
        hours = config.room_hours.get(room)
        if hours is not None and not within_hours(wall, hours):
            found.append(SecurityEvent("join_outside_hours", WARNING, room, where))
        return found

    def refused(self, fields: Mapping[str, Any], now: float) -> list[SecurityEvent]:
        """A refused join, resume or refresh (its audit record's fields). Only refusals that
        name a room count towards its spike: the room of a token that did not verify is not
        known (an attacker's claim, never trusted)."""
        found = []
        room, reason = fields.get("room"), fields.get("reason")
        carried = {k: fields[k] for k in ("identity", "ip", "room", "key_id") if k in fields}
        if reason in REVOKED_REASONS:
            subject = str(fields.get("identity") or fields.get("ip"))
            found.append(
                SecurityEvent(
                    "revoked_token_used", CRITICAL, subject, {**carried, "reason": reason}
                )
            )
        if isinstance(room, str):
            count = self._refusals.add(room, now)
            if count >= self.config.room_refusals:
                found.append(
                    SecurityEvent(
                        "room_refusal_spike", WARNING, room, {"room": room, "count": count}
                    )
                )
        return found

    def uplinks(self, samples: Iterable[UplinkSample]) -> list[SecurityEvent]:
        """One sample of every participant: (room, identity, its tracks as (kind, bits per
        second), the room's max_video_bitrate). Streaks of those not in it are forgotten."""
        over: dict[tuple[str, str], int] = {}
        found = []
        for room, identity, tracks, max_video_bitrate in samples:
            if not self._over_grant(tracks, max_video_bitrate):
                continue
            key = (room, identity)
            over[key] = streak = self._over.get(key, 0) + 1
            if streak >= 2:
                fields = {"room": room, "identity": identity, "bitrate": sum(b for _, b in tracks)}
                found.append(SecurityEvent("uplink_over_grant", WARNING, identity, fields))
        self._over = over
        return found

    def _over_grant(self, tracks: Sequence[tuple[str, int]], max_video_bitrate: int) -> bool:
        config = self.config
        total = sum(bitrate for _kind, bitrate in tracks)
        if config.max_uplink_bitrate and total > config.max_uplink_bitrate:
            return True
        limit = max_video_bitrate * config.uplink_factor
        return max_video_bitrate > 0 and any(k == "video" and b > limit for k, b in tracks)

    def drops(self, counts: Mapping[str, int], now: float) -> list[SecurityEvent]:
        """One sample of the node's drop counters (`Stats.dropped`)."""
        previous, self._drops = self._drops, (now, {r: counts.get(r, 0) for r in SPIKE_DROPS})
        if previous is None or now <= previous[0]:
            return []
        seconds = now - previous[0]
        found = []
        for reason in SPIKE_DROPS:
            rate = (counts.get(reason, 0) - previous[1][reason]) / seconds
            if rate > self.config.drop_spike:
                fields = {"reason": reason, "per_second": round(rate)}
                found.append(SecurityEvent("drop_spike", WARNING, reason, fields))
        return found
