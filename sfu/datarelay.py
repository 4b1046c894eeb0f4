"""The `_reliable`/`_lossy` data channels: a publisher's messages in, relayed messages out.

In: each message on the publisher PC is checked (data grant, size, envelope shape) and handed to
the room as (label, topic, payload, to). Out: the subscriber PC's channels of the same labels; a
message for a channel still opening is held (bounded) and sent when it opens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import NamedTuple

import orjson
from aiortc import RTCDataChannel

from sfu import internals
from sfu.stats import DropReason, Stats
from signaling.protocol import DATA_CHANNELS

# Data messages held per channel until the subscriber's channel opens.
MAX_HELD_DATA = 256

# A relayed message that starts with this key is one only LiveKit's SDKs can take (an RPC or
# stream packet, signaling/livekit/datapackets.py): the room puts `extra` fields first.
LIVEKIT_ONLY = b'{"livekit":'


class Envelope(NamedTuple):
    """A data message as the room relays it; `extra` holds the fields of the relayed message
    beside from/topic/payload, set by the server only: `encoding` (`base64`: the payload is
    bytes that are not UTF-8) or `livekit` (a LiveKit-only packet)."""

    topic: str
    payload: str
    to: list[str] | None
    extra: Mapping[str, str] | None = None


Deliver = Callable[[str, Envelope], None]


def read_json_envelope(raw: bytes) -> Envelope | None:
    """keyroom's `{topic, payload, to}` (PROTOCOL 2.5); None when malformed."""
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(envelope, dict):
        return None
    topic = envelope.get("topic", "")
    payload = envelope.get("payload", "")
    to = envelope.get("to")
    if (
        not isinstance(topic, str)
        or not isinstance(payload, str)
        or not (to is None or (isinstance(to, list) and all(isinstance(i, str) for i in to)))
    ):
        return None
    return Envelope(topic, payload, to)


def json_text(label: str, message: bytes) -> str | bytes | None:
    """keyroom's JSON receivers take every relayed message but LiveKit-only packets."""
    if message.startswith(LIVEKIT_ONLY):
        return None
    return message.decode()


class DataRelay:
    def __init__(
        self,
        *,
        stats: Stats,
        may_publish: Callable[[], bool],
        max_bytes: Callable[[], int],
        deliver: Deliver,
    ) -> None:
        self.stats = stats
        # The participant's current grant and the room's current limit, read per message.
        self._may_publish = may_publish
        self._max_bytes = max_bytes
        self._deliver = deliver
        self._channels: dict[str, RTCDataChannel] = {}
        self._held: dict[str, list[str | bytes]] = {}
        # The wire format of the messages, keyroom's JSON unless the participant's client
        # speaks another (signaling/livekit/datapackets.py): an incoming message's envelope,
        # and what goes out for a relayed message (None: nothing, counted).
        self.read_envelope: Callable[[bytes], Envelope | None] = read_json_envelope
        self.outgoing: Callable[[str, bytes], str | bytes | None] = json_text

    # -- in -------------------------------------------------------------------------------------

    def on_publisher_channel(self, channel: RTCDataChannel) -> None:
        if channel.label not in DATA_CHANNELS:
            self.stats.drop(DropReason.NOT_GRANTED)
            channel.close()
            return
        channel.on("message", partial(self.on_message, channel.label))

    def on_message(self, label: str, message: str | bytes) -> None:
        if not self._may_publish():
            self.stats.drop(DropReason.NOT_GRANTED)
            return
        raw = message.encode() if isinstance(message, str) else message
        if len(raw) > self._max_bytes():
            self.stats.drop(DropReason.TOO_LARGE)
            return
        envelope = self.read_envelope(raw)
        if envelope is None:
            self.stats.drop(DropReason.MALFORMED)
            return
        self._deliver(label, envelope)

    # -- out ------------------------------------------------------------------------------------

    @property
    def opened(self) -> bool:
        """Whether the subscriber PC's channels exist (created with its first offer)."""
        return bool(self._channels)

    def use_channels(self, channels: dict[str, RTCDataChannel]) -> None:
        self._channels = channels
        for channel in channels.values():
            # What the client sends on the subscriber PC is never relayed, but it is reassembled.
            # Not a closure over self: the registry is weak on the transport only while its
            # callback does not reach the transport (self holds the channels).
            internals.on_data_dropped(
                channel.transport, partial(self.stats.drop, DropReason.DATA_OVERFLOW)
            )
        for label, channel in channels.items():
            channel.on("open", partial(self._flush_held, label))

    def send(self, label: str, message: bytes) -> bool:
        """Deliver on the subscriber PC; held (bounded) while the channel is still opening."""
        channel = self._channels.get(label)
        if channel is None or channel.readyState in ("closing", "closed"):
            return False
        data = self.outgoing(label, message)
        if data is None:
            self.stats.drop(DropReason.UNREPRESENTABLE)
            return False
        if channel.readyState == "open":
            channel.send(data)
            return True
        held = self._held.setdefault(label, [])
        if len(held) >= MAX_HELD_DATA:
            self.stats.drop(DropReason.TOO_LARGE)
            return False
        held.append(data)
        return True

    def _flush_held(self, label: str) -> None:
        channel = self._channels[label]
        for message in self._held.pop(label, []):
            channel.send(message)
