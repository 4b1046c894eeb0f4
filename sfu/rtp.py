"""Sans-I/O RTP header parsing and per-subscriber rewriting (RFC 3550, RFC 8285).

The forwarder never decodes media: it parses the fixed header and locates the extension block and
payload by offset, then builds each subscriber's packet from precomputed pieces plus a slice of the
publisher's bytes. Everything here runs once per packet (parse) or once per packet per subscriber
(rewrite), so it avoids per-packet objects beyond the output itself.
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
_TWO_BYTE_MASK = 0xFFF0
TWO_BYTE_PROFILE = 0x1000

# One-byte bytes objects, so building extension element headers allocates nothing.
_BYTE = [bytes((i,)) for i in range(256)]

# Zero bytes that pad an extension block of length n to a 32-bit boundary: _PADS[n & 3].
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")

_SEQ_MASK = 0xFFFF
_TS_MASK = 0xFFFFFFFF


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

    Extension elements are not validated here (see get_extension / RtpRewriter.rewrite); without
    an extension block ext_start == ext_end == payload_start.
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
    if profile is not None and profile & _TWO_BYTE_MASK == TWO_BYTE_PROFILE:
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


def _check_ext_id(ext_id: int, what: str) -> None:
    if not 1 <= ext_id <= 255:
        raise ValueError(f"{what} {ext_id} is not a valid header extension id (1..255)")


def _check_maps(out_ssrc: int, pt_map: dict[int, int], ext_map: dict[int, int]) -> None:
    if not 0 <= out_ssrc <= _TS_MASK:
        raise ValueError(f"out_ssrc {out_ssrc} is not a 32-bit value")
    for in_pt, out_pt in pt_map.items():
        if not (0 <= in_pt <= 127 and 0 <= out_pt <= 127):
            raise ValueError(f"payload type mapping {in_pt} -> {out_pt} is out of 0..127")
    for in_id, out_id in ext_map.items():
        _check_ext_id(in_id, "input extension id")
        _check_ext_id(out_id, "output extension id")
    if len(set(ext_map.values())) != len(ext_map):
        raise ValueError("ext_map maps two input ids to the same output id")


def _mid_elements(
    mid_ext_id: int | None, mid: str, ext_map: dict[int, int]
) -> tuple[bytes | None, bytes]:
    """The MID element in the one-byte form (None: the MID alone forces the two-byte form) and in
    the two-byte form; (None, b"") without a MID extension."""
    if mid_ext_id is None:
        return None, b""
    _check_ext_id(mid_ext_id, "mid_ext_id")
    if mid_ext_id in ext_map.values():
        raise ValueError(f"mid_ext_id {mid_ext_id} is also an output id in ext_map")
    value = mid.encode("utf-8")
    if not 1 <= len(value) <= 255:
        raise ValueError("mid must encode to 1..255 bytes")
    one = None
    if mid_ext_id <= 14 and len(value) <= 16:
        one = _BYTE[(mid_ext_id << 4) | (len(value) - 1)] + value
    return one, bytes((mid_ext_id, len(value))) + value


def _one_byte_map(ext_map: dict[int, int], mid_fits: bool) -> list[int] | None:
    """in id -> (out id << 4), 0 = drop; only when every output element is sure to fit the
    one-byte form (one-byte input values are 1..16 bytes), enabling rewrite's fast path."""
    if not mid_fits or any(out_id > 14 for out_id in ext_map.values()):
        return None
    one_map = [0] * 16
    for in_id, out_id in ext_map.items():
        if in_id <= 14:
            one_map[in_id] = out_id << 4
    return one_map


class RtpRewriter:
    """Turns a publisher's RTP packets into one subscriber down-track's packets.

    Output sequence number and timestamp are the input's plus fixed offsets (mod 2^16 / 2^32), set
    by the first rewritten packet so that it comes out as (seq_start, ts_start). Offsets rather than
    counters keep reordered and repeated input consistent, and a later source switch only has to
    recompute the offsets from last_out_seq / last_out_ts.
    """

    __slots__ = (
        "_ssrc",
        "_pt_map",
        "_ext_map",
        "_mid_one",
        "_mid_two",
        "_mid_block",
        "_mid_tail",
        "_one_map",
        "_seq_start",
        "_ts_start",
        "_seq_offset",
        "_ts_offset",
        "_started",
        "last_out_seq",
        "last_out_ts",
        "packets",
        "octets",
    )

    def __init__(
        self,
        *,
        out_ssrc: int,
        pt_map: dict[int, int],
        ext_map: dict[int, int],
        mid_ext_id: int | None,
        mid: str,
        seq_start: int,
        ts_start: int,
    ) -> None:
        _check_maps(out_ssrc, pt_map, ext_map)
        self._mid_one, self._mid_two = _mid_elements(mid_ext_id, mid, ext_map)
        self._mid_tail = self._mid_one or b""  # what rewrite's fast path appends
        # The output block when no input element survives: the MID alone, or nothing.
        self._mid_block: tuple[int, bytes] = (0, b"")
        if self._mid_one is not None:
            self._mid_block = (ONE_BYTE_PROFILE, self._mid_one + _PADS[len(self._mid_one) & 3])
        elif self._mid_two:
            self._mid_block = (TWO_BYTE_PROFILE, self._mid_two + _PADS[len(self._mid_two) & 3])
        self._one_map = _one_byte_map(ext_map, self._mid_one is not None or not self._mid_two)
        self._ssrc = out_ssrc
        self._pt_map = dict(pt_map)
        self._ext_map = dict(ext_map)
        self._seq_start = seq_start & _SEQ_MASK
        self._ts_start = ts_start & _TS_MASK
        self._seq_offset = 0
        self._ts_offset = 0
        self._started = False
        self.last_out_seq = self._seq_start
        self.last_out_ts = self._ts_start
        self.packets = 0
        self.octets = 0

    @property
    def started(self) -> bool:
        """Whether the first packet has fixed the sequence/timestamp offsets."""
        return self._started

    def _start(self, in_seq: int, in_ts: int) -> None:
        """The first packet fixes the offsets: it comes out as (seq_start, ts_start)."""
        self._seq_offset = (self._seq_start - in_seq) & _SEQ_MASK
        self._ts_offset = (self._ts_start - in_ts) & _TS_MASK
        self._started = True

    def rebase(self, in_seq: int, in_ts: int, ts_step: int | None) -> None:
        """Continue from the last packet sent, so skipped input leaves no sequence gap: `in_seq`
        comes out as last_out_seq + 1; with `ts_step` (a new source), `in_ts` comes out as
        last_out_ts + ts_step, else the timestamp offset stays. Before any packet: a start."""
        if not self._started:
            self._start(in_seq, in_ts)
            return
        self._seq_offset = (self.last_out_seq + 1 - in_seq) & _SEQ_MASK
        if ts_step is not None:
            self._ts_offset = (self.last_out_ts + ts_step - in_ts) & _TS_MASK

    def take_sequence(self) -> int:
        """A sequence number for a packet keyroom adds (padding): the next one, with the input's
        later packets moved up by one."""
        self._seq_offset = (self._seq_offset + 1) & _SEQ_MASK
        self.last_out_seq = (self.last_out_seq + 1) & _SEQ_MASK
        return self.last_out_seq

    def translate_timestamp(self, in_ts: int) -> int:
        """Map a publisher RTP timestamp (e.g. from its Sender Report) onto this down-track."""
        if not self._started:
            raise RuntimeError("no packet rewritten yet, so there is no timestamp offset")
        return (in_ts + self._ts_offset) & _TS_MASK

    def rewrite(
        self, data: bytes, info: RtpInfo, patch: bytes = b"", resume: int = 0
    ) -> bytes | None:
        """The packet as this subscriber receives it (None: payload type not mapped); `info` is
        parse_rtp(data). With `resume`, the payload is `patch + data[resume:]` (sfu/vp8.py)."""
        pt, in_seq, in_ts, _, marker, _, profile, pos, end, payload_start, payload_end = info
        out_pt = self._pt_map.get(pt)
        if out_pt is None:
            return None
        if not self._started:
            self._start(in_seq, in_ts)
        seq = (in_seq + self._seq_offset) & _SEQ_MASK
        ts = (in_ts + self._ts_offset) & _TS_MASK
        if (seq - self.last_out_seq) & _SEQ_MASK < 0x8000:  # only a newer packet moves it
            self.last_out_seq = seq
            self.last_out_ts = ts
        self.packets += 1
        self.octets += payload_end - payload_start
        b0 = 0xA0 if payload_end < len(data) else 0x80  # keep P: the padding is copied
        b1 = 0x80 | out_pt if marker else out_pt
        body: bytes | bytearray
        if profile == ONE_BYTE_PROFILE and (one_map := self._one_map) is not None:
            # Fast path (browsers send one-byte blocks): only each element's id nibble changes.
            body = bytearray()
            while pos < end:
                b = data[pos]
                if b == 0:
                    pos += 1
                    continue
                if b >= 0xF0:  # id 15: stop processing the block (RFC 8285)
                    break
                start = pos + 1
                pos = start + (b & 0x0F) + 1
                if pos > end:
                    break
                out = one_map[b >> 4]
                if out:
                    body.append(out | (b & 0x0F))
                    body += data[start:pos]
            body += self._mid_tail
            body += _PADS[len(body) & 3]
        elif profile is not None:
            profile, body = self._remap_extensions(data, info)
        else:
            profile, body = self._mid_block
        tail = data[resume or payload_start :]
        if not body:
            return _HEADER.pack(b0, b1, seq, ts, self._ssrc) + patch + tail
        head = _HEADER_EXT.pack(b0 | 0x10, b1, seq, ts, self._ssrc, profile, len(body) >> 2)
        return head + body + patch + tail

    # One loop over the elements, per packet on the remap path: split into helpers, it would
    # pay a call per element.
    def _remap_extensions(self, data: bytes, info: RtpInfo) -> tuple[int, bytes]:  # noqa: C901
        """(profile, padded elements) for any input block; b"" when no element is left."""
        ext_map = self._ext_map
        # (output id, value start, value end) of each kept element, in input order.
        kept: list[tuple[int, int, int]] = []
        one_byte = self._mid_one is not None or not self._mid_two
        profile = info.ext_profile
        pos = info.ext_start
        end = info.ext_end
        if profile == ONE_BYTE_PROFILE:
            while pos < end:
                b = data[pos]
                if b == 0:
                    pos += 1
                    continue
                if b >= 0xF0:  # id 15: stop processing the block (RFC 8285)
                    break
                start = pos + 1
                pos = start + (b & 0x0F) + 1
                if pos > end:
                    break
                out_id = ext_map.get(b >> 4)
                if out_id is not None:
                    kept.append((out_id, start, pos))
                    if out_id > 14:
                        one_byte = False
        elif profile is not None and profile & _TWO_BYTE_MASK == TWO_BYTE_PROFILE:
            while pos < end:
                xid = data[pos]
                if xid == 0:
                    pos += 1
                    continue
                if pos + 2 > end:
                    break
                length = data[pos + 1]
                start = pos + 2
                pos = start + length
                if pos > end:
                    break
                out_id = ext_map.get(xid)
                if out_id is not None:
                    kept.append((out_id, start, pos))
                    if out_id > 14 or not 1 <= length <= 16:
                        one_byte = False
        # Any other profile holds no RFC 8285 elements we could map: it is dropped.
        if not kept:
            return self._mid_block
        return self._encode(data, kept, one_byte)

    def _encode(
        self, data: bytes, kept: list[tuple[int, int, int]], one_byte: bool
    ) -> tuple[int, bytes]:
        """(profile, padded block) of the kept elements and the MID, in the form they all fit."""
        parts: list[bytes] = []
        if one_byte:
            for out_id, start, stop in kept:
                parts.append(_BYTE[(out_id << 4) | (stop - start - 1)])
                parts.append(data[start:stop])
            if self._mid_one is not None:
                parts.append(self._mid_one)
        else:
            for out_id, start, stop in kept:
                parts.append(_BYTE[out_id])
                parts.append(_BYTE[stop - start])
                parts.append(data[start:stop])
            parts.append(self._mid_two)
        body = b"".join(parts)
        return (ONE_BYTE_PROFILE if one_byte else TWO_BYTE_PROFILE), body + _PADS[len(body) & 3]
