"""LiveKit wire units without sockets: connection quality updates (signaling/livekit/
connquality.py), data packets beyond UTF-8 user text (signaling/livekit/datapackets.py)."""

from __future__ import annotations

import base64

import orjson
import pytest
from livekit.protocol import models

from sfu.datarelay import LIVEKIT_ONLY, DataRelay, Envelope, json_text, read_json_envelope
from sfu.stats import DropReason, Stats
from signaling.livekit import datapackets
from signaling.livekit.connquality import QualityReport, quality_update
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
