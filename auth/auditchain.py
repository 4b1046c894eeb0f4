"""The audit log's chain and its sealed checkpoints: pure functions over lines, no files.

Each record is one canonical JSON line carrying `seq`, `prev` (the previous record's `mac`) and
`mac`, the HMAC-SHA256 of the rest of the line keyed with the operator's audit key. Without the key
nobody can edit a record, the last one included, or re-hash the ones after it. A checkpoint,
written outside the log every so often, seals a position: the number of records, the MAC of the
last one and where its line starts, signed with the same key. Truncating or emptying the log, or
deleting its tail, leaves a sealed position that the log no longer reaches.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

GENESIS = "0" * 64


class AuditChainBroken(Exception):
    """The log on disk does not verify: a server must not continue a forged chain."""


def keyed_hash(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _canonical(fields: dict[str, Any]) -> str:
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS).decode()


def chain_line(key: bytes, prev_mac: str, seq: int, record: dict[str, Any]) -> tuple[str, str]:
    """The JSON line for `record`, linked to the previous record's MAC, and its own MAC."""
    body = {"seq": seq, "prev": prev_mac, **record}
    mac = keyed_hash(key, _canonical(body))
    return _canonical({**body, "mac": mac}), mac


def authentic_mac(key: bytes, record: dict[str, Any], line: str) -> str | None:
    """The record's MAC if it matches the record's content and the line is canonical, else None."""
    body = {k: v for k, v in record.items() if k != "mac"}
    mac = keyed_hash(key, _canonical(body))
    return mac if _canonical({**body, "mac": mac}) == line else None


@dataclass(frozen=True)
class Checkpoint:
    """`records` lines were in the log; the last starts at byte `line_offset` and has HMAC `mac`."""

    records: int
    line_offset: int
    mac: str
    ts: float
    sig: str = ""

    def _signed_text(self) -> str:
        return f"keyroom-audit-checkpoint|{self.records}|{self.line_offset}|{self.mac}|{self.ts}"

    def signed(self, key: bytes) -> Checkpoint:
        return Checkpoint(self.records, self.line_offset, self.mac, self.ts, self.sign(key))

    def sign(self, key: bytes) -> str:
        return keyed_hash(key, self._signed_text())

    def line(self) -> str:
        return _canonical(asdict(self))


def parse_checkpoints(lines: Iterable[str], key: bytes) -> tuple[list[Checkpoint], list[str]]:
    """The checkpoints whose signature holds, and a problem for each line that does not."""
    good: list[Checkpoint] = []
    problems: list[str] = []
    for number, line in enumerate((line for line in lines if line.strip()), 1):
        try:
            fields = orjson.loads(line)
            checkpoint = Checkpoint(**fields)
        except (orjson.JSONDecodeError, TypeError):
            problems.append(f"checkpoint {number}: not a checkpoint")
            continue
        if not hmac.compare_digest(checkpoint.sig, checkpoint.sign(key)):
            problems.append(f"checkpoint {number}: signature does not match (forged or wrong key)")
            continue
        good.append(checkpoint)
    return good, problems


@dataclass
class Verification:
    """What verifying a log found: `problems` in order, the first one is the first break."""

    records: int = 0
    problems: list[str] = field(default_factory=list)
    last_sealed: Checkpoint | None = None
    first_record: int = 0  # > 0: the oldest files present start after the genesis

    @property
    def intact(self) -> bool:
        return not self.problems

    def report(self, name: str) -> list[str]:
        """Operator-facing lines: the first break clearly, then how many more problems."""
        lines = []
        if self.problems:
            lines.append(f"{name}: first break: {self.problems[0]}")
            if len(self.problems) > 1:
                lines.append(f"{name}: {len(self.problems) - 1} more problem(s) after it")
        else:
            lines.append(f"{name}: chain intact, {self.records} records")
        if self.first_record:
            lines.append(
                f"{name}: verified from record {self.first_record} on (the oldest file present"
                " continues an older one that is not here)"
            )
        sealed = self.last_sealed
        if sealed is None:
            lines.append(f"{name}: no sealed checkpoint: truncation of the tail cannot be detected")
        else:
            unsealed = max(self.records - sealed.records, 0)
            lines.append(
                f"{name}: last sealed position: record {sealed.records} (sealed at "
                f"{sealed.ts:.0f}); {unsealed} record(s) after it not yet sealed"
            )
        return lines


def _start(key: bytes, line: str) -> tuple[ChainChecker, int]:
    """Where verification starts: the genesis, or the `log_continued` record that opens the
    oldest rotated file still present (older files archived away)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        record = None
    if isinstance(record, dict) and record.get("event") == "log_continued":
        seq, prev = record.get("seq"), record.get("prev")
        if isinstance(seq, int) and seq > 0 and isinstance(prev, str):
            return ChainChecker(key, prev_mac=prev, seq=seq), seq
    return ChainChecker(key), 0


class ChainChecker:
    """Checks lines one by one, from the genesis or from a sealed line onwards.

    After a break it resynchronises on the record it found, so one removed or edited record is
    one problem, not one per record after it."""

    def __init__(self, key: bytes, *, prev_mac: str = GENESIS, seq: int = 0) -> None:
        self.key = key
        self.prev_mac = prev_mac
        self.seq = seq

    def check(self, line: str) -> str | None:
        """The problem with `line` as the next record, or None; the chain moves on either way."""
        expected = self.seq
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = None
        problem = self._problem(line, record, expected)
        seq = record.get("seq") if isinstance(record, dict) else None
        self.seq = (seq if isinstance(seq, int) and problem else expected) + 1
        mac = record.get("mac") if isinstance(record, dict) else None
        self.prev_mac = mac if isinstance(mac, str) else ""
        return problem

    def _problem(self, line: str, record: object, expected: int) -> str | None:
        if not isinstance(record, dict):
            return f"record {expected}: not a JSON object"
        seq = record.get("seq")
        if seq != expected:
            if isinstance(seq, int) and seq == expected + 1:
                return f"record {expected} is missing (removed)"
            if isinstance(seq, int) and seq > expected:
                return f"records {expected} to {seq - 1} are missing (removed)"
            return f"record {seq!r} found where record {expected} was expected (reordered)"
        if authentic_mac(self.key, record, line) is None:
            return f"record {expected}: edited (its MAC does not match its content)"
        if record.get("prev") != self.prev_mac:
            return f"record {expected}: does not link to record {expected - 1} (a record replaced)"
        return None


def verify_lines(
    lines: Iterable[str],
    key: bytes,
    checkpoints: Iterable[Checkpoint] = (),
    where: Callable[[int], str] = lambda number: f"line {number}",
) -> Verification:
    """Verify a whole log against the key and the sealed checkpoints.

    Problems name the file's line (1-based, as an editor shows it) and the record's `seq`.
    Checkpoints are compared by `seq`, so records after a removed one still match their seals:
    one removal is one problem, not one per checkpoint after it."""
    result = Verification()
    checker = ChainChecker(key)
    macs: dict[int, str] = {}  # seq -> MAC of the record found with that seq
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n")
        if number == 1:
            checker, result.first_record = _start(key, line)
        problem = checker.check(line)
        if problem:
            result.problems.append(f"{where(number)}: {problem}")
        macs.setdefault(checker.seq - 1, checker.prev_mac)
        result.records += 1
    last = max(macs, default=-1)
    for checkpoint in checkpoints:
        result.last_sealed = checkpoint
        sealed = checkpoint.records - 1
        if sealed > last:
            result.problems.append(
                f"log truncated: a checkpoint sealed {checkpoint.records} records, "
                f"the log holds {result.records}"
            )
        elif checkpoint.records and sealed in macs and macs[sealed] != checkpoint.mac:
            result.problems.append(
                f"record {sealed}: differs from the one sealed at {checkpoint.ts:.0f} (edited)"
            )
    return result
