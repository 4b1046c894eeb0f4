"""Admission (signaling/admission.py) without a server process: the brake, tokens, revocation,
single-use token ids, duplicate identities, room and node limits; wall-clock time passed in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from signaling.messages import Join, Resume
from signaling.state import ServerState
from tests.signaling_helpers import NOW, WALL, audit, close_all, join, make_state, session, token

StateFactory = Callable[..., ServerState]


@pytest.fixture
async def states(tmp_path: Path) -> AsyncIterator[StateFactory]:
    made: list[ServerState] = []

    def factory(**sections: Any) -> ServerState:
        state = make_state(tmp_path / str(len(made)), **sections)
        made.append(state)
        return state

    yield factory
    for state in made:
        await close_all(state)


def refusals(state: ServerState) -> list[str]:
    return [r["reason"] for r in audit(state) if r["event"] == "join_refused"]


async def test_brake_refuses_failures_from_a_braked_address_never_valid_tokens(
    states: StateFactory,
) -> None:
    """Issue 11.12: after 3 bad tokens from one address (an office NAT), the next bad token is
    answered `rate_limited`, while a colleague's valid token from the same address joins."""
    state = states(auth={"max_failures": 3, "failure_window": 60.0})
    codes = []
    for t in range(4):
        s, wire = session(state, "198.51.100.7")
        s.start(Join(token="not-a-token", req=1), NOW + t, WALL + t)
        codes.append((wire.frames[0]["code"], wire.close_code))
    assert codes == [("unauthorized", 4401)] * 3 + [("rate_limited", 4429)]
    _s, colleague, outcome = join(state, "alice", peer="198.51.100.7", wall=WALL + 5)
    assert outcome.accepted and colleague.frames[0]["type"] == "joined"
    # The window moves on: a bad token is plain `unauthorized` again.
    s, wire = session(state, "198.51.100.7")
    s.start(Join(token="not-a-token", req=1), NOW + 70, WALL + 70)
    assert (wire.frames[0]["code"], wire.close_code) == ("unauthorized", 4401)
    # Each refusal of a kind is written once per (real-time) window, then as one summary with
    # the count (issue 11.9); closing the log writes the open window's summary.
    state.audit.close()
    assert refusals(state) == ["malformed", "malformed"]
    summaries = [r for r in audit(state) if r.get("repeated")]
    assert [(r["reason"], r["repeated"]) for r in summaries] == [("malformed", 4)]


async def test_nobody_is_charged_for_what_others_do_with_their_tokens(
    states: StateFactory,
) -> None:
    """Replays of alice's spent single-use token, from many addresses, never lock alice out:
    only the replaying addresses pay."""
    state = states(
        auth={"max_failures": 2, "failure_window": 60.0}, limits={"single_use_tokens": True}
    )
    once = token("alice", jti="j1")
    first, _wire = session(state, "192.0.2.10")
    assert first.start(Join(token=once), NOW, WALL).accepted
    first.end("removed")
    await first.finish(NOW)
    for n in range(10):
        s, wire = session(state, "203.0.113.66")
        s.start(Join(token=once), NOW + n, WALL + n)
        assert wire.frames[0]["code"] in ("unauthorized", "rate_limited")
        assert wire.frames[0]["code"] == ("rate_limited" if n >= 2 else "unauthorized")
    s, wire = session(state, "192.0.2.13")
    assert s.start(Join(token=token("alice", jti="j2", wall=WALL + 3)), NOW + 3, WALL + 3).accepted


async def test_single_use_token_is_accepted_once(states: StateFactory) -> None:
    state = states(limits={"single_use_tokens": True})
    once = token("alice", jti="only-once")
    s, wire = session(state)
    assert s.start(Join(token=once), NOW, WALL).accepted
    s.end("removed")
    await s.finish(NOW)
    again, wire = session(state, "192.0.2.2")
    outcome = again.start(Join(token=once, req=2), NOW + 1, WALL + 1)
    assert outcome.reason == "unauthorized" and wire.close_code == 4401
    assert refusals(state) == ["jti_reused"]


async def test_revoked_token_is_refused_at_join(states: StateFactory) -> None:
    state = states()
    old = token("alice")
    state.store.revoke("room1", "alice", now=WALL + 1, keep_for=3600)
    s, wire = session(state)
    assert not s.start(Join(token=old), NOW + 2, WALL + 2).accepted
    assert wire.frames[0]["code"] == "unauthorized" and wire.close_code == 4401
    # Tokens issued after the revocation are welcome.
    _s, fresh, outcome = join(state, "alice", wall=WALL + 5)
    assert outcome.accepted
    assert refusals(state) == ["revoked"]


async def test_duplicate_identity_is_refused_under_reject(states: StateFactory) -> None:
    state = states()
    join(state, "alice")
    _s, wire, outcome = join(state, "alice")
    assert outcome.reason == "conflict" and wire.close_code == 4409
    assert wire.frames[0]["message"] == "this identity is already in the room"
    assert state.rooms.participant_count() == 1


async def test_duplicate_identity_replaces_the_old_session_under_replace(
    states: StateFactory,
) -> None:
    state = states(limits={"duplicate_identity": "replace"})
    first, first_wire, _ = join(state, "alice")
    second, wire, outcome = join(state, "alice")
    assert outcome.accepted
    assert first_wire.frames[-1] == {"type": "leave", "reason": "duplicate_identity"}
    assert first_wire.close_code == 4409
    room = state.rooms.get("room1")
    assert room is not None and list(room.participants.values()) == [second.participant]
    await first.finish(NOW)
    assert state.rooms.participant_count() == 1


async def test_duplicate_identity_replaces_a_parked_participant(states: StateFactory) -> None:
    state = states(limits={"duplicate_identity": "replace"})
    first, _wire, _ = join(state, "alice")
    await first.finish(NOW)
    assert len(state.parking) == 1
    _s, _wire, outcome = join(state, "alice", now=NOW + 1)
    assert outcome.accepted and len(state.parking) == 0
    resumed, wire = session(state)
    resumed.start(Resume(resume_token=first.resume_token), NOW + 2, WALL + 2)
    assert wire.frames == [{"type": "leave", "reason": "duplicate_identity"}]


async def test_a_parked_identity_is_taken_over_under_reject(states: StateFactory) -> None:
    """Issue 11.13: a reload or a crash parks the session; the same person joining again with
    a valid token takes its place instead of being refused as a duplicate for 30 s."""
    state = states()  # duplicate_identity = "reject"
    first, _wire, _ = join(state, "alice")
    await first.finish(NOW)  # the socket is gone: parked
    assert len(state.parking) == 1
    again, wire, outcome = join(state, "alice", now=NOW + 1)
    assert outcome.accepted and wire.frames[0]["type"] == "joined"
    assert len(state.parking) == 0 and state.rooms.participant_count() == 1
    # A live (not parked) duplicate is still refused.
    _s, refused, outcome = join(state, "alice", now=NOW + 2)
    assert outcome.reason == "conflict" and refused.close_code == 4409


async def test_room_full(states: StateFactory) -> None:
    state = states(limits={"max_participants": 2})
    join(state, "a")
    join(state, "b")
    _s, wire, outcome = join(state, "c")
    assert outcome.reason == "room_full" and wire.close_code == 4403
    assert wire.frames[0] == {
        "type": "error", "req": 1, "code": "room_full", "message": "the room is full"
    }  # fmt: skip
    _s, elsewhere, outcome = join(state, "c", room="room2")
    assert outcome.accepted


async def test_server_full_by_participants_and_by_rooms(states: StateFactory) -> None:
    state = states(node={"max_participants": 3, "max_rooms": 2})
    join(state, "a", room="r1")
    join(state, "b", room="r2")
    _s, wire, outcome = join(state, "c", room="r3")  # a third room
    assert outcome.reason == "server_full" and wire.close_code == 4503
    assert wire.frames[0]["message"] == "the server is full"
    _s, wire, outcome = join(state, "c", room="r1")
    assert outcome.accepted
    _s, wire, outcome = join(state, "d", room="r2")
    assert outcome.reason == "server_full"
    assert "r3" not in state.rooms.rooms  # nothing is created for a refused join


async def test_no_such_room_without_auto_create(states: StateFactory) -> None:
    state = states(auth={"auto_create_rooms": False})
    _s, wire, outcome = join(state, "alice")
    assert outcome.reason == "not_found" and wire.close_code == 4404
    assert state.rooms.rooms == {}


async def test_accepted_join_is_audited(states: StateFactory) -> None:
    state = states()
    alice, _wire, _ = join(state, "alice", peer="192.0.2.44")
    (record,) = [r for r in audit(state) if r["event"] == "join_accepted"]
    assert record["ip"] == "192.0.2.44" and record["identity"] == "alice"
    assert alice.participant is not None and record["participant"] == alice.participant.sid
