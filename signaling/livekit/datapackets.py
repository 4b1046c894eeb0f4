"""LiveKit's `DataPacket` on the `_reliable`/`_lossy` channels, against keyroom's data relay.

In: a user packet's topic, payload and destination identities become keyroom's envelope (a
payload that is not UTF-8 travels base64, `encoding: base64`); RPC (`rpc_request`, `rpc_ack`,
`rpc_response`) and stream packets (`stream_header`, `stream_chunk`, `stream_trailer`) travel
whole, base64 in the envelope's `livekit` field, to LiveKit receivers only (keyroom's JSON
clients cannot take them: dropped, counted `unrepresentable`). The sender identity and sid a
packet claims are cleared: the room stamps the authenticated ones, and `write_packet` puts them
back. Other kinds (transcriptions, chat, SIP DTMF, metrics, encrypted packets) are dropped and
counted (`malformed`). The grant, size limit and destinations are the relay's, as for keyroom's
own clients (sfu/datarelay.py).
"""

from __future__ import annotations

import base64
import binascii

import orjson
from google.protobuf.message import DecodeError
from livekit.protocol import models

from sfu.datarelay import Envelope
from sfu.participant import Participant

KIND = {"_reliable": models.DataPacket.RELIABLE, "_lossy": models.DataPacket.LOSSY}
# Packet kinds forwarded whole between LiveKit participants (their SDKs' RPC and streams).
LIVEKIT_ONLY = frozenset(
    {"rpc_request", "rpc_ack", "rpc_response", "stream_header", "stream_chunk", "stream_trailer"}
)
BASE64 = {"encoding": "base64"}


def read_packet(raw: bytes) -> Envelope | None:
    packet = models.DataPacket()
    try:
        packet.ParseFromString(raw)
    except DecodeError:
        return None
    kind = packet.WhichOneof("value")
    to = list(packet.destination_identities)
    if kind == "user":
        user = packet.user
        to = to or list(user.destination_identities)
        try:
            return Envelope(user.topic, user.payload.decode(), to or None)
        except UnicodeDecodeError:
            return Envelope(user.topic, base64.b64encode(user.payload).decode(), to or None, BASE64)
    if kind not in LIVEKIT_ONLY:
        return None
    for claimed in ("participant_identity", "participant_sid", "destination_identities"):
        packet.ClearField(claimed)
    topic = packet.stream_header.topic if kind == "stream_header" else ""
    whole = base64.b64encode(packet.SerializeToString()).decode()
    return Envelope(topic, "", to or None, {"livekit": whole})


def write_packet(label: str, message: bytes) -> bytes | None:
    try:
        relayed = orjson.loads(message)
        identity, sid = str(relayed["from"]), str(relayed["from_sid"])
        if "livekit" in relayed:
            packet = models.DataPacket.FromString(base64.b64decode(relayed["livekit"]))
        else:
            packet = models.DataPacket(user=_user_packet(relayed, identity, sid))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error, DecodeError):
        return None
    packet.kind = KIND.get(label, models.DataPacket.RELIABLE)
    packet.participant_identity, packet.participant_sid = identity, sid
    return packet.SerializeToString()


def _user_packet(relayed: dict[str, object], identity: str, sid: str) -> models.UserPacket:
    text = str(relayed["payload"])
    binary = relayed.get("encoding") == "base64"
    payload = base64.b64decode(text, validate=True) if binary else text.encode()
    topic = str(relayed.get("topic", ""))
    return models.UserPacket(
        participant_sid=sid, participant_identity=identity, payload=payload, topic=topic
    )


def adapt(participant: Participant) -> None:
    participant.data.read_envelope = read_packet
    participant.data.outgoing = write_packet
