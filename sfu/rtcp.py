"""Sans-I/O RTCP: parse the messages an SFU acts on, build the ones it sends.

RFC 3550 (SR, RR, BYE), RFC 4585 (NACK, PLI), RFC 5104 (FIR), draft-alvestrand-rmcat-remb (REMB),
draft-holmer-rmcat-transport-wide-cc-extensions (transport feedback, its FCI left to sfu/twcc.py),
RFC 5761 (RTP/RTCP demultiplexing). Everything else in a compound packet is skipped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sfu.rtp import MalformedPacket

SR = 200
RR = 201
SDES = 202
BYE = 203
RTPFB = 205
PSFB = 206

_RTPFB_NACK = 1
_RTPFB_TWCC = 15
_PSFB_PLI = 1
_PSFB_FIR = 4
_PSFB_AFB = 15  # application layer feedback; REMB is recognised by its "REMB" identifier

_SDES_CNAME = 1

_HEADER = struct.Struct("!BBH")
_U32 = struct.Struct("!I")
_TWO_U32 = struct.Struct("!II")
_SENDER_INFO = struct.Struct("!QIII")
_REPORT_BLOCK = struct.Struct("!IIIIII")
_NACK_ITEM = struct.Struct("!HH")
_FIR_ITEM = struct.Struct("!IB3x")
_FEEDBACK = struct.Struct("!BBHII")
_SR = struct.Struct("!BBHIQIII")


@dataclass(frozen=True, slots=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int
    packets_lost: int  # cumulative, signed 24-bit
    highest_seq: int  # extended highest sequence number received
    jitter: int
    lsr: int
    dlsr: int


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp: int  # 64-bit NTP timestamp: seconds << 32 | fraction
    rtp_ts: int
    packets: int
    octets: int
    reports: tuple[ReportBlock, ...]


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...]


@dataclass(frozen=True, slots=True)
class Pli:
    sender_ssrc: int
    media_ssrc: int


@dataclass(frozen=True, slots=True)
class Fir:
    sender_ssrc: int
    entries: tuple[tuple[int, int], ...]  # (media ssrc, command sequence number)


@dataclass(frozen=True, slots=True)
class Nack:
    sender_ssrc: int
    media_ssrc: int
    lost: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Remb:
    sender_ssrc: int
    bitrate: int
    ssrcs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TransportFeedback:
    """Transport-wide congestion control feedback; `fci` is parsed by sfu/twcc.py, so that a
    malformed one costs only itself, not the reports beside it."""

    sender_ssrc: int
    media_ssrc: int
    fci: bytes


@dataclass(frozen=True, slots=True)
class Bye:
    ssrcs: tuple[int, ...]


RtcpMessage = SenderReport | ReceiverReport | Pli | Fir | Nack | Remb | TransportFeedback | Bye


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192..223 occupy the RTP marker+PT byte."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def _report_blocks(payload: bytes, pos: int, count: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for _ in range(count):
        ssrc, lost_word, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(payload, pos)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        blocks.append(ReportBlock(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr))
        pos += 24
    return tuple(blocks)


def _parse_one(ptype: int, count: int, payload: bytes) -> RtcpMessage | None:
    """One packet of a compound; `payload` follows the 4-byte header, padding removed.

    Length checks up front mean no struct.error can escape.
    """
    size = len(payload)
    if ptype == SR:
        # RFC 3550 allows profile-specific extensions after the report blocks: ignored.
        if size < 24 + 24 * count:
            raise MalformedPacket("RTCP SR is shorter than its report count")
        ssrc = _U32.unpack_from(payload)[0]
        ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(payload, 4)
        return SenderReport(ssrc, ntp, rtp_ts, packets, octets, _report_blocks(payload, 24, count))
    if ptype == RR:
        if size < 4 + 24 * count:
            raise MalformedPacket("RTCP RR is shorter than its report count")
        ssrc = _U32.unpack_from(payload)[0]
        return ReceiverReport(ssrc, _report_blocks(payload, 4, count))
    if ptype == BYE:
        if size < 4 * count:
            raise MalformedPacket("RTCP BYE is shorter than its source count")
        return Bye(struct.unpack_from(f"!{count}I", payload))
    if ptype == RTPFB:
        if count == _RTPFB_TWCC:
            if size < 8:
                raise MalformedPacket("RTCP transport feedback is shorter than 8 bytes")
            sender, media = _TWO_U32.unpack_from(payload)
            return TransportFeedback(sender, media, payload[8:])
        return _parse_nack(payload) if count == _RTPFB_NACK else None
    if ptype == PSFB:
        return _parse_psfb(count, payload)
    return None


def _parse_nack(payload: bytes) -> Nack:
    if len(payload) < 8 or len(payload) % 4:
        raise MalformedPacket("RTCP NACK has a bad length")
    sender, media = _TWO_U32.unpack_from(payload)
    lost = []
    for pid, blp in _NACK_ITEM.iter_unpack(payload[8:]):
        lost.append(pid)
        for bit in range(16):
            if blp >> bit & 1:
                lost.append((pid + bit + 1) & 0xFFFF)
    return Nack(sender, media, tuple(lost))


def _parse_psfb(count: int, payload: bytes) -> RtcpMessage | None:
    """PLI, FIR or REMB; None for other payload-specific feedback."""
    size = len(payload)
    if size < 8:
        raise MalformedPacket("RTCP payload-specific feedback is shorter than 8 bytes")
    sender, media = _TWO_U32.unpack_from(payload)
    if count == _PSFB_PLI:
        return Pli(sender, media)
    if count == _PSFB_FIR:
        if (size - 8) % 8:
            raise MalformedPacket("RTCP FIR has a partial FCI entry")
        return Fir(sender, tuple(_FIR_ITEM.iter_unpack(payload[8:])))
    if count == _PSFB_AFB and payload[8:12] == b"REMB":
        if size < 16 or size < 16 + 4 * payload[12]:
            raise MalformedPacket("RTCP REMB is shorter than its SSRC count")
        exp_mantissa = _U32.unpack_from(payload, 12)[0] & 0xFFFFFF
        bitrate = (exp_mantissa & 0x3FFFF) << (exp_mantissa >> 18)
        return Remb(sender, bitrate, struct.unpack_from(f"!{payload[12]}I", payload, 16))
    return None


def parse_rtcp(data: bytes) -> list[RtcpMessage]:
    """The SR/RR/PLI/FIR/NACK/REMB/transport feedback/BYE messages of a compound packet, in order.

    Other packet types and feedback formats are skipped. Raises MalformedPacket (only) when any
    packet's framing is broken or a known message is truncated.
    """
    size = len(data)
    if size < 4:
        raise MalformedPacket("RTCP packet shorter than 4 bytes")
    messages: list[RtcpMessage] = []
    pos = 0
    while pos < size:
        if pos + 4 > size:
            raise MalformedPacket("RTCP compound packet ends inside a header")
        first, ptype, words = _HEADER.unpack_from(data, pos)
        if first >> 6 != 2:
            raise MalformedPacket("RTCP version is not 2")
        start = pos + 4
        pos = start + 4 * words
        if pos > size:
            raise MalformedPacket("RTCP length field overruns the packet")
        end = pos
        if first & 0x20:
            pad = data[end - 1] if end > start else 0
            if pad == 0 or pad > end - start:
                raise MalformedPacket("RTCP padding length is invalid")
            end -= pad
        message = _parse_one(ptype, first & 0x1F, data[start:end])
        if message is not None:
            messages.append(message)
    return messages


def _packet(ptype: int, count: int, payload: bytes) -> bytes:
    return _HEADER.pack(0x80 | count, ptype, len(payload) // 4) + payload


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return _FEEDBACK.pack(0x80 | _PSFB_PLI, PSFB, 2, sender_ssrc, media_ssrc)


def build_fir(sender_ssrc: int, media_ssrc: int, seqnr: int) -> bytes:
    """RFC 5104 FIR: the header's media SSRC is 0; the target is in the FCI entry."""
    return _FEEDBACK.pack(0x80 | _PSFB_FIR, PSFB, 4, sender_ssrc, 0) + _FIR_ITEM.pack(
        media_ssrc, seqnr & 0xFF
    )


def build_nack(sender_ssrc: int, media_ssrc: int, lost: Iterable[int]) -> bytes:
    """Generic NACK. `lost` in ascending order (mod 2^16) packs tightest: each sequence number up
    to 16 after an entry's PID goes into that entry's bitmask, any other starts a new entry."""
    items = []
    pid = -1
    blp = 0
    for seq in lost:
        seq &= 0xFFFF
        distance = (seq - pid - 1) & 0xFFFF
        if pid >= 0 and distance < 16:
            blp |= 1 << distance
        else:
            if pid >= 0:
                items.append(_NACK_ITEM.pack(pid, blp))
            pid = seq
            blp = 0
    if pid < 0:
        raise ValueError("a NACK needs at least one lost sequence number")
    items.append(_NACK_ITEM.pack(pid, blp))
    return _packet(RTPFB, _RTPFB_NACK, _TWO_U32.pack(sender_ssrc, media_ssrc) + b"".join(items))


def build_sr(ssrc: int, ntp: int, rtp_ts: int, packets: int, octets: int) -> bytes:
    """Sender Report without report blocks; the counters wrap at 2^32 as RFC 3550 says."""
    return _SR.pack(
        0x80, SR, 6, ssrc, ntp, rtp_ts & 0xFFFFFFFF, packets & 0xFFFFFFFF, octets & 0xFFFFFFFF
    )


def build_rr(ssrc: int, reports: Sequence[ReportBlock]) -> bytes:
    if len(reports) > 31:
        raise ValueError("an RR carries at most 31 report blocks")
    parts = [_U32.pack(ssrc)]
    for r in reports:
        lost = max(-0x800000, min(r.packets_lost, 0x7FFFFF)) & 0xFFFFFF
        parts.append(
            _REPORT_BLOCK.pack(
                r.ssrc,
                (r.fraction_lost & 0xFF) << 24 | lost,
                r.highest_seq,
                r.jitter,
                r.lsr,
                r.dlsr,
            )
        )
    return _packet(RR, len(reports), b"".join(parts))


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: Sequence[int]) -> bytes:
    """REMB: bitrate as an 18-bit mantissa and 6-bit exponent (rounded down)."""
    if bitrate < 0 or len(ssrcs) > 255:
        raise ValueError("REMB needs a non-negative bitrate and at most 255 SSRCs")
    exponent = 0
    mantissa = bitrate
    while mantissa > 0x3FFFF:
        mantissa >>= 1
        exponent += 1
    if exponent > 63:
        raise ValueError(f"REMB bitrate {bitrate} does not fit 18-bit mantissa, 6-bit exponent")
    fci = b"REMB" + _U32.pack(len(ssrcs) << 24 | exponent << 18 | mantissa)
    fci += b"".join(_U32.pack(s) for s in ssrcs)
    return _packet(PSFB, _PSFB_AFB, _TWO_U32.pack(sender_ssrc, 0) + fci)


def build_sdes_cname(ssrc: int, cname: str) -> bytes:
    text = cname.encode("utf-8")
    if len(text) > 255:
        raise ValueError("CNAME longer than 255 bytes")
    chunk = _U32.pack(ssrc) + bytes((_SDES_CNAME, len(text))) + text
    # The item list ends with at least one null octet, then pads the chunk to 32 bits.
    chunk += bytes(4 - len(chunk) % 4)
    return _packet(SDES, 1, chunk)
