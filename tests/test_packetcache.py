"""sfu.packetcache: the per-down-track retransmission ring."""

from __future__ import annotations

import pytest

from sfu.packetcache import PacketCache


def test_get_returns_stored_packet() -> None:
    cache = PacketCache(8)
    cache.store(5, b"five")
    cache.store(6, b"six")
    assert cache.get(5) == b"five"
    assert cache.get(6) == b"six"
    assert cache.get(7) is None


def test_overwritten_slot_does_not_answer_for_old_seq() -> None:
    cache = PacketCache(8)
    for seq in range(20):
        cache.store(seq, bytes([seq]))
    assert [cache.get(seq) for seq in range(12)] == [None] * 12
    assert [cache.get(seq) for seq in range(12, 20)] == [bytes([s]) for s in range(12, 20)]


def test_sequence_wraparound() -> None:
    cache = PacketCache(512)
    seqs = [(65000 + i) & 0xFFFF for i in range(1000)]
    for seq in seqs:
        cache.store(seq, seq.to_bytes(2, "big"))
    assert all(cache.get(seq) is None for seq in seqs[:488])
    assert all(cache.get(seq) == seq.to_bytes(2, "big") for seq in seqs[488:])


def test_same_slot_other_cycle_is_none() -> None:
    cache = PacketCache(512)
    cache.store(3, b"a")
    assert cache.get(3 + 512) is None
    assert cache.get(3) == b"a"


def test_default_size_and_validation() -> None:
    cache = PacketCache()
    for seq in range(600):
        cache.store(seq, b"p")
    assert cache.get(87) is None
    assert cache.get(88) == b"p"
    with pytest.raises(ValueError):
        PacketCache(0)
    with pytest.raises(ValueError):
        PacketCache(65537)
    with pytest.raises(ValueError):
        PacketCache(100)  # would not divide the sequence space


def test_forwarded_packet_is_rebuilt_from_its_header_and_the_shared_source() -> None:
    source = b"\x80\x60\x00\x07" + bytes(8) + b"payload" * 100  # 12-byte header, then payload
    packet = b"\x90\x61\x12\x34" + bytes(16) + source[12:]  # another header of 20 bytes
    caches = [PacketCache(8), PacketCache(8)]
    for cache in caches:
        cache.store_forwarded(0x1234, packet, source, 12)
        assert cache.get(0x1234) == packet
        assert cache.get(0x1234 + 8) is None
    # Each ring holds the 20-byte header and the one source object, never a copy of its payload.
    assert all(c._heads[0x1234 & 7] == packet[:20] for c in caches)
    assert all(c._sources[0x1234 & 7] is source for c in caches)


def test_whole_and_forwarded_packets_overwrite_each_other() -> None:
    cache = PacketCache(4)
    source = bytes(12) + b"abc"
    cache.store_forwarded(1, b"H" * 16 + b"abc", source, 12)
    cache.store(5, b"whole")
    assert cache.get(1) is None
    assert cache.get(5) == b"whole"
    cache.store_forwarded(9, b"h" * 12 + b"abc", source, 12)
    assert cache.get(5) is None
    assert cache.get(9) == b"h" * 12 + b"abc"
