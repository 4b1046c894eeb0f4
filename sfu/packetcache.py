"""Recently sent packets of one down-track, for answering NACKs by plain retransmission."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfu.fastpath.replay import Replay


class PacketCache:
    """A ring of the last `size` packets, indexed by output sequence number.

    A slot remembers which sequence number it holds, so a NACK for a packet that has already been
    overwritten (or never stored) gets None rather than a different packet. The size is a power of
    two so that it divides the 16-bit sequence space: the ring keeps the last `size` packets even
    across the wrap from 65535 to 0.

    A forwarded packet is this subscriber's rewritten header followed by the publisher's payload,
    which is the same bytes for every subscriber of the track. `store_forwarded` keeps only the
    header and a reference to the publisher's packet, so N down-tracks of one track hold the
    payloads once rather than N times (about 1.2 KB of each 1.25 KB video packet); `get` joins
    them again, which only a NACK pays for.
    """

    __slots__ = ("_mask", "_seqs", "_heads", "_sources", "_starts", "replay")

    def __init__(self, size: int = 512) -> None:
        if not 1 <= size <= 0x10000 or size & (size - 1):
            raise ValueError("size must be a power of two, 1..65536")
        self._mask = size - 1
        self._seqs: list[int] = [-1] * size
        # A slot's packet is _heads[slot] + _sources[slot][_starts[slot]:].
        self._heads: list[bytes] = [b""] * size
        self._sources: list[bytes] = [b""] * size
        self._starts: list[int] = [0] * size
        # What the compiled fan-out sent for this down-track, rebuilt on demand.
        self.replay: Replay | None = None

    def store(self, seq: int, data: bytes) -> None:
        """Keep a whole packet (its bytes are this down-track's own)."""
        slot = seq & self._mask
        self._seqs[slot] = seq
        self._heads[slot] = data
        self._sources[slot] = b""
        self._starts[slot] = 0

    def store_forwarded(self, seq: int, packet: bytes, source: bytes, payload_start: int) -> None:
        """Keep `packet`, whose bytes after its header are `source[payload_start:]` (the
        publisher's payload and padding, shared by every down-track of the track). `source` is
        kept by reference, so it must be immutable bytes, never a view of a reused buffer."""
        slot = seq & self._mask
        self._seqs[slot] = seq
        self._heads[slot] = packet[: len(packet) - len(source) + payload_start]
        self._sources[slot] = source
        self._starts[slot] = payload_start

    def get(self, seq: int) -> bytes | None:
        if self.replay is not None:
            rebuilt = self.replay.get(seq, self._seqs[seq & self._mask] == seq)
            if rebuilt is not False:
                return rebuilt  # type: ignore[return-value]
        slot = seq & self._mask
        if self._seqs[slot] != seq:
            return None
        source = self._sources[slot]
        if not source:
            return self._heads[slot]
        return self._heads[slot] + source[self._starts[slot] :]
