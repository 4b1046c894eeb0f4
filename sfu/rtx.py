"""RFC 4588 retransmission packets: unwrap a publisher's, wrap one for a subscriber.

An RTX packet is the original packet on its own SSRC, payload type and sequence space, its
payload prefixed with the original sequence number (OSN). Unwrapping gives back the packet as if
it had arrived on the media SSRC; header extensions are kept, padding is removed. A payload
shorter than the OSN is a padding-only probe (bandwidth estimation), not a retransmission.
"""

from __future__ import annotations

import struct

from sfu.rtp import RtpInfo, parse_rtp

_HEAD = struct.Struct("!BBHII")
_OSN = struct.Struct("!H")


def unwrap(data: bytes, info: RtpInfo, media_ssrc: int, media_pt: int) -> bytes | None:
    """The original packet carried by an RTX packet; None for a padding-only probe."""
    start, end = info.payload_start, info.payload_end
    if end - start < 2:
        return None
    (osn,) = _OSN.unpack_from(data, start)
    b0 = data[0] & ~0x20  # padding stripped below
    b1 = (data[1] & 0x80) | media_pt
    return (
        _HEAD.pack(b0, b1, osn, info.timestamp, media_ssrc) + data[12:start] + data[start + 2 : end]
    )


def wrap(packet: bytes, info: RtpInfo, rtx_ssrc: int, rtx_pt: int, rtx_seq: int) -> bytes:
    """`packet` (parsed as `info`) as an RTX packet with sequence number `rtx_seq`."""
    b0 = packet[0] & ~0x20
    b1 = (packet[1] & 0x80) | rtx_pt
    start = info.payload_start
    return (
        _HEAD.pack(b0, b1, rtx_seq & 0xFFFF, info.timestamp, rtx_ssrc)
        + packet[12:start]
        + _OSN.pack(info.sequence)
        + packet[start : info.payload_end]
    )


class RtxStream:
    """The RTX stream of one down-track (RFC 4588 session multiplexing): its SSRC, payload type
    and its own sequence numbers, one per retransmission."""

    __slots__ = ("ssrc", "payload_type", "_seq")

    def __init__(self, ssrc: int, payload_type: int, seq_start: int) -> None:
        self.ssrc = ssrc
        self.payload_type = payload_type
        self._seq = seq_start & 0xFFFF

    @property
    def stream(self) -> tuple[int, int]:
        """(SSRC, payload type)."""
        return self.ssrc, self.payload_type

    def take_sequence(self) -> int:
        """A sequence number of the RTX stream for a packet that is no retransmission (padding)."""
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        return seq

    def wrap(self, packet: bytes) -> bytes:
        """A cached packet of the down-track (the rewriter's well-formed output) as RTX."""
        out = wrap(packet, parse_rtp(packet), self.ssrc, self.payload_type, self._seq)
        self._seq = (self._seq + 1) & 0xFFFF
        return out

    @property
    def next_seq(self) -> int:
        return self._seq

    def skip(self, count: int) -> None:
        """Leave `count` sequence numbers unused (a fan-out worker's stream taken back)."""
        self._seq = (self._seq + count) & 0xFFFF
