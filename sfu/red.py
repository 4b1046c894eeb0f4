"""RFC 2198 redundant audio (RED) payloads: read, retarget and unwrap them (sans-I/O, bytes in,
bytes out).

A RED payload is a chain of block headers, then the blocks in the same order. Every header but
the last is 4 bytes: F=1, the block's payload type (7 bits), its timestamp offset back from
the packet's (14 bits) and its length (10 bits). The last is 1 byte: F=0 and the payload type of
the primary block, which takes the rest of the payload. Chromium sends Opus this way
(`red/48000/2` with `a=fmtp:<red> <opus>/<opus>`): each packet repeats the previous frame(s),
so a subscriber's decoder rebuilds a lost packet from the next one.

keyroom forwards RED as it came to subscribers that negotiated it (payload types retargeted:
the block headers name the subscriber's Opus payload type) and unwraps it for the others: the
primary block alone, same sequence number and timestamp, so one RED packet is one Opus packet
and their sequence stays continuous.
"""

from __future__ import annotations

from typing import NamedTuple

from sfu.rtp import RtpInfo

# More blocks than any sender needs (Chromium sends one or two redundant frames): a header chain
# longer than this is refused rather than walked.
MAX_BLOCKS = 8
_HEADER = 4  # bytes of a redundant block's header


class RedPayload(NamedTuple):
    """A RED payload read: where the headers end (the first block starts), the redundant
    blocks' (payload type, timestamp offset, length), and the primary block's payload type and
    offset, all offsets absolute in the packet."""

    blocks_start: int
    redundant: tuple[tuple[int, int, int], ...]
    primary_pt: int
    primary_start: int


def read_red(data: bytes, start: int, end: int) -> RedPayload | None:
    """The RED payload `data[start:end]`; None when malformed: truncated headers, blocks longer
    than the payload, or more than MAX_BLOCKS blocks."""
    pos = start
    redundant: list[tuple[int, int, int]] = []
    while True:
        if pos >= end:
            return None  # no final header
        first = data[pos]
        if not first & 0x80:
            break
        if len(redundant) + 1 >= MAX_BLOCKS or pos + _HEADER > end:
            return None
        word = int.from_bytes(data[pos + 1 : pos + _HEADER], "big")
        redundant.append((first & 0x7F, word >> 10, word & 0x3FF))
        pos += _HEADER
    blocks_start = pos + 1
    primary_start = blocks_start + sum(length for _, _, length in redundant)
    if primary_start > end:
        return None  # the blocks claim more than the payload holds
    return RedPayload(blocks_start, tuple(redundant), first & 0x7F, primary_start)


def unwrap(data: bytes, info: RtpInfo, red: RedPayload) -> bytes:
    """The primary block as a packet of its own: the RTP header of `data` (padding bit cleared,
    the padding is not copied) with the block's payload type, marker kept."""
    start = info.payload_start
    b0 = data[0] & 0xDF
    b1 = (data[1] & 0x80) | red.primary_pt
    return bytes((b0, b1)) + data[2:start] + data[red.primary_start : info.payload_end]


def retarget(data: bytes, info: RtpInfo, red: RedPayload, pt_map: dict[int, int]) -> bytes:
    """The block headers of `red` with each payload type mapped by `pt_map` (others kept): the
    patch that replaces `data[info.payload_start:red.blocks_start]` (RtpRewriter.rewrite)."""
    headers = bytearray(data[info.payload_start : red.blocks_start])
    for pos in range(0, len(headers), _HEADER):
        pt = headers[pos] & 0x7F
        headers[pos] = (headers[pos] & 0x80) | pt_map.get(pt, pt)
    return bytes(headers)


def wrap(primary_pt: int, primary: bytes, redundant: list[tuple[int, int, bytes]]) -> bytes:
    """A RED payload of `redundant` (payload type, timestamp offset, block) then `primary`, as
    a sender builds it (the Python client's tests and benchmarks)."""
    headers = bytearray()
    for pt, offset, block in redundant:
        if len(block) > 0x3FF or not 0 <= offset < 1 << 14:
            raise ValueError("a RED block is at most 1023 bytes, 16383 timestamp units back")
        headers.append(0x80 | pt)
        headers += ((offset << 10) | len(block)).to_bytes(3, "big")
    headers.append(primary_pt)
    return bytes(headers) + b"".join(block for _, _, block in redundant) + primary
