"""Where security events come from (issue 15): the audit records the server writes for abuse
closes, brake engagement and refusals of revoked credentials, in-process with time passed in;
and `keyroom audit search` / `export` over such a log."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from auth.auditsearch import AuditQuery, Scan, csv_header, csv_line, parse_time
from auth.grants import check_clients
from auth.tokens import parse_grant_overrides
from sfu.cli import main
from signaling.codec import MessageError
from signaling.messages import Join
from signaling.state import ServerState
from tests.signaling_helpers import NOW, WALL, audit, close_all, join, make_state, session, token


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[ServerState]:
    state = make_state(
        tmp_path,
        limits={"max_bad_frames": 1, "bad_frame_window": 10.0},
        auth={"max_failures": 2, "failure_window": 60.0},
    )
    yield state
    await close_all(state)


def events(state: ServerState, name: str) -> list[dict[str, object]]:
    return [r for r in audit(state) if r["event"] == name]


async def test_an_abuse_close_is_audited_with_who(state: ServerState) -> None:
    alice, _wire, _ = join(state, "alice")
    bad = MessageError("invalid_message", "frame is not valid JSON")
    alice.refuse(bad, NOW)
    alice.refuse(bad, NOW + 1)
    assert alice.ending
    (record,) = events(state, "abuse_close")
    assert (record["reason"], record["identity"], record["room"]) == (
        "protocol_error", "alice", "room1"
    )  # fmt: skip


async def test_brake_engagement_is_audited(state: ServerState) -> None:
    for _ in range(3):
        s, _ = session(state, peer="203.0.113.9")
        s.start(Join(token="not-a-token", req=1), NOW, WALL)
    (record,) = events(state, "brake_engaged")
    assert record["ip"] == "203.0.113.9"


async def test_a_revoked_identitys_refusal_names_it(state: ServerState) -> None:
    state.store.revoke("room1", "eve", now=WALL, keep_for=3600)
    s, _ = session(state)
    assert not s.start(Join(token=token("eve", wall=WALL - 10), req=1), NOW, WALL).accepted
    (record,) = events(state, "join_refused")
    assert (record["reason"], record["identity"], record["room"]) == ("revoked", "eve", "room1")


async def test_require_bound_tokens_by_role(state: ServerState) -> None:
    roles = {"guest": {"canPublish": False, "require_bound_tokens": True}}
    state.config = dataclasses.replace(state.config, roles=roles)
    state.verifier.roles = roles
    s, _ = session(state)
    assert not s.start(Join(token=token("g", role="guest"), req=1), NOW, WALL).accepted
    s, _ = session(state, peer="192.0.2.77")
    assert s.start(Join(token=token("h"), req=1), NOW, WALL).accepted


def test_client_kinds_are_checked() -> None:
    assert check_clients(["browser", "python", "browser"]) == ("browser", "python")
    for bad in ("browser", ["curl"], [1]):
        with pytest.raises(ValueError, match="video.clients"):
            check_clients(bad)
    assert parse_grant_overrides(["clients=browser"]) == {"clients": ["browser"]}
    with pytest.raises(ValueError, match="may only contain"):
        parse_grant_overrides(["clients=ios"])


RECORDS = [
    {"ts": 100.0, "event": "join_accepted", "ip": "192.0.2.1", "room": "a", "identity": "ann"},
    {"ts": 200.0, "event": "join_refused", "ip": "192.0.2.2", "reason": "signature"},
    {"ts": 300.0, "event": "security_alert", "kind": "proof_failed", "identity": "=cmd()",
     "room": "a", "severity": "warning", "seq": 2, "mac": "x"},
]  # fmt: skip


def test_audit_query_filters_and_times() -> None:
    lines = [json.dumps(r) for r in RECORDS] + ["not json", "[1]", ""]
    scan = Scan()
    found = list(scan.records(lines, AuditQuery(room="a", since=150)))
    assert [r["event"] for r in found] == ["security_alert"] and scan.bad_lines == 2
    assert [r["ts"] for r in Scan().records(lines, AuditQuery(until=300))] == [100.0, 200.0]
    events = frozenset({"join_refused", "join_accepted"})
    assert len(list(Scan().records(lines, AuditQuery(events=events, ip="192.0.2.2")))) == 1
    assert parse_time("1700000000", 0) == 1700000000
    assert parse_time("10m", 1000.0) == 400.0
    assert parse_time("2026-12-06T03:00Z", 0) == parse_time("2026-12-06T03:00:00+00:00", 0)
    with pytest.raises(ValueError, match="expected Unix seconds"):
        parse_time("yesterday", 0)


def test_csv_export_quotes_formulas_and_keeps_the_rest() -> None:
    rows = list(csv.DictReader(io.StringIO("\n".join([csv_header(), csv_line(RECORDS[2])]))))
    assert rows[0]["identity"] == "'=cmd()" and rows[0]["time"].startswith("1970-01-01T00:05")
    assert json.loads(rows[0]["extra"]) == {"kind": "proof_failed"}  # chain fields left out


def test_audit_search_and_export_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")

    def keyroom(*args: str) -> tuple[int, str, str]:
        status = main(["audit", *args, "--file", str(log)])
        out, err = capsys.readouterr()
        return status, out, err

    status, out, _ = keyroom("search", "--identity", "ann")
    assert status == 0 and [json.loads(x)["ts"] for x in out.split()] == [100.0]
    status, out, _ = keyroom("export", "--format", "csv", "--since", "150")
    assert status == 0
    assert [r["event"] for r in csv.DictReader(io.StringIO(out))] == [
        "join_refused", "security_alert"
    ]  # fmt: skip
    status, out, err = keyroom("search", "--since", "whenever")
    assert status == 2 and out == "" and "expected Unix seconds" in err
