"""The typed messages and their JSON codec (PROTOCOL section 2): what decodes, and what a bad
frame is told, precisely."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from auth.grants import VideoGrant
from signaling import codec
from signaling.codec import MessageError
from signaling.messages import (
    AddTrack,
    AnyServerMessage,
    Error,
    Join,
    Ok,
    Subscribe,
    TrackPublished,
    UpdateMetadata,
)
from signaling.state import ServerState
from tests.signaling_helpers import NOW, WALL, close_all, join, make_state


def refusal(frame: str) -> tuple[str, str, int | None]:
    with pytest.raises(MessageError) as caught:
        codec.decode(frame)
    return caught.value.code, caught.value.message, caught.value.req


@pytest.mark.parametrize(
    ("frame", "message", "req"),
    [
        ("not json", "frame is not valid JSON", None),
        ("[1, 2]", "frame must be a JSON object", None),
        ('{"type":"ping","req":-1}', "req must be a non-negative integer", None),
        ('{"type":"ping","req":true}', "req must be a non-negative integer", None),
        ('{"type":"ping","req":9007199254740992}', "req must be a non-negative integer", None),
        ('{"req":4}', "frame has no string 'type'", 4),
        ('{"type":"nope","req":5}', "unknown frame type 'nope'", 5),
        ('{"type":"add_track","req":6,"kind":"video"}', "add_track: missing field 'cid'", 6),
        (
            '{"type":"add_track","req":6,"cid":7,"kind":"video"}',
            "add_track.cid must be a string of 1..256 characters",
            6,
        ),
        (
            '{"type":"add_track","cid":"c","kind":"video","source":null}',
            "add_track.source must be one of 'camera', 'microphone', 'screen_share',"
            " 'screen_share_audio'",
            None,
        ),
        ('{"type":"mute","req":9,"track_sid":"T","muted":1}', "mute.muted must be a boolean", 9),
        (
            '{"type":"subscribe","track_sids":["TR_a",""]}',
            "subscribe.track_sids must be a list of at most 256 non-empty strings",
            None,
        ),
        (
            '{"type":"trickle","target":"publisher","candidate":[]}',
            "trickle.candidate must be an object",
            None,
        ),
        (
            '{"type":"set_quality","track_sid":"T","quality":"max"}',
            "set_quality.quality must be one of 'low', 'medium', 'high'",
            None,
        ),
        (
            '{"type":"offer","target":"subscriber","sdp":"v=0"}',
            "offer.target must be one of 'publisher'",
            None,
        ),
        ('{"type":"join","token":42}', "join.token must be a string of 1..65536 characters", None),
        ('{"type":"join","token":"t","protocol":null}', "join.protocol must be an integer", None),
    ],
)  # fmt: skip
def test_a_bad_frame_is_told_what_is_wrong(frame: str, message: str, req: int | None) -> None:
    assert refusal(frame) == ("invalid_message", message, req)


def test_frames_over_64_kib_of_sdp_or_token_are_refused_by_the_schema() -> None:
    sdp = "v" * (64 * 1024 + 1)
    frame = json.dumps({"type": "offer", "target": "publisher", "sdp": sdp, "req": 3})
    assert refusal(frame) == (
        "invalid_message", "offer.sdp must be a string of 1..65536 characters", 3
    )  # fmt: skip
    within = json.dumps({"type": "offer", "target": "publisher", "sdp": sdp[:-1]})
    assert codec.decode(within).sdp == sdp[:-1]  # type: ignore[union-attr]


def test_valid_frames_decode_to_typed_messages_with_defaults() -> None:
    message = codec.decode('{"type":"add_track","cid":"c1","kind":"audio","future":1}')
    assert message == AddTrack(cid="c1", kind="audio")
    assert message.name == "" and message.muted is False and message.req is None
    assert isinstance(message.source, msgspec.UnsetType)  # absent: the kind's default source
    join = codec.decode('{"req":1,"token":"t","type":"join"}')
    assert join == Join(token="t", req=1) and join.protocol == 1 and join.auto_subscribe
    sub = codec.decode('{"type":"subscribe","track_sids":["TR_x"],"req":0}')
    assert sub == Subscribe(track_sids=["TR_x"], req=0) and sub.subscribe is True
    meta = codec.decode('{"type":"update_metadata","name":"n"}')
    assert meta == UpdateMetadata(name="n") and isinstance(meta.metadata, msgspec.UnsetType)


def test_replies_leave_out_req_when_there_is_none() -> None:
    assert json.loads(codec.encode(Ok(req=3))) == {"type": "ok", "req": 3}
    assert json.loads(codec.encode(Error(code="c", message="m"))) == {
        "type": "error", "code": "c", "message": "m"
    }  # fmt: skip
    published = TrackPublished(cid="c", track={"sid": "TR_1"}, req=2)
    assert json.loads(codec.encode(published)) == {
        "type": "track_published", "cid": "c", "track": {"sid": "TR_1"}, "req": 2
    }  # fmt: skip


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[ServerState]:
    state = make_state(tmp_path)
    yield state
    await close_all(state)


async def test_the_rooms_events_match_their_declared_schemas(state: ServerState) -> None:
    """What the room and participants send as plain dicts is what messages.py declares."""
    grants = {"canUpdateOwnMetadata": True}
    alice, alice_wire, _ = join(state, "alice", grants=grants)
    _bob, bob_wire, _ = join(state, "bob")
    await alice.handle(UpdateMetadata(metadata="m", req=1), NOW, WALL)
    await alice.handle(AddTrack(cid="c1", kind="audio", req=2), NOW, WALL)
    assert alice.participant is not None and alice.room is not None
    alice.room.apply_grant(alice.participant, VideoGrant.from_claim({"room": "room1"}))
    await bob_wire.next_of_type("offer")  # the subscriber offer, once negotiated
    alice.end("removed")
    await alice.finish(NOW)
    await bob_wire.next_of_type("participant_left")
    kinds = {f["type"] for f in bob_wire.frames}
    assert {"joined", "offer", "participant_updated", "participant_left"} <= kinds
    for frame in [*bob_wire.frames, *alice_wire.frames]:
        msgspec.convert(frame, AnyServerMessage)
    assert alice_wire.of_type("permissions_changed")
