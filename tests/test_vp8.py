"""VP8 PictureID/TL0PICIDX renumbering (sfu/vp8.py) against a plain reference built on
`read_descriptor`, for descriptors of every shape (tests/test_simulcast.py covers its use
across switches and its sharing between down-tracks)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sfu.vp8 import Vp8Munger, read_descriptor
from tests.fuzzing import fuzz


def munger(pid_offset: int, tl0_offset: int) -> Vp8Munger:
    made = Vp8Munger()
    made.pid_offset, made.tl0_offset = pid_offset, tl0_offset
    made.key = pid_offset << 8 | tl0_offset
    return made


def reference(data: bytes, start: int, pid_offset: int, tl0_offset: int) -> bytes:
    """data[start:] renumbered the obvious way: each field read, offset and written back."""
    desc = read_descriptor(data, start, len(data))
    out = bytearray(data)
    if desc.picture_id >= 0:
        if desc.pid_long:
            pid = (desc.picture_id + pid_offset) & 0x7FFF
            out[desc.pid_pos : desc.pid_pos + 2] = bytes((0x80 | pid >> 8, pid & 0xFF))
        else:
            out[desc.pid_pos] = (desc.picture_id + pid_offset) & 0x7F
    if desc.tl0 >= 0:
        out[desc.tl0_pos] = (desc.tl0 + tl0_offset) & 0xFF
    return bytes(out[start:])


def patched(made: Vp8Munger, data: bytes, start: int) -> bytes:
    patch, resume = made.patch(data, start, len(data))
    assert start <= resume <= len(data) and len(patch) == resume - start
    return patch + data[resume:]


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """A VP8 payload behind some header bytes: descriptors of every shape, and truncated ones."""
    first = draw(st.sampled_from([0x90, 0x80, 0x10, 0x00])) | draw(st.integers(0, 0x0F))
    ext = draw(st.integers(0, 0xFF))
    tail = draw(st.binary(min_size=0, max_size=8))
    return draw(st.binary(min_size=0, max_size=3)) + bytes((first, ext)) + tail


@fuzz(300)
@given(
    payloads(),
    st.integers(0, 0x7FFF),
    st.integers(0, 0xFF),
    st.integers(0, 3),
)
def test_the_patch_renumbers_exactly_like_the_reference(
    data: bytes, pid_offset: int, tl0_offset: int, cut: int
) -> None:
    start = min(cut, len(data))
    expected = reference(data, start, pid_offset, tl0_offset)
    assert patched(munger(pid_offset, tl0_offset), data, start) == expected


def test_a_packet_with_nothing_to_renumber_gets_no_patch() -> None:
    packet = bytes((0x90, 0x00, 0x00)) + b"frame"  # no PictureID, no TL0PICIDX
    assert munger(100, 1).patch(packet, 0, len(packet)) == (b"", 0)
    long_pid = bytes((0x90, 0xC0, 0x80 | 0x12, 0x34, 7, 0x00)) + b"frame"
    assert munger(100, 1).patch(long_pid, 0, len(long_pid)) == (
        bytes((0x90, 0xC0, 0x92, 0x98, 8)),
        5,
    )
