"""Searching and exporting the audit log (`keyroom audit search` / `export`, issue 15).

Pure: records in (parsed JSON lines of the [audit] path file), records out. A record matches
when every given criterion does: identity, room, address and event compare exactly (an address
also matches the `ip` of a summary record), times are `since <= ts < until`. Unparsable lines
are counted, not fatal: an incident is when a log is most likely to be damaged.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from auth.tokens import parse_ttl

# The columns of a CSV export; whatever else a record holds goes, as JSON, into `extra`.
CSV_COLUMNS = ("time", "ts", "event", "severity", "ip", "room", "identity", "key_id", "reason")
CHAIN_FIELDS = frozenset({"seq", "prev", "mac"})


@dataclass(frozen=True)
class AuditQuery:
    identity: str | None = None
    room: str | None = None
    ip: str | None = None
    events: frozenset[str] = frozenset()
    since: float | None = None
    until: float | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        ts = record.get("ts")
        if not isinstance(ts, int | float):
            return False
        if self.since is not None and ts < self.since:
            return False
        if self.until is not None and ts >= self.until:
            return False
        if self.events and record.get("event") not in self.events:
            return False
        wanted = (("identity", self.identity), ("room", self.room), ("ip", self.ip))
        return all(value is None or record.get(name) == value for name, value in wanted)


@dataclass
class Scan:
    """What a search read: the matching records (lazily) and the lines it could not parse."""

    bad_lines: int = 0
    read: int = 0

    def records(self, lines: Iterable[str | bytes], query: AuditQuery) -> Iterator[dict[str, Any]]:
        for line in lines:
            if not line.strip():
                continue
            self.read += 1
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                self.bad_lines += 1
                continue
            if not isinstance(record, dict):
                self.bad_lines += 1
            elif query.matches(record):
                yield record


def parse_time(text: str, now: float) -> float:
    """`--since` / `--until`: Unix seconds, ISO 8601 (UTC unless an offset is given), or a
    duration ago (`90s`, `10m`, `6h`, `2d`). Raises ValueError."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return now - parse_ttl(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"time {text!r}: expected Unix seconds, ISO 8601 or a duration ago (10m, 6h, 2d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def jsonl(record: dict[str, Any]) -> str:
    return orjson.dumps(record).decode()


def csv_header() -> str:
    return _csv_row([*CSV_COLUMNS, "extra"])


def csv_line(record: dict[str, Any]) -> str:
    ts = record.get("ts")
    when = datetime.fromtimestamp(ts, UTC).isoformat() if isinstance(ts, int | float) else ""
    row = [when, *(_cell(record.get(name)) for name in CSV_COLUMNS[1:])]
    extra = {k: v for k, v in record.items() if k not in CSV_COLUMNS and k not in CHAIN_FIELDS}
    row.append(orjson.dumps(extra).decode() if extra else "")
    return _csv_row(row)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        # A spreadsheet runs a cell starting with = + - @ as a formula: identities are chosen
        # by applications, and reasons come from clients' tokens.
        return "'" + value if value[:1] in ("=", "+", "-", "@") else value
    return orjson.dumps(value).decode()


def _csv_row(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue().rstrip("\n")
