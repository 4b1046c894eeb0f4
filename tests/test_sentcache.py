"""The load tester's publishers answer NACKs from a bounded cache (loadtest/sentcache.py)."""

from __future__ import annotations

import struct

import pytest

from loadtest.clients import FLAG_KEYFRAME, TRAILER
from loadtest.sentcache import (
    FLAG_RESENT,
    RESEND_BURST,
    RESEND_EVERY,
    RESEND_INTERVAL_NS,
    SentCache,
    resent,
)
from tests.sink_helpers import ListSink


def _packet(seq: int, flags: int = 0) -> bytes:
    header = struct.pack("!BBHII", 0x80, 96, seq, 1234, 0xABCD)
    return header + b"payload" + TRAILER.pack(7, flags, seq + 100, 123456789)


def test_a_packet_sent_is_found_by_its_sequence_number_until_a_newer_one_takes_its_slot() -> None:
    cache = SentCache(4)
    for seq in (65534, 65535, 0, 1):  # across the wrap
        cache.put(seq, _packet(seq))
    assert cache.get(65535) == _packet(65535) and cache.get(1) == _packet(1)
    cache.put(2, _packet(2))  # takes 65534's slot (2 & 3 == 65534 & 3)
    assert cache.get(65534) is None
    assert cache.get(2) == _packet(2)
    assert cache.get(6) is None  # 2's slot, another number: never the wrong packet
    assert cache.get(3) is None  # never sent


def test_the_cache_stays_bounded_whatever_is_sent() -> None:
    cache = SentCache(8)
    for seq in range(10_000):
        cache.put(seq & 0xFFFF, _packet(seq & 0xFFFF))
    assert len(cache._ring) == 8
    assert [cache.get(s) is not None for s in range(9990, 10_000)] == [False] * 2 + [True] * 8


def test_a_packet_is_resent_at_most_once_per_interval_as_libwebrtc_does_per_rtt() -> None:
    cache = SentCache(4)
    cache.put(1, _packet(1))
    assert cache.to_resend(1, now_ns=10**9) == _packet(1)
    assert cache.to_resend(1, now_ns=10**9 + RESEND_INTERVAL_NS - 1) is None  # a repeat NACK
    assert cache.to_resend(1, now_ns=10**9 + RESEND_INTERVAL_NS) == _packet(1)
    assert cache.to_resend(2, now_ns=10**9) is None  # never sent
    cache.put(5, _packet(5))  # a new packet in the slot is resent at once
    assert cache.to_resend(5, now_ns=10**9 + RESEND_INTERVAL_NS + 1) == _packet(5)


def test_resends_together_stay_within_a_share_of_what_was_sent() -> None:
    # Everything NACKed at once (a server overflowing its socket): a burst, then the share.
    cache = SentCache(1024)
    for seq in range(1000):
        cache.put(seq, _packet(seq))
    answered = sum(cache.to_resend(seq, now_ns=1) is not None for seq in range(1000))
    assert answered == RESEND_BURST
    for seq in range(1000, 1100):  # 100 more sent earn 100 / RESEND_EVERY resends
        cache.put(seq & 1023, _packet(seq & 1023))
    answered = sum(cache.to_resend(seq & 1023, now_ns=2) is not None for seq in range(1000, 1100))
    assert answered == 100 // RESEND_EVERY


def test_a_short_packet_in_a_slot_is_not_an_answer() -> None:
    cache = SentCache(4)
    cache.put(5, b"\x80\x60")
    assert cache.get(5) is None


@pytest.mark.parametrize("size", [0, 3, 6])
def test_the_size_is_a_power_of_two(size: int) -> None:
    with pytest.raises(ValueError):
        SentCache(size)


def test_a_resent_packet_is_the_same_but_for_its_trailer_flag() -> None:
    original = _packet(9, FLAG_KEYFRAME)
    again = resent(original, trailer=True)
    assert len(again) == len(original) and again[: -TRAILER.size] == original[: -TRAILER.size]
    track, flags, index, sent_ns = TRAILER.unpack_from(again, len(again) - TRAILER.size)
    assert (track, index, sent_ns) == (7, 109, 123456789)
    assert flags == FLAG_KEYFRAME | FLAG_RESENT
    # Without a trailer (servers that decode) the bytes go out unchanged.
    assert resent(original, trailer=False) is original
    assert resent(b"\x80" * 12, trailer=True) == b"\x80" * 12


def test_a_publisher_resends_what_a_nack_asks_for_and_it_still_holds() -> None:
    from collections import Counter

    from loadtest.clients import Publisher

    publisher = Publisher(object(), object(), 7, Counter())  # type: ignore[arg-type]
    sink = publisher._sink = ListSink()  # type: ignore[assignment]
    publisher._sent = SentCache(8)
    for seq in (10, 11, 12):
        publisher._sent.put(seq, _packet(seq))
    publisher._answer((11, 12, 40))
    assert sink.sent == [resent(_packet(11), True), resent(_packet(12), True)]
    assert (publisher.nacked, publisher.resent) == (3, 2)
    publisher._answer((11,))  # repeated at once: not resent again
    assert (publisher.nacked, publisher.resent) == (4, 2)
    # --ignore-nacks: counted, not answered.
    publisher._sent = None
    publisher._answer((10,))
    assert len(sink.sent) == 2 and publisher.nacked == 5
