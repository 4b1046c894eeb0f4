"""keyroom's LiveKit codec without sockets: requests in, responses out, data packets."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from livekit.protocol import models, rtc

from signaling.codec import MessageError
from signaling.livekit import convert, datapackets, wire
from signaling.livekit.tracksettings import TrackSettings
from signaling.messages import AddTrack, Leave, Mute, Offer, Subscribe, Trickle

ALICE: dict[str, Any] = {
    "sid": "PA_a", "identity": "alice", "name": "Alice", "metadata": "", "joined_at": 5,
    "tracks": [{"sid": "TR_v", "kind": "video", "source": "camera", "name": "cam", "muted": False}],
}  # fmt: skip


def decode(**request: Any) -> Any:
    return wire.decode(rtc.SignalRequest(**request).SerializeToString(), 7, 1000.0)[2]


def test_requests_become_keyroom_messages() -> None:
    add = decode(add_track=rtc.AddTrackRequest(cid="c1", type=models.VIDEO, source=models.CAMERA))
    assert add == AddTrack(cid="c1", kind="video", source="camera", name="", req=7)
    mic = decode(add_track=rtc.AddTrackRequest(cid="c2", type=models.AUDIO, disable_red=True))
    assert isinstance(mic, AddTrack) and mic.disable_red and not add.disable_red
    offer = decode(offer=rtc.SessionDescription(type="offer", sdp="v=0"))
    assert offer == Offer(target="publisher", sdp="v=0", req=7)
    init = json.dumps({"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host", "sdpMid": "0"})
    trickle = decode(trickle=rtc.TrickleRequest(candidateInit=init, target=rtc.SUBSCRIBER))
    assert isinstance(trickle, Trickle) and trickle.target == "subscriber"
    assert decode(mute=rtc.MuteTrackRequest(sid="TR_x", muted=True)) == Mute(
        track_sid="TR_x", muted=True, req=7
    )
    sub = decode(
        subscription=rtc.UpdateSubscription(
            track_sids=["TR_1"],
            subscribe=True,
            participant_tracks=[
                models.ParticipantTracks(participant_sid="PA_b", track_sids=["TR_2"])
            ],
        )
    )
    assert sub == Subscribe(track_sids=["TR_1", "TR_2"], subscribe=True, req=7)
    layer = decode(
        track_setting=rtc.UpdateTrackSettings(track_sids=["TR_1"], width=1280, height=720)
    )
    assert layer == TrackSettings(
        track_sid="TR_1", quality=models.LOW, width=1280, height=720, disabled=False, req=7
    )
    assert decode(leave=rtc.LeaveRequest()) == Leave(req=7)
    pong = decode(ping_req=rtc.Ping(timestamp=5))
    assert isinstance(pong, wire.Local) and pong.response.pong_resp.timestamp == 1_000_000
    assert decode(sync_state=rtc.SyncState()) is None  # taken, not needed


def test_e2ee_tracks_are_declared_both_ways() -> None:
    """LiveKit's frame cryptor declares its tracks encrypted (keyroom's `e2ee_required` checks
    it), and a subscriber's SDK decrypts a track only when its TrackInfo says so."""
    for encryption, expected in [
        (models.Encryption.GCM, "e2ee"),
        (models.Encryption.CUSTOM, "e2ee"),
        (models.Encryption.NONE, "none"),
    ]:
        add = decode(
            add_track=rtc.AddTrackRequest(cid="c", type=models.VIDEO, encryption=encryption)
        )
        assert isinstance(add, AddTrack) and add.encryption == expected
    sealed = {**ALICE["tracks"][0], "encryption": "e2ee"}
    assert convert.track_info(sealed).encryption == models.Encryption.GCM
    assert convert.track_info(ALICE["tracks"][0]).encryption == models.Encryption.NONE


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"\xff\xff", "not a SignalRequest"),
        (b"", "names no request"),
        (
            rtc.SignalRequest(trickle=rtc.TrickleRequest(candidateInit="{")).SerializeToString(),
            "JSON",
        ),
        (rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid="")).SerializeToString(), "cid"),
        (
            rtc.SignalRequest(
                add_track=rtc.AddTrackRequest(cid="c", type=models.DATA)
            ).SerializeToString(),
            "audio and video",
        ),
        (
            rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid="x" * 65)).SerializeToString(),
            "track sid",
        ),
        (rtc.SignalRequest(offer=rtc.SessionDescription()).SerializeToString(), "empty SDP"),
    ],
)
def test_bad_requests_raise_message_errors(data: bytes, text: str) -> None:
    with pytest.raises(MessageError) as refused:
        wire.decode(data, 1, 0.0)
    assert text in refused.value.message and refused.value.code == "invalid_message"


def translator() -> wire.Translator:
    t = wire.Translator(lambda sid: ALICE if sid == "PA_a" else None)
    t.own_sid = "PA_me"
    return t


def test_room_events_become_participant_updates() -> None:
    t = translator()
    [update] = t.translate({"type": "track_published", "participant_sid": "PA_a", "track": {}})
    info = update.update.participants[0]
    assert (info.sid, info.identity, info.state) == ("PA_a", "alice", models.ParticipantInfo.ACTIVE)
    assert [(x.sid, x.type, x.source) for x in info.tracks] == [
        ("TR_v", models.VIDEO, models.CAMERA)
    ]
    [left] = t.translate(
        {"type": "participant_left", "sid": "PA_a", "identity": "alice", "reason": "removed"}
    )
    gone = left.update.participants[0]
    assert gone.state == models.ParticipantInfo.DISCONNECTED
    assert gone.disconnect_reason == models.PARTICIPANT_REMOVED
    [own] = t.translate(
        {"type": "track_muted", "participant_sid": "PA_me", "track_sid": "TR_m", "muted": True}
    )
    assert own.mute.sid == "TR_m" and own.mute.muted
    [mine] = t.translate(
        {"type": "track_unpublished", "participant_sid": "PA_me", "track_sid": "TR_m"}
    )
    assert mine.track_unpublished.track_sid == "TR_m"


def test_speakers_are_sent_as_changes() -> None:
    t = translator()
    [first] = t.translate({"type": "active_speakers", "speakers": [{"sid": "PA_a", "level": 0.5}]})
    assert [(s.sid, s.active) for s in first.speakers_changed.speakers] == [("PA_a", True)]
    [second] = t.translate({"type": "active_speakers", "speakers": []})
    assert [(s.sid, s.active) for s in second.speakers_changed.speakers] == [("PA_a", False)]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("token_expired", models.USER_REJECTED), ("revoked", models.PARTICIPANT_REMOVED),
     ("duplicate_identity", models.DUPLICATE_IDENTITY), ("server_shutdown", models.SERVER_SHUTDOWN),
     ("room_closed", models.ROOM_CLOSED), ("something_new", models.UNKNOWN_REASON)],
)  # fmt: skip
def test_leave_reasons(reason: str, expected: int) -> None:
    [leave] = translator().translate({"type": "leave", "reason": reason})
    assert leave.leave.reason == expected
    assert leave.leave.action == rtc.LeaveRequest.DISCONNECT and not leave.leave.can_reconnect


def test_errors_answer_the_request_they_refuse() -> None:
    t = translator()
    mute = rtc.MuteTrackRequest(sid="TR_other", muted=True)
    t.requests[3] = ("mute", mute)
    [response] = t.translate({"type": "error", "code": "not_found", "message": "no", "req": 3})
    assert response.request_response.reason == rtc.RequestResponse.NOT_FOUND
    assert response.request_response.mute == mute
    assert 3 not in t.requests


def test_a_forged_data_sender_is_replaced_by_the_authenticated_one() -> None:
    forged = models.DataPacket(
        participant_identity="bob", participant_sid="PA_bob",
        user=models.UserPacket(participant_identity="bob", payload=b"hi", topic="t",
                               destination_identities=["carol"]),
    )  # fmt: skip
    # What the sender claims is not part of the envelope the room relays...
    assert datapackets.read_packet(forged.SerializeToString()) == ("t", "hi", ["carol"], None)
    # ...the room stamps the sender it authenticated, and that is what recipients get.
    relayed = orjson.dumps({"from": "alice", "from_sid": "PA_a", "topic": "t", "payload": "hi"})
    packet = models.DataPacket()
    packet.ParseFromString(datapackets.write_packet("_lossy", relayed) or b"")
    assert (packet.participant_identity, packet.user.participant_identity) == ("alice", "alice")
    assert packet.kind == models.DataPacket.LOSSY and packet.user.payload == b"hi"


def test_data_the_relay_cannot_carry_is_dropped() -> None:
    # Binary user packets, RPC and streams travel (tests/test_livekit_features_wire.py); a
    # transcription or chat packet does not.
    chat = models.DataPacket(chat_message=models.ChatMessage(id="1", message="m"))
    assert datapackets.read_packet(chat.SerializeToString()) is None
    assert datapackets.read_packet(b"\xff\xff") is None
    assert datapackets.write_packet("_reliable", b"not json") is None
