"""VP8 payload descriptor (RFC 7741 section 4.2): read and rewrite PictureID and TL0PICIDX.

A subscriber switched between simulcast layers sees pictures from encoders that number them
independently. The decoder takes a PictureID jump for lost pictures (and asks for a keyframe
again), so a down-track renumbers them: one offset per field, reset at each switch so that
the first picture of the new layer follows the last one sent. Sans-I/O: bytes in, bytes out.
"""

from __future__ import annotations

from typing import NamedTuple

_PID_MASKS = (0x7F, 0x7FFF)


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

    __slots__ = ("pid_offset", "tl0_offset")

    def __init__(self) -> None:
        self.pid_offset = 0
        self.tl0_offset = 0

    def rebase(self, data: bytes, start: int, end: int, last: Vp8Descriptor) -> None:
        """The packet at data[start:end] starts the new layer: its picture follows `last`, the
        descriptor of the last media packet sent (output numbering; NO_DESCRIPTOR: none)."""
        desc = read_descriptor(data, start, end)
        if desc.picture_id >= 0 and last.picture_id >= 0:
            mask = _PID_MASKS[desc.pid_long]
            self.pid_offset = (last.picture_id + 1 - desc.picture_id) & mask
        if desc.tl0 >= 0 and last.tl0 >= 0:
            self.tl0_offset = (last.tl0 + 1 - desc.tl0) & 0xFF

    def munge(self, data: bytes, start: int, end: int) -> bytes:
        """`data` with its descriptor renumbered (the same bytes when nothing changes)."""
        pid_offset, tl0_offset = self.pid_offset, self.tl0_offset
        if not (pid_offset or tl0_offset):
            return data
        desc = _descriptor_of(data, start, end)
        pieces: list[bytes | memoryview] = []
        cursor = 0
        if desc.picture_id >= 0 and pid_offset:
            pid = (desc.picture_id + pid_offset) & _PID_MASKS[desc.pid_long]
            field = bytes((0x80 | pid >> 8, pid & 0xFF)) if desc.pid_long else bytes((pid,))
            pieces += (data[: desc.pid_pos], field)
            cursor = desc.pid_pos + len(field)
        if desc.tl0 >= 0 and tl0_offset:
            pieces += (data[cursor : desc.tl0_pos], bytes(((desc.tl0 + tl0_offset) & 0xFF,)))
            cursor = desc.tl0_pos + 1
        if not pieces:
            return data
        # One copy of the payload: the tail is joined from a view, not sliced first.
        pieces.append(memoryview(data)[cursor:])
        return b"".join(pieces)


# The last packet parsed, and its descriptor: a layer's packet goes to each of its subscribers
# in turn, so it is parsed once, not once per subscriber.
_last: tuple[bytes, Vp8Descriptor] = (b"", NO_DESCRIPTOR)


def _descriptor_of(data: bytes, start: int, end: int) -> Vp8Descriptor:
    global _last
    if _last[0] is data:
        return _last[1]
    desc = read_descriptor(data, start, end)
    _last = (data, desc)
    return desc
