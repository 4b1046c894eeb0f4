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
    """One down-track's PictureID/TL0PICIDX numbering across layer switches."""

    __slots__ = ("pid_offset", "tl0_offset", "last_pid", "last_tl0")

    def __init__(self) -> None:
        self.pid_offset = 0
        self.tl0_offset = 0
        # The last numbers sent (output space); -1 before the first picture.
        self.last_pid = -1
        self.last_tl0 = -1

    def rebase(self, data: bytes, start: int, end: int) -> None:
        """The packet at data[start:end] starts the new layer: its picture follows the last."""
        desc = read_descriptor(data, start, end)
        if desc.picture_id >= 0 and self.last_pid >= 0:
            mask = _PID_MASKS[desc.pid_long]
            self.pid_offset = (self.last_pid + 1 - desc.picture_id) & mask
        if desc.tl0 >= 0 and self.last_tl0 >= 0:
            self.tl0_offset = (self.last_tl0 + 1 - desc.tl0) & 0xFF

    def munge(self, data: bytes, start: int, end: int) -> bytes:
        """`data` with its descriptor renumbered (the same bytes when nothing changes)."""
        desc = read_descriptor(data, start, end)
        pid_offset, tl0_offset = self.pid_offset, self.tl0_offset
        out = data
        if desc.picture_id >= 0:
            mask = _PID_MASKS[desc.pid_long]
            pid = (desc.picture_id + pid_offset) & mask
            if self.last_pid < 0 or (pid - self.last_pid) & mask < (mask + 1) >> 1:
                self.last_pid = pid
            if pid_offset:
                pos = desc.pid_pos
                field = bytes((0x80 | pid >> 8, pid & 0xFF)) if desc.pid_long else bytes((pid,))
                out = out[:pos] + field + out[pos + len(field) :]
        if desc.tl0 >= 0:
            tl0 = (desc.tl0 + tl0_offset) & 0xFF
            if self.last_tl0 < 0 or (tl0 - self.last_tl0) & 0xFF < 0x80:
                self.last_tl0 = tl0
            if tl0_offset:
                pos = desc.tl0_pos
                out = out[:pos] + bytes((tl0,)) + out[pos + 1 :]
        return out
