"""VP8 payload descriptor (RFC 7741 section 4.2): read and rewrite PictureID and TL0PICIDX.

A subscriber switched between simulcast layers sees pictures from encoders that number them
independently. The decoder takes a PictureID jump for lost pictures (and asks for a keyframe
again), so a down-track renumbers them: one offset per field, reset at each switch so that
the first picture of the new layer follows the last one sent. Sans-I/O: bytes in, bytes out.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

_PID_MASKS = (0x7F, 0x7FFF)
# The descriptor's first bytes with a 15-bit PictureID: X byte, extension byte, PictureID and
# TL0PICIDX, or without TL0PICIDX.
_FIELDS = struct.Struct("!BBHB")
_PID_FIELDS = struct.Struct("!BBH")


class Vp8Descriptor(NamedTuple):
    """Where the renumbered fields are, as offsets into the packet; -1 for an absent field."""

    picture_id: int
    pid_pos: int
    pid_long: bool
    tl0: int
    tl0_pos: int


NO_DESCRIPTOR = Vp8Descriptor(-1, -1, False, -1, -1)


def read_descriptor(data: bytes, start: int, end: int) -> Vp8Descriptor:
    """The PictureID and TL0PICIDX of the payload data[start:end]; NO_DESCRIPTOR when it has
    neither or is truncated (such a packet is forwarded unchanged)."""
    if end - start < 2 or not data[start] & 0x80:
        return NO_DESCRIPTOR
    ext = data[start + 1]
    pos = start + 2
    picture_id = pid_pos = -1
    pid_long = False
    if ext & 0x80:
        if pos >= end:
            return NO_DESCRIPTOR
        pid_pos = pos
        if data[pos] & 0x80:
            if pos + 2 > end:
                return NO_DESCRIPTOR
            pid_long = True
            picture_id = (data[pos] & 0x7F) << 8 | data[pos + 1]
            pos += 2
        else:
            picture_id = data[pos]
            pos += 1
    tl0 = tl0_pos = -1
    if ext & 0x40:
        if pos >= end:
            return NO_DESCRIPTOR
        tl0, tl0_pos = data[pos], pos
    return Vp8Descriptor(picture_id, pid_pos, pid_long, tl0, tl0_pos)


class Vp8Munger:
    """One down-track's PictureID/TL0PICIDX numbering across layer switches: offsets, zero until
    the first switch (the packets then pass untouched, unparsed)."""

    __slots__ = ("pid_offset", "tl0_offset", "key")

    def __init__(self) -> None:
        self.pid_offset = 0
        self.tl0_offset = 0
        # Both offsets in one int (0: nothing to renumber): down-tracks with the same key
        # send the same renumbered packet.
        self.key = 0

    def rebase(self, data: bytes, start: int, end: int, last: Vp8Descriptor) -> None:
        """The packet at data[start:end] starts the new layer: its picture follows `last`, the
        descriptor of the last media packet sent (output numbering; NO_DESCRIPTOR: none)."""
        desc = read_descriptor(data, start, end)
        if desc.picture_id >= 0 and last.picture_id >= 0:
            mask = _PID_MASKS[desc.pid_long]
            self.pid_offset = (last.picture_id + 1 - desc.picture_id) & mask
        if desc.tl0 >= 0 and last.tl0 >= 0:
            self.tl0_offset = (last.tl0 + 1 - desc.tl0) & 0xFF
        self.key = self.pid_offset << 8 | self.tl0_offset

    def patch(self, data: bytes, start: int, end: int) -> tuple[bytes, int]:
        """The payload data[start:end] renumbered, as (patch, resume): the renumbered payload
        is `patch + data[resume:]`, so the caller copies the payload once, into its packet;
        (b"", start) when there is nothing to renumber."""
        if end - start >= 5:
            # What Chromium sends: a 15-bit PictureID, with or without TL0PICIDX, read at once.
            first, ext, pid, tl0 = _FIELDS.unpack_from(data, start)
            if first & 0x80 and ext & 0x80 and pid & 0x8000:
                pid = 0x8000 | (pid + self.pid_offset) & 0x7FFF
                if ext & 0x40:
                    return _FIELDS.pack(first, ext, pid, (tl0 + self.tl0_offset) & 0xFF), start + 5
                return _PID_FIELDS.pack(first, ext, pid), start + 4
        return renumber(data, start, end, self.pid_offset, self.tl0_offset)


def renumber(
    data: bytes, start: int, end: int, pid_offset: int, tl0_offset: int
) -> tuple[bytes, int]:
    """The descriptor's first bytes (at most 5, up to TL0PICIDX) renumbered, and where the
    payload goes on unchanged; (b"", start) for a payload read_descriptor refuses. The compiled
    fan-out's `kr_vp8` (sfu/fastpath/_build.py) does the same in place."""
    if end - start < 2 or not data[start] & 0x80:
        return b"", start
    ext = data[start + 1]
    pos = start + 2
    head = bytearray(data[start : start + 5])
    if ext & 0x80:
        if pos >= end:
            return b"", start
        first = data[pos]
        if first & 0x80:
            if pos + 2 > end:
                return b"", start
            pid = ((first & 0x7F) << 8 | data[pos + 1]) + pid_offset
            head[2] = 0x80 | (pid >> 8) & 0x7F
            head[3] = pid & 0xFF
            pos += 2
        else:
            head[2] = (first + pid_offset) & 0x7F
            pos += 1
    if ext & 0x40:
        if pos >= end:
            return b"", start
        head[pos - start] = (data[pos] + tl0_offset) & 0xFF
        pos += 1
    if pos == start + 2:  # neither field
        return b"", start
    return bytes(head[: pos - start]), pos
