"""A publisher's recently sent RTP packets, kept to answer NACKs as a browser does.

libwebrtc keeps the packets it sent over the last second or so and resends one when a NACK asks
for it (on RTX where negotiated, else as-is). Without that, the load tester's publishers left
every packet the server lost on its way in unrepaired: the server NACKed it again and again
(docs/benchmarks.md: 84-134k uplink NACKs per run) and ended in a keyframe request, so one drop
became a keyframe burst. The cache is a fixed ring indexed by sequence number: one list store
per packet sent, no allocation, bounded by `size` whatever the NACKs ask.

Resends are bounded too, as libwebrtc bounds them (once per round trip per packet, and a
retransmission rate limiter under a send rate that its loss-based estimate cuts when loss is
high): a packet is resent at most once per RESEND_INTERVAL_NS, and all resends together at most
one per RESEND_EVERY packets sent (a token bucket of RESEND_BURST resends). Unbounded, a server that
overflows its socket gets every drop back as one more input packet, overflows more, and the
load collapses (docs/benchmarks.md, "Receive-to-send tail, attributed").
"""

from __future__ import annotations

# Trailer flag (loadtest/clients.py TRAILER "!HBIQ": track, flags, index, send time): this
# copy answers a NACK. Subscribers count it but take no latency sample from it (its send time is
# the original's: it measures the repair, not what the server adds).
FLAG_RESENT = 2
# The trailer's flags byte, counted from the packet's end.
_FLAGS_FROM_END = 13
# ~3.4 s of a 1.5 Mbit/s video track (~150 packets/s); a power of two.
DEFAULT_SIZE = 512
# libwebrtc resends a packet at most once per round trip (its RTT estimate); the load tester
# keeps none, so a repeat NACK within this (ns) of the last resend is not answered again. Else,
# with the server's socket queue deep, its repeats arrive before the first resend is read and
# every repeat adds a duplicate (dropped by the server's SRTP replay check) to the overload.
RESEND_INTERVAL_NS = 100_000_000
# One resend earned per this many packets sent (10 %), and how many may go at once (a keyframe
# lost whole is ~28 packets).
RESEND_EVERY = 10
RESEND_BURST = 64


class SentCache:
    """The last `size` packets sent, by RTP sequence number (pure, no I/O)."""

    __slots__ = ("_ring", "_resent_at", "_mask", "_tokens")

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1 or size & (size - 1):
            raise ValueError("the cache size is a power of two")
        self._ring: list[bytes | None] = [None] * size
        self._resent_at = [0] * size  # ns of the slot's packet's last resend (0: never)
        self._mask = size - 1
        self._tokens = RESEND_BURST * RESEND_EVERY  # in packets sent

    def put(self, seq: int, packet: bytes) -> None:
        slot = seq & self._mask
        self._ring[slot] = packet
        self._resent_at[slot] = 0
        self._tokens = min(RESEND_BURST * RESEND_EVERY, self._tokens + 1)

    def to_resend(self, seq: int, now_ns: int) -> bytes | None:
        """The packet to resend for a NACK of `seq` at `now_ns`: None if it is gone, was
        resent less than RESEND_INTERVAL_NS ago, or the resend budget is spent."""
        packet = self.get(seq)
        if packet is None or self._tokens < RESEND_EVERY:
            return None
        slot = seq & self._mask
        last = self._resent_at[slot]
        if last and now_ns - last < RESEND_INTERVAL_NS:
            return None
        self._resent_at[slot] = now_ns
        self._tokens -= RESEND_EVERY
        return packet

    def get(self, seq: int) -> bytes | None:
        """The packet sent with `seq` if it is still here (a newer one may have taken its slot:
        the sequence number in the stored header says)."""
        packet = self._ring[seq & self._mask]
        if packet is None or len(packet) < 12 or int.from_bytes(packet[2:4], "big") != seq:
            return None
        return packet


def resent(packet: bytes, trailer: bool) -> bytes:
    """`packet` as resent: the same bytes, its trailer (if any) flagged FLAG_RESENT."""
    if not trailer or len(packet) < 12 + _FLAGS_FROM_END:
        return packet
    at = len(packet) - _FLAGS_FROM_END
    return packet[:at] + bytes((packet[at] | FLAG_RESENT,)) + packet[at + 1 :]
