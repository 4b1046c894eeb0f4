"""Tamper-evident audit log, written off the event loop.

Records are chained with a keyed HMAC (`auth/auditchain.py`) and sealed by signed checkpoints
written to a separate file and to the `keyroom.audit.seal` logger (stdout/journal: a third copy
outside the disk). A restarted server verifies the log since the last checkpoint before appending
and refuses to continue a broken chain. Repeated refusals are aggregated (`auth/auditrate.py`).
Records hold decisions and reasons, never tokens, secrets, SDP or ICE credentials: `record`
refuses any field whose name suggests a secret.

`record` only queues: a writer thread chains, aggregates, writes and seals, so a flood of
refusals costs the event loop one queue put each, never a disk flush.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from auth.auditchain import (
    GENESIS,
    AuditChainBroken,
    ChainChecker,
    Checkpoint,
    Verification,
    authentic_mac,
    chain_line,
    parse_checkpoints,
    verify_lines,
)
from auth.auditfiles import CONTINUED, next_rotated, rotated_files
from auth.auditrate import WINDOW, RefusalAggregator

log = logging.getLogger("keyroom.audit")
seal_log = logging.getLogger("keyroom.audit.seal")

FORBIDDEN_FIELDS = frozenset({"token", "secret", "password", "sdp", "ice_pwd", "credential"})
CHECKPOINT_INTERVAL = 60.0
MIN_KEY_BYTES = 32


def checkpoint_path_for(path: str) -> str:
    return path + ".checkpoints"


class AuditKeyError(Exception):
    """The audit key file cannot be used."""


def audit_key_file(key_file: str | None, data_dir: str) -> str:
    return key_file or os.path.join(data_dir, "audit.key")


def load_or_create_key(key_file: str) -> bytes:
    """The HMAC key in `key_file`; created (32 random bytes, hex, mode 0600) when missing."""
    target = Path(key_file)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(MIN_KEY_BYTES) + "\n")
    key = target.read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise AuditKeyError(f"{key_file}: an audit key needs at least {MIN_KEY_BYTES} bytes")
    return key


class _Sink:
    """The files: the log (append-only) and its checkpoints; resumes a verified chain."""

    def __init__(self, path: str, key: bytes, checkpoint_path: str, rotate_bytes: int = 0) -> None:
        self.key = key
        self.rotate_bytes = rotate_bytes
        self.path = Path(path)
        self.checkpoint_path = Path(checkpoint_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.prev_mac, self.seq, self.offset, self.last_line_offset = GENESIS, 0, 0, 0
        self.sealed_records = 0
        if self.path.exists():
            self._resume()
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.file = os.fdopen(fd, "ab")
        fd = os.open(self.checkpoint_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.checkpoints = os.fdopen(fd, "ab")

    def rotate(self, ts: float) -> str:
        """Seal, rename the log and its checkpoints aside, and go on in a fresh PATH whose first
        record links to the renamed file's last (auth/auditfiles.py); returns that record."""
        self.seal(ts)
        self.close()
        rotated = next_rotated(self.path)
        os.rename(self.checkpoint_path, f"{rotated}.checkpoints")
        os.rename(self.path, rotated)
        self.offset = self.last_line_offset = 0
        self._open()
        line = self.append({"ts": round(ts, 3), "event": CONTINUED, "previous": rotated.name})
        self.seal(ts)
        return line

    def _resume(self) -> None:
        """Verify the log from its last sealed record on, and continue after its end."""
        sealed = self._last_checkpoint()
        with self.path.open("rb") as file:
            checker = ChainChecker(self.key)
            if sealed is not None:
                file.seek(sealed.line_offset)
                line = file.readline().decode(errors="replace").rstrip("\n")
                if _sealed_mac(self.key, line) != sealed.mac:
                    raise AuditChainBroken(
                        f"{self.path}: record {sealed.records - 1} is not the one sealed at "
                        f"{sealed.ts:.0f} (truncated or edited)"
                    )
                checker = ChainChecker(self.key, prev_mac=sealed.mac, seq=sealed.records)
                self.last_line_offset = sealed.line_offset
                self.sealed_records = sealed.records
            offset = file.tell()
            for raw in file:
                problem = checker.check(raw.decode(errors="replace").rstrip("\n"))
                if problem:
                    raise AuditChainBroken(f"{self.path}: {problem}")
                self.last_line_offset, offset = offset, offset + len(raw)
        self.prev_mac, self.seq, self.offset = checker.prev_mac, checker.seq, offset

    def _last_checkpoint(self) -> Checkpoint | None:
        if not self.checkpoint_path.exists():
            return None
        lines = self.checkpoint_path.read_text(errors="replace").splitlines()
        good, problems = parse_checkpoints(lines, self.key)
        if problems:
            raise AuditChainBroken(f"{self.checkpoint_path}: {problems[0]}")
        return good[-1] if good else None

    def append(self, record: dict[str, Any]) -> str:
        line, mac = chain_line(self.key, self.prev_mac, self.seq, record)
        data = (line + "\n").encode()
        self.file.write(data)
        self.file.flush()
        self.last_line_offset = self.offset
        self.offset += len(data)
        self.prev_mac, self.seq = mac, self.seq + 1
        return line

    def seal(self, ts: float) -> Checkpoint | None:
        if self.seq == self.sealed_records:
            return None
        checkpoint = Checkpoint(self.seq, self.last_line_offset, self.prev_mac, ts).signed(self.key)
        self.checkpoints.write((checkpoint.line() + "\n").encode())
        self.checkpoints.flush()
        os.fsync(self.file.fileno())
        os.fsync(self.checkpoints.fileno())
        self.sealed_records = self.seq
        return checkpoint

    def close(self) -> None:
        self.file.close()
        self.checkpoints.close()


def _sealed_mac(key: bytes, line: str) -> str | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return authentic_mac(key, record, line) if isinstance(record, dict) else None


_STOP = object()


class AuditLog:
    """Appends chained records to `path` (or only to the `keyroom.audit` logger when None)."""

    def __init__(
        self,
        path: str | None,
        key: bytes | None = None,
        *,
        checkpoint_path: str | None = None,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
        refusal_window: float = WINDOW,
        rotate_bytes: int = 0,
    ) -> None:
        self.path = path
        self._sink: _Sink | None = None
        if path is not None:
            if key is None:
                raise ValueError("an audit log file needs an audit key")
            checkpoints = checkpoint_path or checkpoint_path_for(path)
            self._sink = _Sink(path, key, checkpoints, rotate_bytes)
        self._key = key or secrets.token_bytes(MIN_KEY_BYTES)
        self._prev_mac, self._seq = GENESIS, 0
        self._interval = checkpoint_interval
        self._aggregator = RefusalAggregator(refusal_window)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Called with each record as it is recorded, on the recording thread (the security
        # monitor, signaling/monitor.py); they must be quick and must not raise.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    def record(self, event: str, **fields: Any) -> None:
        leaked = FORBIDDEN_FIELDS.intersection(fields)
        if leaked:
            raise ValueError(f"audit records never carry {', '.join(sorted(leaked))}")
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="keyroom-audit", daemon=True
                    )
                    self._thread.start()
        self._queue.put((event, fields, time.time()))
        for listener in self.listeners:
            try:
                listener(event, fields)
            except Exception:  # a listener's bug must not fail the join or call it watches
                log.exception("audit listener failed on %s", event)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything recorded so far is written."""
        if self._thread is None:
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(10)
            self._thread = None
        if self._sink is not None:
            self._seal(time.time())
            self._sink.close()
            self._sink = None

    # -- the writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        next_seal = time.monotonic() + self._interval
        while True:
            deadline = min(self._aggregator.next_deadline() or next_seal, next_seal)
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                item = None
            now = time.monotonic()
            for summary in self._aggregator.due(now):
                self._write(summary.pop("event"), summary, time.time())
            if now >= next_seal:
                self._seal(time.time())
                next_seal = now + self._interval
            if item is _STOP:
                # Counts still in open windows are written, not lost, on shutdown.
                for summary in self._aggregator.due(float("inf")):
                    self._write(summary.pop("event"), summary, time.time())
                return
            if isinstance(item, threading.Event):
                item.set()
            elif item is not None:
                event, fields, ts = item
                if self._aggregator.admit(event, fields, now):
                    self._write(event, fields, ts)

    def _write(self, event: str, fields: dict[str, Any], ts: float) -> None:
        record = {"ts": round(ts, 3), "event": event, **fields}
        try:
            if self._sink is not None:
                line = self._sink.append(record)
                sink = self._sink
                if sink.rotate_bytes and sink.offset >= sink.rotate_bytes:
                    log.info("%s", line)
                    line = sink.rotate(ts)
            else:
                line, self._prev_mac = chain_line(self._key, self._prev_mac, self._seq, record)
                self._seq += 1
        except OSError as exc:
            log.error("audit log %s: write failed: %s", self.path, exc.strerror)
            return
        log.info("%s", line)

    def _seal(self, ts: float) -> None:
        if self._sink is None:
            return
        try:
            checkpoint = self._sink.seal(ts)
        except OSError as exc:
            log.error("audit log %s: checkpoint failed: %s", self.path, exc.strerror)
            return
        if checkpoint is not None:
            seal_log.info("audit checkpoint %s %s", self.path, checkpoint.line())


def verify_file(path: str, key: bytes, checkpoint_path: str | None = None) -> Verification:
    """Verify a log, its rotated predecessors present (oldest first: one chain), and every
    sealed position in their checkpoint files."""
    files = [*rotated_files(path), Path(path)]
    checkpoint_files = [Path(f"{f}.checkpoints") for f in files[:-1]]
    checkpoint_files.append(Path(checkpoint_path or checkpoint_path_for(path)))
    checkpoints: list[Checkpoint] = []
    problems: list[str] = []
    for checkpoints_file in checkpoint_files:
        if checkpoints_file.exists():
            lines = checkpoints_file.read_text(errors="replace").splitlines()
            good, bad = parse_checkpoints(lines, key)
            checkpoints += good
            problems += [f"{checkpoints_file.name}: {p}" for p in bad]
    names: list[tuple[str, int]] = []  # per line: its file and its line number there
    texts: list[str] = []
    for file_path in files:
        with open(file_path, encoding="utf-8", errors="replace") as file:
            for number, line in enumerate(file, start=1):
                if line.strip():
                    names.append((file_path.name, number))
                    texts.append(line)

    def where(index: int) -> str:
        name, number = names[index - 1]
        return f"{name} line {number}" if len(files) > 1 else f"line {number}"

    result = verify_lines(texts, key, checkpoints, where=where)
    result.problems[:0] = problems
    return result
