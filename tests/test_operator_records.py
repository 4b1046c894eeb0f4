"""Issue 18.9: records an operator reads: what a PATCH changed, refusals at the publisher limit,
webhook failures naming the URL and the reason, `audit verify` naming the edited line and one
problem for one removed record."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from auth.auditchain import verify_lines
from loadtest.spawn import free_port
from signaling.client import KeyroomClient, KeyroomError
from signaling.media import SyntheticVideoTrack
from tests.admin_helpers import call
from tests.conftest import KEY_ID, ServerProcess, eventually, start_server, stop_server
from tests.test_audit import KEY, write_chain


def audit_records(server: ServerProcess, event: str) -> list[dict[str, object]]:
    return [
        orjson.loads(line[line.index("{") :])
        for line in server.log().splitlines()
        if f'"event":"{event}"' in line
    ]


def test_one_removed_record_among_many_checkpoints_is_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    for _ in range(20):  # twenty restarts: twenty sealed checkpoints
        lines = write_chain(path, 3)
    checkpoints = (tmp_path / "audit.jsonl.checkpoints").read_text().splitlines()
    assert len(checkpoints) >= 20
    from auth.auditchain import parse_checkpoints

    sealed, _ = parse_checkpoints(checkpoints, KEY)
    del lines[10]
    result = verify_lines(lines, KEY, sealed)
    assert result.problems == ["line 11: record 10 is missing (removed)"]


async def test_patch_and_publisher_limit_refusals_are_audited(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    admin = server.token("ops", "board", grants={"roomAdmin": True, "roomJoin": False})
    alice = KeyroomClient(server.ws_url, server.token("alice", "board"))
    bob = KeyroomClient(server.ws_url, server.token("bob", "board"))
    try:
        await alice.connect()
        await bob.connect()
        body = {"limits": {"max_publishers": 1}, "metadata": "all hands"}
        assert (await call(server, "PATCH", "/api/rooms/board", admin, body))[0] == 200
        await alice.publish(SyntheticVideoTrack(), source="camera")
        with pytest.raises(KeyroomError, match="limit_exceeded"):
            await bob.publish(SyntheticVideoTrack(), source="camera")
        patch = {"name": "Robert"}
        assert (await call(server, "PATCH", "/api/rooms/board/participants/bob", admin, patch))[
            0
        ] == 200
        await eventually(lambda: audit_records(server, "participant_updated"), 10)
        (updated,) = audit_records(server, "room_updated")
        assert updated["limits"] == {"max_publishers": [0, 1]}
        assert updated["metadata_changed"] is True and updated["by"] == "ops"
        refused = [r for r in audit_records(server, "publish_refused") if r["identity"] == "bob"]
        assert refused and refused[0]["reason"] == "the room has its maximum of publishers"
        (participant,) = audit_records(server, "participant_updated")
        assert participant["changed"] == ["name"] and participant["identity"] == "bob"
    finally:
        await alice.close()
        await bob.close()
        stop_server(server)


async def test_webhook_failures_name_the_url_and_the_reason(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    config = tmp_path / "keyroom.toml"
    config.write_text(
        f'[webhooks]\nurls = ["http://127.0.0.1:{port}/hook?token=s3cret"]\nkey = "{KEY_ID}"\n'
        "max_attempts = 2\nretry_delay = 0.05\n"
    )
    server = start_server(tmp_path, "--config", str(config))
    client = KeyroomClient(server.ws_url, server.token("alice"))
    try:
        await client.connect()
        given_up = "given up after 2 attempts (webhooks.max_attempts): ClientConnectorError"
        await eventually(lambda: given_up in server.log(), 15, server.log)
        log = server.log()
        where = f"to webhooks.urls[0] (http://127.0.0.1:{port})"
        assert f"webhook room_started {where}, attempt 1/2 failed: ClientConnectorError" in log
        assert "s3cret" not in log
    finally:
        await client.close()
        stop_server(server)
