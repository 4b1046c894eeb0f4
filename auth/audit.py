"""Tamper-evident audit log: append-only JSON lines, each carrying the SHA-256 of the previous.

The chain logic is pure (`chain_line`, `verify_lines`); `AuditLog` only appends to a file. Records
hold decisions and reasons, never tokens, secrets, SDP or ICE credentials: callers pass fields,
and `record` refuses any field whose name suggests a secret.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("keyroom.audit")

GENESIS = "0" * 64
FORBIDDEN_FIELDS = frozenset({"token", "secret", "password", "sdp", "ice_pwd", "credential"})


def line_hash(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


def chain_line(prev_hash: str, seq: int, record: dict[str, Any]) -> str:
    """The JSON line for `record`, linked to the previous line's hash."""
    return orjson.dumps(
        {"seq": seq, "prev": prev_hash, **record}, option=orjson.OPT_SORT_KEYS
    ).decode()


def verify_lines(lines: Iterable[str]) -> list[str]:
    """Problems found in a chain (empty when intact): edits, removals and reorders all break it."""
    problems = []
    prev_hash = GENESIS
    expected_seq = 0
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            problems.append(f"line {number}: not JSON")
            prev_hash, expected_seq = line_hash(line), expected_seq + 1
            continue
        if not isinstance(record, dict):
            problems.append(f"line {number}: not a JSON object")
        elif record.get("prev") != prev_hash:
            problems.append(
                f"line {number}: previous-record hash does not match (edited, removed or reordered)"
            )
        elif record.get("seq") != expected_seq:
            problems.append(
                f"line {number}: sequence {record.get('seq')} where {expected_seq} was expected"
            )
        elif (
            chain_line(
                prev_hash,
                expected_seq,
                {k: v for k, v in record.items() if k not in ("seq", "prev")},
            )
            != line
        ):
            problems.append(f"line {number}: not in canonical form (edited)")
        prev_hash = line_hash(line)
        expected_seq += 1
    return problems


def _tail(path: Path) -> tuple[str, int]:
    """Hash and count of the existing chain, so a restarted server continues it."""
    prev_hash, count = GENESIS, 0
    with path.open("rb") as file:
        for raw in file:
            line = raw.decode(errors="replace").rstrip("\n")
            if line:
                prev_hash, count = line_hash(line), count + 1
    return prev_hash, count


class AuditLog:
    """Appends chained records to `path` (or only to the `keyroom.audit` logger when None)."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._prev_hash, self._seq = GENESIS, 0
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                self._prev_hash, self._seq = _tail(self.path)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "a", encoding="utf-8")

    def record(self, event: str, **fields: Any) -> None:
        leaked = FORBIDDEN_FIELDS.intersection(fields)
        if leaked:
            raise ValueError(f"audit records never carry {', '.join(sorted(leaked))}")
        record = {"ts": round(time.time(), 3), "event": event, **fields}
        line = chain_line(self._prev_hash, self._seq, record)
        self._prev_hash, self._seq = line_hash(line), self._seq + 1
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        log.info("%s", line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def verify_file(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as file:
        return verify_lines(line for line in file if line.strip())
