"""The audit log: keyed chain, sealed checkpoints, restart verification, refusal aggregation."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from auth.audit import (
    AuditKeyError,
    AuditLog,
    checkpoint_path_for,
    load_or_create_key,
    verify_file,
)
from auth.auditchain import AuditChainBroken, chain_line, verify_lines
from auth.auditrate import RefusalAggregator

KEY = b"k" * 32


def write_chain(path: Path, count: int = 5, key: bytes = KEY) -> list[str]:
    audit = AuditLog(str(path), key)
    for n in range(count):
        audit.record("kicked", room="r", reason=f"reason {n}")
    audit.close()  # seals a checkpoint
    return path.read_text().splitlines()


def test_intact_chain_verifies_and_continues_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_chain(path, 3)
    write_chain(path, 2)  # a restarted server verifies the tail, then appends to the same chain
    result = verify_file(str(path), KEY)
    assert result.intact, result.problems
    assert result.records == 5
    assert result.last_sealed is not None and result.last_sealed.records == 5
    assert [orjson.loads(line)["seq"] for line in path.read_text().splitlines()] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("tamper", ["edit", "remove", "reorder", "append_forged", "rehash"])
def test_any_tampering_is_detected(tmp_path: Path, tamper: str) -> None:
    lines = write_chain(tmp_path / "audit.jsonl")
    if tamper == "edit":
        lines[2] = lines[2].replace("reason 2", "reason X")
    elif tamper == "remove":
        del lines[2]
    elif tamper == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "append_forged":
        lines.append(lines[-1].replace('"seq":4', '"seq":5'))
    else:
        # Edit a record and re-hash every record after it, as an attacker without the key can.
        records = [orjson.loads(line) for line in lines]
        records[2]["reason"] = "reason X"
        prev, lines = "0" * 64, []
        for seq, record in enumerate(records):
            body = {k: v for k, v in record.items() if k not in ("seq", "prev", "mac")}
            line, prev = chain_line(b"attacker-key-that-is-not-the-real-one", prev, seq, body)
            lines.append(line)
    assert not verify_lines(lines, KEY).intact


def test_one_removed_record_is_one_problem_named_clearly(tmp_path: Path) -> None:
    lines = write_chain(tmp_path / "audit.jsonl", 30)
    del lines[7]
    result = verify_lines(lines, KEY)
    assert result.problems == ["line 8: record 7 is missing (removed)"]
    report = result.report("audit.jsonl")
    assert report[0] == "audit.jsonl: first break: line 8: record 7 is missing (removed)"


def test_an_edited_record_is_named_not_the_one_after_it(tmp_path: Path) -> None:
    lines = write_chain(tmp_path / "audit.jsonl", 10)
    lines[4] = lines[4].replace("reason 4", "reason X")
    result = verify_lines(lines, KEY)
    # Line 5 as an editor numbers it: the record with seq 4.
    assert result.problems == ["line 5: record 4: edited (its MAC does not match its content)"]


@pytest.mark.parametrize("cut", ["truncate_tail", "empty"])
def test_truncation_and_emptying_are_caught_by_the_sealed_checkpoint(
    tmp_path: Path, cut: str
) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_chain(path, 6)
    kept = lines[:4] if cut == "truncate_tail" else []
    path.write_text("".join(line + "\n" for line in kept))
    result = verify_file(str(path), KEY)
    assert any("truncated" in p for p in result.problems), result.problems
    with pytest.raises(AuditChainBroken, match="truncated"):
        AuditLog(str(path), KEY)


def test_a_restarted_server_refuses_to_continue_a_forged_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_chain(path, 3)
    audit = AuditLog(str(path), KEY)
    audit.record("kicked", room="r", reason="after the seal")
    audit.flush()
    text = path.read_text()  # the unsealed tail, edited before the server restarts
    audit._sink = None  # simulate a crash: no closing checkpoint
    path.write_text(text.replace("after the seal", "something else"))
    with pytest.raises(AuditChainBroken):
        AuditLog(str(path), KEY)


def test_a_forged_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_chain(path, 3)
    checkpoints = Path(checkpoint_path_for(str(path)))
    forged = orjson.loads(checkpoints.read_text().splitlines()[-1])
    forged["records"] = 2
    checkpoints.write_text(orjson.dumps(forged).decode() + "\n")
    assert any("signature" in p for p in verify_file(str(path), KEY).problems)
    with pytest.raises(AuditChainBroken, match="signature"):
        AuditLog(str(path), KEY)


def test_audit_refuses_secret_fields(tmp_path: Path) -> None:
    audit = AuditLog(str(tmp_path / "a.jsonl"), KEY)
    with pytest.raises(ValueError, match="token"):
        audit.record("join", token="eyJ...")
    audit.close()


def test_a_file_log_needs_a_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="key"):
        AuditLog(str(tmp_path / "a.jsonl"))


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "audit.key"
    key = load_or_create_key(str(key_file))
    assert len(key) >= 32 and key_file.stat().st_mode & 0o077 == 0
    assert load_or_create_key(str(key_file)) == key
    key_file.write_text("short\n")
    with pytest.raises(AuditKeyError, match="at least 32 bytes"):
        load_or_create_key(str(key_file))


def test_records_are_written_by_the_writer_thread_not_the_caller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(str(tmp_path / "a.jsonl"), KEY)
    with caplog.at_level(logging.INFO, logger="keyroom.audit"):
        audit.record("kicked", room="r")
        audit.flush()
    audit.close()
    threads = {r.threadName for r in caplog.records if r.name == "keyroom.audit"}
    assert threads == {"keyroom-audit"} and threading.current_thread().name not in threads


def test_a_refusal_flood_is_aggregated_into_a_summary(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path), KEY, refusal_window=3600)
    for _ in range(2000):
        audit.record("join_refused", ip="203.0.113.9", reason="bad_signature")
    audit.record("join_refused", ip="198.51.100.1", reason="expired")
    audit.close()
    records = [orjson.loads(line) for line in path.read_text().splitlines()]
    refusals = [(r["ip"], r.get("repeated")) for r in records if r["event"] == "join_refused"]
    assert sorted(refusals, key=str) == sorted(
        [("203.0.113.9", None), ("198.51.100.1", None), ("203.0.113.9", 1999)], key=str
    )
    assert verify_file(str(path), KEY).intact


def test_aggregator_windows_and_bounded_kinds() -> None:
    aggregator = RefusalAggregator(window=10.0, max_kinds=2)
    refusal = {"ip": "a", "reason": "expired"}
    assert aggregator.admit("join_refused", refusal, now=0.0)
    assert not aggregator.admit("join_refused", refusal, now=1.0)
    assert aggregator.admit("kicked", {"ip": "a"}, now=1.0)  # not a refusal: always written
    assert aggregator.next_deadline() == 10.0
    assert aggregator.due(9.9) == []
    summary = {"event": "join_refused", "ip": "a", "reason": "expired", "repeated": 1}
    assert aggregator.due(10.0) == [{**summary, "window": 10.0}]
    assert aggregator.admit("join_refused", refusal, now=10.5)  # a new window
    assert aggregator.admit("join_refused", {"ip": "b", "reason": "x"}, now=11.0)
    # Past max_kinds, further addresses share one counted window: memory stays bounded.
    for n in range(100):
        assert not aggregator.admit("join_refused", {"ip": f"c{n}", "reason": "x"}, now=12.0)
    counted = [s for s in aggregator.due(100.0) if s["ip"] == "*"]
    assert counted == [{"event": "join_refused", "ip": "*", "reason": "x", "repeated": 100,
                        "window": 10.0}]  # fmt: skip


def test_the_server_refuses_to_start_on_a_broken_chain(tmp_path: Path) -> None:
    """`keyroom serve` verifies the log's tail first and says why it will not append."""
    path = tmp_path / "audit.jsonl"
    key_file = tmp_path / "audit.key"
    key = load_or_create_key(str(key_file))
    lines = write_chain(path, 4, key=key)
    path.write_text("".join(line + "\n" for line in lines[:-2]))  # cut the sealed tail
    config = tmp_path / "keyroom.toml"
    config.write_text(f'[audit]\npath = "{path}"\nkey_file = "{key_file}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "sfu", "serve", "--dev", "--port", "0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert f"keyroom: error: {path}: record 3 is not the one sealed" in result.stderr
    assert path.read_text().count("\n") == 2  # nothing appended to the broken chain
