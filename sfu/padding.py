"""Padding-only RTP packets: the bytes keyroom adds to a subscriber's video to probe its link.

A browser's REMB follows what it receives (at most about 1.5x), so a subscriber held on a low
layer never shows that its link would carry more. While congestion control probes
(sfu/congestion.py), each media packet of one video down-track is followed by padding packets
that copy its header, extensions included: the same abs-send-time, so the receiver's delay
estimator sees them as sent together with it, and the next sequence numbers, so nothing looks
lost. They carry no media (RFC 3550 padding: P bit, last byte = padding length).
"""

from __future__ import annotations

import struct

from sfu.rtp import RtpInfo

# The most padding one packet can carry (the length byte counts itself).
MAX_PADDING = 255
_SEQ = struct.Struct("!H")
_SSRC = struct.Struct("!I")


def padding_packet(
    sent: bytes, info: RtpInfo, sequence: int, rtx: tuple[int, int] | None = None
) -> bytes:
    """A padding-only packet after `sent` (parsed as `info`): its header and extensions, marker
    cleared, sequence number `sequence`, MAX_PADDING bytes of padding. With `rtx` (SSRC,
    payload type): on the RTX stream instead, as libwebrtc probes (a padding-only RTX packet is
    no retransmission, and one lost is never NACKed)."""
    header = bytearray(sent[: info.payload_start])
    header[0] |= 0x20
    header[1] &= 0x7F
    _SEQ.pack_into(header, 2, sequence & 0xFFFF)
    if rtx is not None:
        _SSRC.pack_into(header, 8, rtx[0])
        header[1] = rtx[1] & 0x7F
    return bytes(header) + bytes(MAX_PADDING - 1) + bytes((MAX_PADDING,))
