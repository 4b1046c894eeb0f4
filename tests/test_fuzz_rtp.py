"""Fuzzing what tests/test_rtp.py's properties leave out: well-framed RTP packets.

test_rtp.py fuzzes `parse_rtp`, `get_extension` and `RtpRewriter.rewrite` with random bytes, which
rarely make a version-2 header with a one- or two-byte extension block. Here the header is valid
and everything after it is random (CSRCs, any extension profile, element bytes, padding), so the
element walks and the rewriter's remapping see hostile blocks: `parse_rtp` raises MalformedPacket
or gives offsets inside the packet, `get_extension` returns None or bytes of the block for every
id, and `rewrite` either drops the packet (unmapped payload type) or writes one that parses with
the same payload, marker and mapped payload type.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from hypothesis import event, given
from hypothesis import strategies as st

from sfu.rtp import (
    ONE_BYTE_PROFILE,
    TWO_BYTE_PROFILE,
    MalformedPacket,
    get_extension,
    parse_any_rtp,
    parse_rtp,
)
from sfu.rtprewrite import RtpRewriter
from tests.fuzzing import fuzz


@st.composite
def framed_packets(draw: st.DrawFn) -> bytes:
    csrcs = draw(st.sampled_from([0, 0, 1, 2, 15]))
    extension = draw(st.sampled_from([True, True, True, False]))
    padding = draw(st.booleans())
    first = 0x80 | (0x20 if padding else 0) | (0x10 if extension else 0) | csrcs
    header = struct.pack(
        "!BBHII", first, draw(st.integers(0, 255)), draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 0xFFFFFFFF)), draw(st.integers(0, 0xFFFFFFFF)),
    )  # fmt: skip
    body = draw(st.binary(min_size=4 * csrcs, max_size=4 * csrcs))
    if extension:
        known = [ONE_BYTE_PROFILE, ONE_BYTE_PROFILE, TWO_BYTE_PROFILE, TWO_BYTE_PROFILE | 0xF]
        profile = draw(st.one_of(st.sampled_from(known), st.integers(0, 0xFFFF)))
        block = draw(st.binary(max_size=64))
        block += bytes(-len(block) % 4)
        words = len(block) // 4 if draw(st.integers(0, 3)) else draw(st.integers(0, 0xFFFF))
        body += struct.pack("!HH", profile, words) + block
    body += draw(st.binary(max_size=40))
    if padding:
        pad = draw(st.integers(1, 8)) if draw(st.integers(0, 3)) else draw(st.integers(0, 255))
        body += bytes(max(pad - 1, 0)) + bytes([pad])
    return header + body


def parsed(parse: Callable[[bytes], object], data: bytes) -> object:
    try:
        return parse(data)
    except MalformedPacket as error:
        return str(error)


@fuzz(500)
@given(framed_packets())
def test_the_fast_path_parses_like_the_general_one(data: bytes) -> None:
    """parse_rtp's one-unpack path for browsers' headers (0x90) against parse_any_rtp."""
    event("fast path" if data[0] == 0x90 else "general")
    assert parsed(parse_rtp, data) == parsed(parse_any_rtp, data)


REWRITERS = [
    RtpRewriter(
        out_ssrc=7, pt_map={pt: (pt + 1) % 128 for pt in range(0, 128, 2)},
        ext_map={i: i + 200 if large else i for i in range(1, 15) if i != mid_id or large},
        mid_ext_id=mid_id, mid=mid, seq_start=100, ts_start=1000,
    )
    for large, mid_id, mid in [(False, None, ""), (False, 15, "m"), (True, 9, "x" * 20),
                               (False, 3, "a-mid-longer-than-sixteen")]
]  # fmt: skip


@fuzz(500)
@given(framed_packets(), st.sampled_from(range(len(REWRITERS))))
def test_a_well_framed_packet_with_any_extension_block_is_handled(data: bytes, n: int) -> None:
    try:
        info = parse_rtp(data)
    except MalformedPacket:
        event("malformed")
        return
    event(f"extension profile {info.ext_profile and hex(info.ext_profile)}")
    assert 12 <= info.ext_start <= info.ext_end == info.payload_start
    assert info.payload_start <= info.payload_end <= len(data)
    for ext_id in range(1, 256):
        value = get_extension(data, info, ext_id)
        assert value is None or value in data[info.ext_start : info.ext_end]
    rewriter = REWRITERS[n]
    out = rewriter.rewrite(data, info)
    if info.payload_type % 2:
        assert out is None  # an unmapped payload type is dropped
        return
    assert out is not None
    out_info = parse_rtp(out)
    assert (
        out[out_info.payload_start : out_info.payload_end]
        == (data[info.payload_start : info.payload_end])
    )
    assert out_info.payload_type == info.payload_type + 1
    assert (out_info.marker, out_info.ssrc) == (info.marker, 7)
    for ext_id in range(1, 256):
        get_extension(out, out_info, ext_id)
