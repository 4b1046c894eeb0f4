"""The data-channel relay without peer connections: validation in, held messages out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sfu.datarelay import MAX_HELD_DATA, DataRelay, Envelope
from sfu.stats import DropReason, Stats


class FakeTransport:
    """A channel's SCTP transport: the relay only registers its drop counter for it."""


class FakeChannel:
    """The part of an aiortc RTCDataChannel the relay uses."""

    def __init__(self, label: str, state: str = "connecting") -> None:
        self.label = label
        self.transport = FakeTransport()
        self.readyState = state
        self.sent: list[str] = []
        self.handlers: dict[str, Callable[..., None]] = {}
        self.closed = False

    def send(self, data: str) -> None:
        self.sent.append(data)

    def close(self) -> None:
        self.closed = True

    def on(self, event: str, f: Callable[..., None]) -> None:
        self.handlers[event] = f

    def open(self) -> None:
        self.readyState = "open"
        self.handlers["open"]()


def relay(
    *, may_publish: bool = True, max_bytes: int = 1000
) -> tuple[DataRelay, list[tuple[Any, ...]]]:
    delivered: list[tuple[Any, ...]] = []
    return (
        DataRelay(
            stats=Stats(),
            may_publish=lambda: may_publish,
            max_bytes=lambda: max_bytes,
            deliver=lambda *args: delivered.append(args),
        ),
        delivered,
    )


def drops(r: DataRelay, reason: DropReason) -> int:
    return r.stats.dropped[reason.value]


def test_a_valid_envelope_is_delivered_with_its_label() -> None:
    r, delivered = relay()
    r.on_message("_reliable", '{"topic": "chat", "payload": "hi", "to": ["bob"]}')
    r.on_message("_lossy", b'{"payload": "x"}')
    assert delivered == [
        ("_reliable", Envelope("chat", "hi", ["bob"])),
        ("_lossy", Envelope("", "x", None)),
    ]


def test_invalid_messages_are_dropped_by_reason() -> None:
    r, delivered = relay(max_bytes=40)
    for bad in ("not json", "[1, 2]", '{"topic": 3}', '{"to": "bob"}', '{"to": [1]}'):
        r.on_message("_reliable", bad)
    r.on_message("_reliable", '{"payload": "' + "x" * 40 + '"}')
    assert delivered == []
    assert drops(r, DropReason.MALFORMED) == 5 and drops(r, DropReason.TOO_LARGE) == 1

    refused, nothing = relay(may_publish=False)
    refused.on_message("_reliable", '{"payload": "x"}')
    assert nothing == [] and drops(refused, DropReason.NOT_GRANTED) == 1


def test_unknown_publisher_channels_are_closed() -> None:
    r, _ = relay()
    rogue, good = FakeChannel("rogue"), FakeChannel("_reliable")
    r.on_publisher_channel(rogue)  # type: ignore[arg-type]
    r.on_publisher_channel(good)  # type: ignore[arg-type]
    assert rogue.closed and drops(r, DropReason.NOT_GRANTED) == 1
    assert not good.closed and "message" in good.handlers


def test_messages_wait_for_the_subscriber_channel_to_open() -> None:
    r, _ = relay()
    assert not r.opened and not r.send("_reliable", b"early")  # no channel yet
    reliable, lossy = FakeChannel("_reliable"), FakeChannel("_lossy", "closed")
    r.use_channels({"_reliable": reliable, "_lossy": lossy})  # type: ignore[dict-item]
    assert r.opened
    assert not r.send("_lossy", b"x")  # a closed channel takes nothing
    assert all(r.send("_reliable", f"m{i}".encode()) for i in range(MAX_HELD_DATA))
    assert not r.send("_reliable", b"one too many")
    assert drops(r, DropReason.TOO_LARGE) == 1 and reliable.sent == []
    reliable.open()
    assert reliable.sent == [f"m{i}" for i in range(MAX_HELD_DATA)]
    assert r.send("_reliable", b"now") and reliable.sent[-1] == "now"
