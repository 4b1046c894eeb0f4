"""RTP packets back into codec frames, sans-I/O: VP8 (RFC 7741) and Opus (RFC 7587).

Packets are put in sequence order (the 16-bit number extended across wraps, duplicates from
retransmission dropped); a VP8 frame is the packets of one RTP timestamp, from the one that
starts partition 0 to the one with the marker bit, with no sequence gap. An incomplete frame is
skipped and counted; the next keyframe starts clean.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sfu.rtp import MalformedPacket, RtpInfo, parse_rtp


@dataclass(frozen=True)
class Frame:
    timestamp: int  # RTP, extended across wraps
    data: bytes
    keyframe: bool


@dataclass
class Depacketized:
    frames: list[Frame]
    dropped: int  # incomplete frames or malformed packets left out


def vp8_descriptor_length(payload: bytes) -> int:
    """Bytes of the VP8 payload descriptor at the start of `payload`; raises if malformed."""
    if not payload:
        raise MalformedPacket("empty VP8 payload")
    pos = 1
    if payload[0] & 0x80:
        if len(payload) < 2:
            raise MalformedPacket("VP8 descriptor cut short")
        ext = payload[1]
        pos = 2
        if ext & 0x80:
            if pos >= len(payload):
                raise MalformedPacket("VP8 picture id cut short")
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:
            pos += 1
        if ext & 0x30:
            pos += 1
    if pos > len(payload):
        raise MalformedPacket("VP8 descriptor cut short")
    return pos


def ordered(packets: Iterable[bytes]) -> tuple[list[tuple[int, int, RtpInfo, bytes]], int]:
    """(extended sequence, extended timestamp, header, packet) in order, and the bad ones."""
    out: dict[int, tuple[int, int, RtpInfo, bytes]] = {}
    bad = 0
    last_seq = last_ts = None
    for data in packets:
        try:
            info = parse_rtp(data)
        except MalformedPacket:
            bad += 1
            continue
        seq = _extend(info.sequence, last_seq, 1 << 16)
        ts = _extend(info.timestamp, last_ts, 1 << 32)
        last_seq, last_ts = seq, ts
        out.setdefault(seq, (seq, ts, info, data))
    return [out[k] for k in sorted(out)], bad


def _extend(value: int, last: int | None, modulus: int) -> int:
    if last is None:
        return value
    base = last - last % modulus + value
    candidates = (base - modulus, base, base + modulus)
    return min(candidates, key=lambda c: abs(c - last))


def opus_frames(packets: Iterable[bytes]) -> Depacketized:
    items, bad = ordered(packets)
    frames = [
        Frame(ts, data[info.payload_start : info.payload_end], True)
        for _seq, ts, info, data in items
        if info.payload_end > info.payload_start
    ]
    return Depacketized(frames, bad)


def vp8_frames(packets: Iterable[bytes]) -> Depacketized:
    items, dropped = ordered(packets)
    frames: list[Frame] = []
    group: list[tuple[int, int, RtpInfo, bytes]] = []
    for item in items:
        if group and item[1] != group[0][1]:
            dropped += _close_vp8(group, frames)
            group = []
        group.append(item)
    if group:
        dropped += _close_vp8(group, frames)
    return Depacketized(frames, dropped)


def _close_vp8(group: list[tuple[int, int, RtpInfo, bytes]], frames: list[Frame]) -> int:
    """Append the frame of one timestamp if it is complete; 1 if it is not."""
    seqs = [g[0] for g in group]
    if seqs != list(range(seqs[0], seqs[0] + len(seqs))) or not group[-1][2].marker:
        return 1
    parts = []
    for index, (_seq, _ts, info, data) in enumerate(group):
        payload = data[info.payload_start : info.payload_end]
        try:
            skip = vp8_descriptor_length(payload)
        except MalformedPacket:
            return 1
        if index == 0 and payload[0] & 0x17 != 0x10:  # S=1, PID=0 starts the frame
            return 1
        parts.append(payload[skip:])
    data = b"".join(parts)
    if not data:
        return 1
    frames.append(Frame(group[0][1], data, data[0] & 0x01 == 0))
    return 0


def vp8_size(keyframe: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe header (RFC 6386 9.1)."""
    if len(keyframe) < 10 or keyframe[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(keyframe[6:8], "little") & 0x3FFF
    height = int.from_bytes(keyframe[8:10], "little") & 0x3FFF
    return width, height
