"""Per-subscriber RTP rewriting (RFC 3550, RFC 8285): SSRC, payload type, sequence number,
timestamp and extension ids, each subscriber's packet built from precomputed pieces plus a slice
of the publisher's bytes. It runs once per packet per subscriber, so it avoids per-packet objects
beyond the output itself; the header is parsed once per packet by sfu/rtp.py.
"""

from __future__ import annotations

import struct

from sfu.rtp import ONE_BYTE_PROFILE, TWO_BYTE_MASK, TWO_BYTE_PROFILE, RtpInfo

_HEADER = struct.Struct("!BBHII")
_HEADER_EXT = struct.Struct("!BBHIIHH")
# One-byte bytes objects, so building extension element headers allocates nothing.
_BYTE = [bytes((i,)) for i in range(256)]
# Zero bytes that pad an extension block of length n to a 32-bit boundary: _PADS[n & 3].
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")
_SEQ_MASK = 0xFFFF
_TS_MASK = 0xFFFFFFFF
# One input packet reaches every down-track of its track in turn, and down-tracks that
# negotiated the same extension ids remap its one-byte elements alike: the last input packet
# and, per one-byte map, the elements it came out as (before each down-track's MID element).
# Maps are interned (`_ONE_MAPS`, bounded) so the memo compares identities.
_elements_of: list[bytes | None] = [None]
_remapped: dict[tuple[int, ...] | None, bytes] = {}
_ONE_MAPS: dict[tuple[int, ...], tuple[int, ...]] = {}
_MAX_ONE_MAPS = 1024


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


def _intern_one_map(one_map: list[int] | None) -> tuple[int, ...] | None:
    """The shared key of a one-byte map (None: no fast path)."""
    if one_map is None:
        return None
    key = tuple(one_map)
    if len(_ONE_MAPS) >= _MAX_ONE_MAPS:
        _ONE_MAPS.clear()  # only sharing is lost: equal maps then miss the memo, correctly
    return _ONE_MAPS.setdefault(key, key)


def _one_byte_elements(data: bytes, pos: int, end: int, one_map: list[int]) -> bytes:
    """Rewrite's fast path (browsers send one-byte blocks): only each element's id nibble
    changes; the kept elements, unpadded."""
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
    return bytes(body)


def _slot_elements(
    slot_ext_id: int | None, mid_ext_id: int | None, ext_map: dict[int, int]
) -> tuple[bytes, bytes]:
    """The transport-cc element (two zero bytes for its value) in the one-byte and two-byte
    forms; (b"", b"") without one."""
    if slot_ext_id is None:
        return b"", b""
    _check_ext_id(slot_ext_id, "slot_ext_id")
    if slot_ext_id > 14:
        raise ValueError("slot_ext_id must fit the one-byte form (1..14)")
    if slot_ext_id == mid_ext_id or slot_ext_id in ext_map.values():
        raise ValueError(f"slot_ext_id {slot_ext_id} is also used by another element")
    return bytes(((slot_ext_id << 4) | 1, 0, 0)), bytes((slot_ext_id, 2, 0, 0))


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
        "_one_key",
        "_tails",
        "_slot_one",
        "_slot_two",
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
        slot_ext_id: int | None = None,
    ) -> None:
        _check_maps(out_ssrc, pt_map, ext_map)
        self._mid_one, self._mid_two = _mid_elements(mid_ext_id, mid, ext_map)
        # The transport-cc element, first in every output block (sfu/twcc.py stamps its value
        # at a fixed offset); b"" without one.
        self._slot_one, self._slot_two = _slot_elements(slot_ext_id, mid_ext_id, ext_map)
        self._mid_tail = self._mid_one or b""  # what rewrite's fast path appends
        # The output block when no input element survives: the slot and MID alone, or nothing.
        self._mid_block: tuple[int, bytes] = (0, b"")
        if self._mid_one is not None or (self._slot_one and not self._mid_two):
            alone = self._slot_one + (self._mid_one or b"")
            self._mid_block = (ONE_BYTE_PROFILE, alone + _PADS[len(alone) & 3])
        elif self._mid_two:
            alone = self._slot_two + self._mid_two
            self._mid_block = (TWO_BYTE_PROFILE, alone + _PADS[len(alone) & 3])
        self._one_map = _one_byte_map(ext_map, self._mid_one is not None or not self._mid_two)
        self._one_key = _intern_one_map(self._one_map)
        # The MID element and padding to append to elements of each length mod 4.
        tail = self._mid_tail
        head = len(self._slot_one)
        self._tails = tuple(tail + _PADS[(head + n + len(tail)) & 3] for n in range(4))
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

    def skip(self, count: int) -> None:
        """Leave `count` sequence numbers unused: a stream continued by another sender (a
        fan-out worker's, taken back) must not reuse the ones it may have sent."""
        self._seq_offset = (self._seq_offset + count) & _SEQ_MASK
        self.last_out_seq = (self.last_out_seq + count) & _SEQ_MASK

    def translate_timestamp(self, in_ts: int) -> int:
        """Map a publisher RTP timestamp (e.g. from its Sender Report) onto this down-track."""
        if not self._started:
            raise RuntimeError("no packet rewritten yet, so there is no timestamp offset")
        return (in_ts + self._ts_offset) & _TS_MASK

    def compiled_form(self) -> tuple[int, dict[int, int], list[int], bytes, bytes] | None:
        """(out SSRC, payload type map, one-byte map, transport-cc element, MID element): what
        the compiled fan-out (sfu/fastpath/steady.py) needs to rewrite as `rewrite` does; None
        when this rewriter has no one-byte fast path (its output needs the two-byte form)."""
        if self._one_map is None or not self._started:
            return None
        return self._ssrc, self._pt_map, self._one_map, self._slot_one, self._mid_tail

    def state(self) -> tuple[int, int, int, int, int, int]:
        """(seq offset, ts offset, last_out_seq, last_out_ts, packets, octets)."""
        return (
            self._seq_offset,
            self._ts_offset,
            self.last_out_seq,
            self.last_out_ts,
            self.packets,
            self.octets,
        )

    def restore(self, state: tuple[int, int, int, int, int, int]) -> None:
        """Take back a started rewriter's `state()`, as the compiled fan-out left it."""
        self._seq_offset, self._ts_offset, self.last_out_seq, self.last_out_ts = state[:4]
        self.packets, self.octets = state[4], state[5]

    def replay(
        self,
        data: bytes,
        info: RtpInfo,
        seq_offset: int,
        ts_offset: int,
        patch: bytes = b"",
        resume: int = 0,
    ) -> bytes | None:
        """What `rewrite` made of `data` (and `patch`, `resume`) while the offsets were these:
        the same bytes, for a retransmission; the rewriter's state is left as it was."""
        kept = self.state()
        self._seq_offset, self._ts_offset = seq_offset, ts_offset
        try:
            return self.rewrite(data, info, patch, resume)
        finally:
            self.restore(kept)

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
        one_map = self._one_map
        if profile == ONE_BYTE_PROFILE and one_map is not None:
            remapped = _remapped
            if _elements_of[0] is not data:
                _elements_of[0] = data
                remapped.clear()  # the same dict: no allocation per input packet
            elements = remapped.get(self._one_key)
            if elements is None:
                elements = remapped[self._one_key] = _one_byte_elements(data, pos, end, one_map)
            body = self._slot_one + elements + self._tails[len(elements) & 3]
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
        elif profile is not None and profile & TWO_BYTE_MASK == TWO_BYTE_PROFILE:
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
        parts: list[bytes] = [self._slot_one if one_byte else self._slot_two]
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
