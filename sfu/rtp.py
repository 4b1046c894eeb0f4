"""Sans-I/O RTP header parsing (RFC 3550, RFC 8285); per-subscriber rewriting: sfu/rtprewrite.py.

The forwarder never decodes media: it parses the fixed header and locates the extension block and
payload by offset. This runs once per input packet, so it avoids per-packet objects beyond the
parse result.
"""

from __future__ import annotations

import struct
from typing import NamedTuple


class MalformedPacket(ValueError):
    """The bytes are not a well-formed RTP or RTCP packet."""


_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
_HEADER_EXT = struct.Struct("!BBHIIHH")

ONE_BYTE_PROFILE = 0xBEDE
# RFC 8285 two-byte form: 0x100 followed by 4 "appbits" that carry no meaning for us.
TWO_BYTE_MASK = 0xFFF0
TWO_BYTE_PROFILE = 0x1000


class RtpInfo(NamedTuple):
    """Where things are in one RTP packet; offsets index the packet bytes."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    csrc_count: int
    ext_profile: int | None
    ext_start: int
    ext_end: int
    payload_start: int
    payload_end: int


# NamedTuple's generated __new__ is a Python function; tuple.__new__ skips that frame.
_new_info = tuple.__new__


def parse_rtp(data: bytes) -> RtpInfo:
    """Parse the RTP header of `data`; raises MalformedPacket and nothing else.

    Extension elements are not validated here (see get_extension and sfu/rtprewrite.py);
    without an extension block ext_start == ext_end == payload_start.
    """
    size = len(data)
    if size >= 16 and data[0] == 0x90:
        # What browsers send: version 2, an extension block, no CSRC, no padding; one unpack.
        _, b1, seq, ts, ssrc, ext_profile, words = _HEADER_EXT.unpack_from(data)
        end = 16 + 4 * words
        if end <= size:
            fields = (b1 & 0x7F, seq, ts, ssrc, b1 > 0x7F, 0, ext_profile, 16, end, end, size)
            return _new_info(RtpInfo, fields)
    return parse_any_rtp(data)


def parse_any_rtp(data: bytes) -> RtpInfo:
    """parse_rtp without its fast path: any header layout (the fuzz tests compare both)."""
    size = len(data)
    if size < 12:
        raise MalformedPacket("RTP packet shorter than 12 bytes")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
    if b0 >> 6 != 2:
        raise MalformedPacket("RTP version is not 2")
    cc = b0 & 0x0F
    pos = 12 + 4 * cc
    if pos > size:
        raise MalformedPacket("RTP CSRC list overruns the packet")
    profile: int | None = None
    ext_start = ext_end = pos
    if b0 & 0x10:
        if pos + 4 > size:
            raise MalformedPacket("RTP extension header overruns the packet")
        profile, words = _EXT_HEADER.unpack_from(data, pos)
        ext_start = pos + 4
        ext_end = pos = ext_start + 4 * words
        if pos > size:
            raise MalformedPacket("RTP extension block overruns the packet")
    end = size
    if b0 & 0x20:
        pad = data[-1]
        if pad == 0 or pad > size - pos:
            raise MalformedPacket("RTP padding length is invalid")
        end = size - pad
    return _new_info(
        RtpInfo,
        (b1 & 0x7F, seq, ts, ssrc, b1 > 0x7F, cc, profile, ext_start, ext_end, pos, end),
    )


def get_extension(data: bytes, info: RtpInfo, ext_id: int) -> bytes | None:
    """Value of the first header-extension element with `ext_id`, or None if absent.

    Like libwebrtc, a truncated element (or one-byte id 15) ends the walk instead of failing the
    packet: the elements before it are still found.
    """
    profile = info.ext_profile
    if profile == ONE_BYTE_PROFILE:
        return _one_byte_element(data, info.ext_start, info.ext_end, ext_id)
    if profile is not None and profile & TWO_BYTE_MASK == TWO_BYTE_PROFILE:
        return _two_byte_element(data, info.ext_start, info.ext_end, ext_id)
    return None


def _one_byte_element(data: bytes, pos: int, end: int, ext_id: int) -> bytes | None:
    while pos < end:
        b = data[pos]
        if b == 0:
            pos += 1
            continue
        xid = b >> 4
        if xid == 15:
            return None
        start = pos + 1
        pos = start + (b & 0x0F) + 1
        if pos > end:
            return None
        if xid == ext_id:
            return data[start:pos]
    return None


def _two_byte_element(data: bytes, pos: int, end: int, ext_id: int) -> bytes | None:
    while pos < end:
        xid = data[pos]
        if xid == 0:
            pos += 1
            continue
        if pos + 2 > end:
            return None
        start = pos + 2
        pos = start + data[pos + 1]
        if pos > end:
            return None
        if xid == ext_id:
            return data[start:pos]
    return None
