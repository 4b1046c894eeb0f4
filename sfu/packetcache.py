"""Recently sent packets of one down-track, for answering NACKs by plain retransmission."""

from __future__ import annotations


class PacketCache:
    """A ring of the last `size` packets, indexed by output sequence number.

    A slot remembers which sequence number it holds, so a NACK for a packet that has already been
    overwritten (or never stored) gets None rather than a different packet. The size is a power of
    two so that it divides the 16-bit sequence space: the ring keeps the last `size` packets even
    across the wrap from 65535 to 0.
    """

    __slots__ = ("_mask", "_seqs", "_data")

    def __init__(self, size: int = 512) -> None:
        if not 1 <= size <= 0x10000 or size & (size - 1):
            raise ValueError("size must be a power of two, 1..65536")
        self._mask = size - 1
        self._seqs: list[int] = [-1] * size
        self._data: list[bytes | None] = [None] * size

    def store(self, seq: int, data: bytes) -> None:
        slot = seq & self._mask
        self._seqs[slot] = seq
        self._data[slot] = data

    def get(self, seq: int) -> bytes | None:
        slot = seq & self._mask
        if self._seqs[slot] != seq:
            return None
        return self._data[slot]
