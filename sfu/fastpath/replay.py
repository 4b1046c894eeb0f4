"""Retransmissions of what the compiled fan-out sent (sfu/fastpath/steady.py): each input packet
is kept once per track or simulcast layer (`InputRing`); a down-track's cache records the spans
of output sequence numbers the compiled loop sent, with the offsets then (`Replay`), and a NACK
rebuilds the packet with `RtpRewriter.replay`: the same bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sfu.rtp import parse_rtp
from sfu.vp8 import renumber

if TYPE_CHECKING:
    from sfu.rtprewrite import RtpRewriter

RING = 512  # input packets kept per track for rebuilding retransmissions (PacketCache's size)
_SEQ = 0xFFFF


class InputRing:
    """A track's (or layer's) last `RING` input packets by sequence number, kept by reference."""

    __slots__ = ("seqs", "packets")

    def __init__(self) -> None:
        self.seqs = [-1] * RING
        self.packets: list[bytes] = [b""] * RING

    def get(self, seq: int) -> bytes | None:
        slot = seq & (RING - 1)
        return self.packets[slot] if self.seqs[slot] == seq else None


class Replay:
    """The spans of a down-track's output the compiled loop sent, to rebuild them for a NACK.
    A span: [first sequence number, last (None while open), seq offset, ts offset, packets sent
    in it (before it while open), the oldest sequence number sent in it (late input can go
    below the first), the ring of its input, the VP8 PictureID and TL0PICIDX offsets (a
    simulcast down-track's since its last switch, sfu/vp8.py; 0, 0: none)]."""

    __slots__ = ("rewriter", "spans")

    def __init__(self, rewriter: RtpRewriter) -> None:
        self.rewriter = rewriter
        self.spans: list[list[Any]] = []

    def open(self, rewriter: RtpRewriter, ring: InputRing, pid: int = 0, tl0: int = 0) -> None:
        if rewriter is not self.rewriter:
            self.rewriter, self.spans = rewriter, []  # another stream: its spans do not apply
        seq_offset, ts_offset, last_seq, _, packets, _ = rewriter.state()
        first = (last_seq + 1) & _SEQ
        self.spans.append([first, None, seq_offset, ts_offset, packets, first, ring, pid, tl0])
        del self.spans[:-4]  # older spans are far beyond the ring's reach

    def close(self) -> None:
        if self.spans and self.spans[-1][1] is None:
            self.spans[-1][1] = self.rewriter.last_out_seq
            self.spans[-1][4] = self.rewriter.packets - self.spans[-1][4]

    def get(self, seq: int, cached: bool) -> bytes | None | bool:
        """The packet `seq` rebuilt; None if its input is gone; False if no span has it (or,
        below a span's first, when the Python path's cache has it: `cached`)."""
        rewriter = self.rewriter
        for first, last, seq_offset, ts_offset, packets, early, ring, pid, tl0 in reversed(
            self.spans
        ):
            if last is None:
                last, packets = rewriter.last_out_seq, rewriter.packets - packets
            back = (last - seq) & _SEQ
            if back >= 0x8000:
                continue
            if back > (last - first) & _SEQ and packets < 0x8000:
                if cached or back > (last - early) & _SEQ:
                    continue
            data = ring.get((seq - seq_offset) & _SEQ)
            if data is None:
                return None
            info = parse_rtp(data)
            if pid or tl0:
                patch, resume = renumber(data, info.payload_start, info.payload_end, pid, tl0)
                return rewriter.replay(data, info, seq_offset, ts_offset, patch, resume)
            return rewriter.replay(data, info, seq_offset, ts_offset)
        return False
