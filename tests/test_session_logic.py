"""The session logic without a socket or a server process: typed messages in, frames out, time
passed in (PROTOCOL 2.7, 2.8)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from signaling.codec import MessageError
from signaling.messages import Join, Leave, Ping, Refresh, Resume
from signaling.state import ServerState
from tests.signaling_helpers import NOW, WALL, audit, close_all, join, make_state, session, token


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[ServerState]:
    state = make_state(
        tmp_path,
        limits={"max_bad_frames": 3, "bad_frame_window": 10.0},
        server={"resume_window": 30.0},
    )
    yield state
    await close_all(state)


async def test_refresh_notice_comes_refresh_notice_before_exp(state: ServerState) -> None:
    alice, wire, outcome = join(state, "alice", ttl=600)
    assert outcome.accepted and outcome.reason == "join"
    # [auth] refresh_notice = 60: the notice is due at exp - 60, on the loop clock.
    assert alice.next_deadline() == NOW + 540
    alice.handle_timer(NOW + 539.9)
    assert wire.of_type("token_refresh_required") == []
    alice.handle_timer(NOW + 540)
    assert wire.of_type("token_refresh_required") == [
        {"type": "token_refresh_required", "expires_at": int(WALL + 600)}
    ]
    assert not alice.ending


async def test_token_expiry_ends_the_session_after_the_leeway(state: ServerState) -> None:
    alice, wire, _ = join(state, "alice", ttl=600)
    alice.handle_timer(NOW + 540)
    # [auth] leeway = 60: the session lives until exp + 60.
    assert alice.next_deadline() == NOW + 660
    alice.handle_timer(NOW + 659.9)
    assert not alice.ending
    alice.handle_timer(NOW + 660)
    assert wire.frames[-1] == {"type": "leave", "reason": "token_expired"}
    assert wire.close_code == 4401 and alice.ending
    assert alice.next_deadline() is None


async def test_refresh_rearms_expiry_and_notice(state: ServerState) -> None:
    alice, wire, _ = join(state, "alice", ttl=600)
    later = token("alice", ttl=600, wall=WALL + 500)
    await alice.handle(Refresh(token=later, req=7), NOW + 500, WALL + 500)
    assert wire.frames[-1] == {"type": "ok", "req": 7}
    assert alice.next_deadline() == NOW + 500 + 540
    alice.handle_timer(NOW + 660)  # the first token's expiry no longer applies
    assert not alice.ending and wire.of_type("token_refresh_required") == []
    alice.handle_timer(NOW + 500 + 660)
    assert wire.frames[-1] == {"type": "leave", "reason": "token_expired"}


async def test_refresh_for_another_identity_is_refused_and_changes_nothing(
    state: ServerState,
) -> None:
    alice, wire, _ = join(state, "alice", ttl=600)
    other = token("mallory", ttl=600)
    await alice.handle(Refresh(token=other, req=3), NOW + 10, WALL + 10)
    assert wire.frames[-1] == {
        "type": "error", "req": 3, "code": "unauthorized", "message": "unauthorized"
    }  # fmt: skip
    assert alice.next_deadline() == NOW + 540
    refused = [r for r in audit(state) if r["event"] == "refresh_refused"]
    assert [r["reason"] for r in refused] == ["identity_or_room_differs"]


async def test_refresh_with_a_revoked_token_is_refused(state: ServerState) -> None:
    alice, wire, _ = join(state, "alice", ttl=600)
    fresh = token("alice", ttl=600, wall=WALL + 5)
    state.store.revoke("room1", "alice", now=WALL + 20, keep_for=3600)
    await alice.handle(Refresh(token=fresh, req=4), NOW + 30, WALL + 30)
    assert wire.frames[-1]["code"] == "unauthorized"
    assert [r["reason"] for r in audit(state) if r["event"] == "refresh_refused"] == ["revoked"]


async def test_refresh_gets_the_joins_checks_brake_and_single_use(tmp_path: Path) -> None:
    """Issue 11.12: a spent single-use token cannot refresh, and failed refreshes charge the
    address like failed joins (then `rate_limited`); a valid refresh still works."""
    state = make_state(
        tmp_path,
        limits={"single_use_tokens": True},
        auth={"max_failures": 2, "failure_window": 60.0},
    )
    try:
        first = token("alice", ttl=600, jti="j1")
        alice, wire = session(state)
        assert alice.start(Join(token=first, req=1), NOW, WALL).accepted
        codes = []
        for n in range(3):
            await alice.handle(Refresh(token=first, req=10 + n), NOW + n, WALL + n)
            codes.append(wire.frames[-1]["code"])
        assert codes == ["unauthorized", "unauthorized", "rate_limited"]
        renewed = token("alice", ttl=600, jti="j2", wall=WALL + 5)
        await alice.handle(Refresh(token=renewed, req=20), NOW + 5, WALL + 5)
        assert wire.frames[-1] == {"type": "ok", "req": 20}
        await alice.handle(Refresh(token=renewed, req=21), NOW + 6, WALL + 6)  # now spent
        assert wire.frames[-1]["code"] == "rate_limited"
        reasons = [r["reason"] for r in audit(state) if r["event"] == "refresh_refused"]
        assert reasons[0] == "jti_reused"
    finally:
        await close_all(state)


async def test_bad_frames_close_4429_only_when_too_many_within_the_window(
    state: ServerState,
) -> None:
    alice, wire, _ = join(state, "alice")
    bad = MessageError("invalid_message", "frame is not valid JSON")
    # max_bad_frames = 3 within 10 s: one every 5 s never adds up to more.
    for t in (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 26.0):
        alice.refuse(bad, NOW + t)
    assert not alice.ending  # 20, 25, 26: three within 10 s
    alice.refuse(bad, NOW + 27.0)  # 20, 25, 26, 27: the fourth
    assert alice.ending and wire.close_code == 4429
    assert wire.frames[-1] == {"type": "leave", "reason": "protocol_error"}


async def test_refused_requests_other_than_malformed_do_not_count(state: ServerState) -> None:
    alice, wire, _ = join(state, "alice")
    for t in range(10):
        alice.refuse(MessageError("not_found", "no such track"), NOW + t * 0.1)
    assert not alice.ending
    assert len(wire.of_type("error")) == 10


async def test_requests_go_through_the_handler_table(state: ServerState) -> None:
    alice, wire, _ = join(state, "alice")
    await alice.handle(Ping(req=9), NOW, WALL)
    assert wire.frames[-1] == {"type": "pong", "req": 9}
    await alice.handle(Resume(resume_token="x", req=10), NOW, WALL)
    assert wire.frames[-1] == {
        "type": "error", "req": 10, "code": "invalid_message",
        "message": "resume is only valid as the first frame",
    }  # fmt: skip
    await alice.handle(Leave(req=11), NOW, WALL)
    assert wire.frames[-1] == {"type": "ok", "req": 11}
    assert alice.ending and alice.end_reason == "left" and wire.close_code == 1000


async def test_first_frame_must_be_join_or_resume(state: ServerState) -> None:
    s, wire = session(state)
    outcome = s.start(Ping(req=2), NOW, WALL)
    assert outcome == type(outcome)(False, "invalid_message")
    assert wire.frames == [
        {"type": "error", "req": 2, "code": "invalid_message",
         "message": "the first frame must be join or resume"},
    ]  # fmt: skip
    assert wire.close_code == 4400


# -- parking and resume (PROTOCOL 2.7) -------------------------------------------------------------


async def test_parked_participant_expires_after_the_resume_window(state: ServerState) -> None:
    alice, _wire, _ = join(state, "alice")
    bob, bob_wire, _ = join(state, "bob")
    await alice.finish(NOW + 5)  # the socket dropped
    assert len(state.parking) == 1
    assert state.parking.next_deadline() == NOW + 5 + 30
    state.parking.handle_timer(NOW + 34.9)
    assert len(state.parking) == 1 and state.rooms.participant_count() == 2
    state.parking.handle_timer(NOW + 35)
    assert len(state.parking) == 0
    left = await bob_wire.next_of_type("participant_left")
    assert left["identity"] == "alice" and left["reason"] == "disconnected"


async def test_resume_within_the_window_takes_the_participant_back(state: ServerState) -> None:
    alice, _wire, _ = join(state, "alice")
    sid = alice.participant.sid if alice.participant else None
    resume_token = alice.resume_token
    await alice.finish(NOW + 5)
    again, wire = session(state)
    outcome = again.start(Resume(resume_token=resume_token, req=1), NOW + 20, WALL + 20)
    assert outcome.accepted and outcome.reason == "resume"
    joined = wire.frames[0]
    assert joined["type"] == "joined" and joined["participant"]["sid"] == sid
    assert joined["resume_token"] != resume_token
    assert len(state.parking) == 0
    state.parking.handle_timer(NOW + 60)  # the old deadline is gone with the parking
    assert state.rooms.participant_count() == 1
    # The token's timers run again on the new session.
    assert again.next_deadline() == NOW + 540


async def test_resume_after_revocation_is_refused_with_revoked(state: ServerState) -> None:
    alice, _wire, _ = join(state, "alice")
    _bob, bob_wire, _ = join(state, "bob")
    resume_token = alice.resume_token
    await alice.finish(NOW + 5)
    # Revoked elsewhere (another node, the store), the participant still parked here.
    state.store.revoke("room1", "alice", now=WALL + 10, keep_for=3600)
    again, wire = session(state)
    outcome = again.start(Resume(resume_token=resume_token, req=1), NOW + 20, WALL + 20)
    assert outcome == type(outcome)(False, "unauthorized")
    assert wire.frames == [{"type": "leave", "reason": "revoked"}]
    assert wire.close_code == 4410
    left = await bob_wire.next_of_type("participant_left")
    assert left["identity"] == "alice" and left["reason"] == "revoked"
    refused = [r for r in audit(state) if r["event"] == "resume_refused"]
    assert [(r["identity"], r["reason"]) for r in refused] == [("alice", "revoked")]


async def test_resume_after_expiry_is_refused_unauthorized(state: ServerState) -> None:
    alice, _wire, _ = join(state, "alice", ttl=600)
    _bob, bob_wire, _ = join(state, "bob")
    resume_token = alice.resume_token
    await alice.finish(NOW + 5)
    again, wire = session(state)
    # exp + leeway (60 s) has passed by the time it comes back.
    outcome = again.start(Resume(resume_token=resume_token), NOW + 661, WALL + 661)
    assert not outcome.accepted
    assert wire.frames == [{"type": "error", "code": "unauthorized", "message": "unauthorized"}]
    assert wire.close_code == 4401
    left = await bob_wire.next_of_type("participant_left")
    assert left["reason"] == "token_expired"


async def test_kicked_while_away_resume_gets_the_leave_it_missed(state: ServerState) -> None:
    alice, _wire, _ = join(state, "alice")
    resume_token = alice.resume_token
    await alice.finish(NOW + 5)
    room = state.rooms.get("room1")
    assert room is not None and alice.participant is not None
    await state.end_participant(alice.participant, room, "revoked")
    again, wire = session(state)
    again.start(Resume(resume_token=resume_token), NOW + 10, WALL + 10)
    assert wire.frames == [{"type": "leave", "reason": "revoked"}]
    assert wire.close_code == 4410
    # Remembered until the participant's resume window would have ended, no longer.
    state.parking.handle_timer(NOW + 35)
    late, wire = session(state)
    late.start(Resume(resume_token=resume_token), NOW + 36, WALL + 36)
    assert wire.frames[0]["code"] == "unauthorized" and wire.close_code == 4401


async def test_a_session_ended_by_the_server_is_not_parked(state: ServerState) -> None:
    alice, wire, _ = join(state, "alice")
    _bob, bob_wire, _ = join(state, "bob")
    alice.end("removed")
    await alice.finish(NOW + 1)
    assert len(state.parking) == 0
    assert (await bob_wire.next_of_type("participant_left"))["reason"] == "removed"
    again, wire = session(state)
    again.start(Resume(resume_token=alice.resume_token), NOW + 2, WALL + 2)
    assert wire.frames == [{"type": "leave", "reason": "removed"}] and wire.close_code == 4410
