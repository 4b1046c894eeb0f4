"""LiveKit's `DataPacket` on the `_reliable`/`_lossy` channels, against keyroom's data relay.

In: a user packet's topic, payload and destination identities become keyroom's envelope; the
sender identity and sid the packet claims are ignored, as the room stamps the authenticated
ones. Out: the room's relayed message (`{from, from_sid, topic, payload}`) becomes a user
packet naming that sender. keyroom's payloads are text: a LiveKit payload that is not UTF-8,
and packet kinds other than user packets (RPC, streams, transcriptions), are dropped and counted.
"""

from __future__ import annotations

import orjson
from google.protobuf.message import DecodeError
from livekit.protocol import models

from sfu.datarelay import Envelope
from sfu.participant import Participant

KIND = {"_reliable": models.DataPacket.RELIABLE, "_lossy": models.DataPacket.LOSSY}


def read_packet(raw: bytes) -> Envelope | None:
    packet = models.DataPacket()
    try:
        packet.ParseFromString(raw)
    except DecodeError:
        return None
    if packet.WhichOneof("value") != "user":
        return None
    user = packet.user
    try:
        payload = user.payload.decode()
    except UnicodeDecodeError:
        return None
    to = list(packet.destination_identities) or list(user.destination_identities)
    return user.topic, payload, to or None


def write_packet(label: str, message: bytes) -> bytes | None:
    try:
        relayed = orjson.loads(message)
        identity, sid = str(relayed["from"]), str(relayed["from_sid"])
        payload = str(relayed["payload"]).encode()
        topic = str(relayed.get("topic", ""))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    packet = models.DataPacket(
        kind=KIND.get(label, models.DataPacket.RELIABLE),
        participant_identity=identity,
        participant_sid=sid,
        user=models.UserPacket(
            participant_sid=sid, participant_identity=identity, payload=payload, topic=topic
        ),
    )
    return packet.SerializeToString()


def adapt(participant: Participant) -> None:
    participant.data.read_envelope = read_packet
    participant.data.outgoing = write_packet
