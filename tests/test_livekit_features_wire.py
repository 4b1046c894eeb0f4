"""LiveKit wire units without sockets: connection quality updates (signaling/livekit/
connquality.py), data packets beyond UTF-8 user text (signaling/livekit/datapackets.py)."""

from __future__ import annotations

import base64
import gc
from pathlib import Path
from typing import Any

import orjson
import pytest
from livekit.protocol import models, rtc

from sfu.datarelay import LIVEKIT_ONLY, DataRelay, Envelope, json_text, read_json_envelope
from sfu.forwarder import PublishedTrack
from sfu.layerswitch import PAUSED
from sfu.stats import DropReason, Stats
from signaling.livekit import datapackets, wire
from signaling.livekit.connquality import QualityReport, quality_update
from signaling.livekit.convert import track_info
from signaling.livekit.edge import apply_settings
from signaling.livekit.tracksettings import (
    Declared,
    TrackSettings,
    declared_dimensions,
    wanted_layer,
)
from signaling.messages import SetQuality
from tests.signaling_helpers import NOW, WALL, close_all, join, make_state
from tests.test_congestion import simulcast_subscription
from tests.test_datarelay import FakeChannel


def test_levels_map_to_livekit_qualities_and_only_changes_are_sent() -> None:
    levels = {"PA_a": "excellent", "PA_b": "good", "PA_c": "poor"}
    first = quality_update({}, levels)
    assert first is not None
    sent = {u.participant_sid: (u.quality, u.score) for u in first.connection_quality.updates}
    assert sent == {
        "PA_a": (models.EXCELLENT, 4.5),
        "PA_b": (models.GOOD, 3.5),
        "PA_c": (models.POOR, 2.0),
    }
    assert quality_update(levels, levels) is None
    later = quality_update(levels, {**levels, "PA_b": "poor", "PA_d": "excellent"})
    assert later is not None
    assert [(u.participant_sid, u.quality) for u in later.connection_quality.updates] == [
        ("PA_b", models.POOR),
        ("PA_d", models.EXCELLENT),
    ]
    assert quality_update({}, {"PA_x": "bogus"}) is None  # no level keyroom knows: nothing


def test_the_report_runs_every_interval_with_time_passed_in() -> None:
    levels = {"PA_a": "excellent"}
    sent = []
    report = QualityReport(lambda: levels, sent.append, now=100.0)
    assert report.next_deadline() == 102.0
    report.handle_timer(101.0)  # early: nothing
    assert sent == []
    report.handle_timer(102.0)
    assert len(sent) == 1 and report.next_deadline() == 104.0
    report.handle_timer(104.0)  # unchanged: nothing sent
    assert len(sent) == 1
    levels["PA_a"] = "good"
    report.handle_timer(106.0)
    assert [u.quality for u in sent[-1].connection_quality.updates] == [models.GOOD]


def relayed(envelope: Envelope, identity: str = "alice", sid: str = "PA_a") -> bytes:
    """The message the room makes of an envelope (sfu/room.py `deliver_data`)."""
    return orjson.dumps(
        {
            **(envelope.extra or {}),
            "from": identity,
            "from_sid": sid,
            "topic": envelope.topic,
            "payload": envelope.payload,
        }
    )


def written(label: str, message: bytes) -> models.DataPacket:
    raw = datapackets.write_packet(label, message)
    assert raw is not None
    return models.DataPacket.FromString(raw)


def test_a_binary_user_packet_arrives_intact_and_base64_for_json_clients() -> None:
    payload = bytes(range(256)) * 4
    sent = models.DataPacket(
        participant_identity="mallory",
        user=models.UserPacket(payload=payload, topic="bin", participant_identity="mallory"),
        destination_identities=["bob"],
    )
    envelope = datapackets.read_packet(sent.SerializeToString())
    assert envelope is not None and envelope.to == ["bob"]
    assert envelope.extra == {"encoding": "base64"}
    message = relayed(envelope)
    packet = written("_reliable", message)
    assert packet.user.payload == payload and packet.user.topic == "bin"
    assert packet.participant_identity == packet.user.participant_identity == "alice"
    # A keyroom JSON client gets it as documented (docs/protocol.md 2.5).
    text = json_text("_reliable", message)
    assert isinstance(text, str)
    frame = orjson.loads(text)
    assert frame["encoding"] == "base64" and base64.b64decode(frame["payload"]) == payload
    assert frame["from"] == "alice"


@pytest.mark.parametrize(
    "packet",
    [
        models.DataPacket(rpc_request=models.RpcRequest(id="r1", method="add", payload="[1,2]",
                                                        response_timeout_ms=5000, version=1)),
        models.DataPacket(rpc_ack=models.RpcAck(request_id="r1")),
        models.DataPacket(rpc_response=models.RpcResponse(request_id="r1", payload="3")),
        models.DataPacket(stream_header=models.DataStream.Header(stream_id="s", topic="files")),
        models.DataPacket(stream_chunk=models.DataStream.Chunk(stream_id="s", content=b"\xff")),
        models.DataPacket(stream_trailer=models.DataStream.Trailer(stream_id="s")),
    ],
)  # fmt: skip
def test_rpc_and_stream_packets_travel_whole_with_the_server_set_sender(
    packet: models.DataPacket,
) -> None:
    packet.participant_identity, packet.participant_sid = "mallory", "PA_m"
    packet.destination_identities.append("bob")
    envelope = datapackets.read_packet(packet.SerializeToString())
    assert envelope is not None and envelope.to == ["bob"] and envelope.payload == ""
    message = relayed(envelope)
    assert message.startswith(LIVEKIT_ONLY)
    out = written("_reliable", message)
    assert (out.participant_identity, out.participant_sid) == ("alice", "PA_a")
    assert list(out.destination_identities) == []
    kind = packet.WhichOneof("value")
    assert out.WhichOneof("value") == kind
    assert getattr(out, kind) == getattr(packet, kind)
    # keyroom's JSON clients cannot take it: not sent (the relay counts it `unrepresentable`).
    assert json_text("_reliable", message) is None


def test_a_json_client_cannot_pass_for_a_livekit_only_packet() -> None:
    """Only the server sets `extra`: a keyroom client's envelope never carries it."""
    forged = b'{"livekit": "AAAA", "topic": "t", "payload": "p"}'
    envelope = read_json_envelope(forged)
    assert envelope == Envelope("t", "p", None)
    assert json_text("_reliable", relayed(envelope)) is not None  # type: ignore[arg-type]


def test_the_relay_counts_what_a_receiver_cannot_take() -> None:
    stats = Stats()
    relay = DataRelay(stats=stats, may_publish=lambda: True, max_bytes=lambda: 100,
                      deliver=lambda *args: None)  # fmt: skip

    channel = FakeChannel("_reliable", "open")
    relay.use_channels({"_reliable": channel})  # type: ignore[dict-item]
    rpc = models.DataPacket(rpc_ack=models.RpcAck(request_id="r"))
    envelope = datapackets.read_packet(rpc.SerializeToString())
    assert envelope is not None
    assert not relay.send("_reliable", relayed(envelope))
    assert stats.dropped[DropReason.UNREPRESENTABLE.value] == 1 and channel.sent == []
    # Too large for the room's limit before anything is parsed, as for keyroom's clients.
    big = models.DataPacket(user=models.UserPacket(payload=b"\xff" * 200))
    relay.on_message("_reliable", big.SerializeToString())
    assert stats.dropped[DropReason.TOO_LARGE.value] == 1


def test_a_simulcast_track_reports_its_layers_with_the_declared_sizes() -> None:
    add = rtc.AddTrackRequest(
        cid="c", type=models.VIDEO, width=640, height=480,
        layers=[models.VideoLayer(quality=models.LOW, width=160, height=120),
                models.VideoLayer(quality=models.MEDIUM, width=320, height=240),
                models.VideoLayer(quality=models.HIGH, width=640, height=480)],
    )  # fmt: skip
    sizes = declared_dimensions(add)
    assert sizes == {models.LOW: (160, 120), models.MEDIUM: (320, 240), models.HIGH: (640, 480)}
    keyroom_info = {
        "sid": "TR_1", "kind": "video", "source": "camera",
        "simulcast": [{"rid": "q", "active": True, "bitrate": 150_000},
                      {"rid": "h", "active": True, "bitrate": 500_000},
                      {"rid": "f", "active": False, "bitrate": 0}],
    }  # fmt: skip
    info = track_info({**keyroom_info, "declared_layers": sizes, "width": 640, "height": 480})
    assert info.simulcast and (info.width, info.height) == (640, 480)
    assert [(v.quality, v.rid, v.width, v.height, v.bitrate) for v in info.layers] == [
        (models.LOW, "q", 160, 120, 150_000),
        (models.MEDIUM, "h", 320, 240, 500_000),
        (models.HIGH, "f", 640, 480, 0),
    ]
    single = track_info({"sid": "TR_2", "kind": "video", "simulcast": []})
    assert not single.simulcast and list(single.layers) == []


def settings(**kw: Any) -> TrackSettings:
    base: dict[str, Any] = {"track_sid": "TR_1", "quality": models.HIGH, "width": 0,
                            "height": 0, "disabled": False, "req": 1}  # fmt: skip
    return TrackSettings(**{**base, **kw})


def test_track_settings_choose_the_layer_livekit_would() -> None:
    sizes = {models.LOW: (160, 120), models.MEDIUM: (320, 240), models.HIGH: (640, 480)}
    assert wanted_layer(settings(quality=models.LOW), sizes) == 0
    assert wanted_layer(settings(quality=models.MEDIUM), sizes) == 1
    assert wanted_layer(settings(quality=models.HIGH), {}) == 2
    # Rendered size: the smallest layer at least that large (10 % tolerance), else the top.
    assert wanted_layer(settings(width=150, height=110), sizes) == 0
    assert wanted_layer(settings(width=300, height=225), sizes) == 1  # 240 >= 0.9 * 225
    assert wanted_layer(settings(width=373, height=280), sizes) == 2
    assert wanted_layer(settings(width=280, height=373), sizes) == 2  # portrait: width compared
    # Without declared sizes, LiveKit's defaults (180, 360 lines).
    assert wanted_layer(settings(width=320, height=180), {}) == 0
    assert wanted_layer(settings(width=640, height=360), {}) == 1
    assert wanted_layer(settings(width=1280, height=720), {}) == 2
    assert wanted_layer(settings(disabled=True, width=1280, height=720), sizes) == PAUSED


def test_declared_sizes_go_with_their_track() -> None:
    declared = Declared()
    track = PublishedTrack(sid="TR_1", cid="c", kind="video", source="camera", name="",
                           publisher_sid="PA_a")  # fmt: skip
    declared.remember(track, rtc.AddTrackRequest(cid="c", width=320, height=240))
    info: dict[str, Any] = {"sid": "PA_a", "tracks": [{"sid": "TR_1"}, {"sid": "TR_gone"}]}
    declared.annotate(info, {"TR_1": track})
    assert info["tracks"][0]["declared_layers"] == {models.HIGH: (320, 240)}
    assert (info["tracks"][0]["width"], info["tracks"][0]["height"]) == (320, 240)
    assert "declared_layers" not in info["tracks"][1]
    del track
    gc.collect()
    assert len(declared._sizes) == 0  # noqa: SLF001  (weak: gone with the track)


async def test_disabled_is_a_real_pause_and_settings_resume_it(tmp_path: Path) -> None:
    """The edge's handling of a subscriber's settings (signaling/livekit/edge.py): `disabled`
    pauses the down-track (nothing forwarded), a quality resumes it through set_quality."""
    state = make_state(tmp_path)
    try:
        alice, _, _ = join(state, "alice")
        bob, wire, _ = join(state, "bob")
        assert alice.participant is not None and bob.participant is not None
        track, down = simulcast_subscription()
        alice.participant.add_track(track)
        bob.participant.subscriptions[track.sid] = down
        assert apply_settings(bob, settings(track_sid=track.sid, disabled=True)) is None
        assert down.max_layer == PAUSED and down.layers is not None
        assert down.layers.target == PAUSED
        resume = apply_settings(bob, settings(track_sid=track.sid, width=320, height=180))
        assert resume == SetQuality(track_sid=track.sid, quality="low", req=1)
        await bob.handle(resume, NOW, WALL)
        assert down.max_layer == 0 and down.layers.target == 0
        # Another participant's unknown track: keyroom's NOT_FOUND, paused or not.
        for disabled in (True, False):
            unknown = apply_settings(bob, settings(track_sid="TR_nope", disabled=disabled))
            assert unknown is not None
            await bob.handle(unknown, NOW, WALL)
        assert [f["code"] for f in wire.of_type("error")] == ["not_found", "not_found"]
    finally:
        await close_all(state)


def test_dynacast_becomes_livekits_subscribed_quality_update() -> None:
    t = wire.Translator(lambda sid: None)
    frame = {
        "type": "dynacast", "track_sid": "TR_1",
        "layers": [{"rid": "q", "active": True}, {"rid": "h", "active": False},
                   {"rid": "f", "active": False}],
    }  # fmt: skip
    [response] = t.translate(frame)
    update = response.subscribed_quality_update
    assert update.track_sid == "TR_1"
    assert [(q.quality, q.enabled) for q in update.subscribed_qualities] == [
        (models.LOW, True),
        (models.MEDIUM, False),
        (models.HIGH, False),
    ]


def test_a_metadata_update_is_answered_ok_with_the_participants_update() -> None:
    """The SDKs wait up to 5 s for this answer to `set_metadata`."""
    me = {"sid": "PA_a", "identity": "alice", "metadata": "hand up", "tracks": []}
    t = wire.Translator(lambda sid: me if sid == "PA_a" else None)
    t.own_sid = "PA_a"
    update = rtc.UpdateParticipantMetadata(metadata="hand up", request_id=42)
    t.requests[3] = ("update_metadata", update)
    answer, mine = t.translate({"type": "ok", "req": 3})
    assert answer.request_response.request_id == 42
    assert answer.request_response.reason == rtc.RequestResponse.OK
    assert answer.request_response.update_metadata == update
    assert mine.update.participants[0].metadata == "hand up"
    t.requests[4] = ("mute", rtc.MuteTrackRequest(sid="TR_1", muted=True))
    assert t.translate({"type": "ok", "req": 4}) == []  # other requests: no answer, as before
