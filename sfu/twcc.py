"""Transport-wide congestion control towards a subscriber (draft-holmer-rmcat-transport-wide-cc-
extensions-01), sans-I/O: the sequence number keyroom stamps on every packet it sends to one
subscriber transport, the send history it keeps, and the feedback the subscriber returns.

Every RTP packet towards a subscriber whose answer accepted the extension carries it as the
first element of its header extension block (the rewriter reserves the slot: sfu/rtp.py), so
stamping is one fixed-offset write; the send time and size go into a ring the feedback reads.
The subscriber reports (RTCP RTPFB FMT 15), for a run of sequence numbers, which arrived and
when: `parse_feedback` turns that into (sequence, arrival µs or None) pairs, within hard
bounds (an absurd status count, a truncated chunk or delta list: MalformedPacket, dropped and
counted by the caller), and `TransportSequence.resolve` pairs them with the send times.
"""

from __future__ import annotations

import struct
import time
from array import array
from dataclasses import dataclass

from sfu.rtp import MalformedPacket

URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
# A feedback describing more packets than this is not believed (Chromium reports every
# 50-250 ms: a few hundred packets even at tens of Mbit/s).
MAX_STATUS_COUNT = 4096
# Send history: a feedback names packets sent within the last second or so.
HISTORY = 1 << 13
_MASK = HISTORY - 1
_U16 = struct.Struct("!H")
# The send time of a stamped packet (the compiled fan-out reads it once per input packet).
send_clock = time.monotonic
_FCI_HEAD = struct.Struct("!HHI")
# Where the stamped value sits: 12-byte header, 4-byte extension header, the element's id byte
# (one-byte form) or id and length bytes (two-byte form).
ONE_BYTE_OFFSET = 17
TWO_BYTE_OFFSET = 18
# Units of the feedback: reference time 64 ms, receive deltas 250 µs.
REFERENCE_US = 64_000
DELTA_US = 250

_NOT_RECEIVED, _SMALL, _LARGE = 0, 1, 2


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    """One transport feedback: per packet reported, (sequence, arrival µs or None if lost), in
    sequence order; arrival times in the receiver's clock, only their differences mean anything."""

    base_sequence: int
    feedback_count: int
    packets: tuple[tuple[int, int | None], ...]


@dataclass(frozen=True, slots=True)
class PacketResult:
    """A packet the feedback names and keyroom still remembers sending."""

    sequence: int  # unwrapped: grows past 65535
    send_time: float  # seconds, monotonic
    size: int  # bytes
    arrival_us: int | None  # None: lost


def parse_feedback(fci: bytes) -> FeedbackReport:
    """The FCI of an RTPFB FMT 15 message (after the sender and media SSRCs)."""
    if len(fci) < 8:
        raise MalformedPacket("transport feedback shorter than its header")
    base, count, word = _FCI_HEAD.unpack_from(fci)
    if not 0 < count <= MAX_STATUS_COUNT:
        raise MalformedPacket(f"transport feedback reports {count} packets")
    reference = word >> 8
    if reference & 0x800000:
        reference -= 1 << 24
    symbols, pos = _symbols(fci, 8, count)
    arrival = reference * REFERENCE_US
    packets: list[tuple[int, int | None]] = []
    size = len(fci)
    for n, symbol in enumerate(symbols):
        seq = (base + n) & 0xFFFF
        if symbol == _NOT_RECEIVED:
            packets.append((seq, None))
            continue
        if symbol == _SMALL:
            if pos >= size:
                raise MalformedPacket("transport feedback ends inside its receive deltas")
            arrival += fci[pos] * DELTA_US
            pos += 1
        else:
            if pos + 2 > size:
                raise MalformedPacket("transport feedback ends inside its receive deltas")
            delta = _U16.unpack_from(fci, pos)[0]
            arrival += (delta - 0x10000 if delta & 0x8000 else delta) * DELTA_US
            pos += 2
        packets.append((seq, arrival))
    return FeedbackReport(base, word & 0xFF, tuple(packets))


def _symbols(fci: bytes, pos: int, count: int) -> tuple[list[int], int]:
    """`count` packet status symbols from the chunks at `pos`, and where the deltas start."""
    symbols: list[int] = []
    size = len(fci)
    while len(symbols) < count:
        if pos + 2 > size:
            raise MalformedPacket("transport feedback ends inside its status chunks")
        chunk = _U16.unpack_from(fci, pos)[0]
        pos += 2
        if not chunk & 0x8000:
            symbol = (chunk >> 13) & 3
            if symbol == 3:
                raise MalformedPacket("transport feedback uses the reserved status symbol")
            run = chunk & 0x1FFF
            symbols.extend([symbol] * min(run, count - len(symbols)))
        elif not chunk & 0x4000:
            symbols.extend((chunk >> (13 - i)) & 1 for i in range(14))
        else:
            two = [(chunk >> (12 - 2 * i)) & 3 for i in range(7)]
            if 3 in two[: count - len(symbols)]:
                raise MalformedPacket("transport feedback uses the reserved status symbol")
            symbols.extend(two)
    return symbols[:count], pos


class TransportSequence:
    """One subscriber transport's sequence numbers and send history.

    `stamp` runs once per packet sent (the sink calls it): the packet must carry the element
    in its first slot (the rewriter's output, and the RTX and padding packets made from it).
    """

    __slots__ = ("ext_id", "one", "next", "times", "sizes")

    def __init__(self, ext_id: int, start: int = 0) -> None:
        self.ext_id = ext_id
        self.one = (ext_id << 4) | 1  # the slot's first byte in the one-byte form
        # The next sequence number and the history, in arrays: the compiled fan-out
        # (sfu/fastpath/steady.py) stamps and records through pointers to them.
        self.next = array("q", [start])
        self.times = array("d", [0.0]) * HISTORY
        self.sizes = array("I", [0]) * HISTORY

    def stamp(self, data: bytes) -> bytes:
        """`data` with the next sequence number in its transport-cc slot; unchanged when it
        has no such slot first in its extension block (not made by a rewriter that had one)."""
        if not data[0] & 0x10 or len(data) < 20:
            return data
        if data[12] == 0xBE and data[13] == 0xDE:
            if data[16] != self.one:
                return data
            offset = ONE_BYTE_OFFSET
        elif data[16] == self.ext_id and data[17] == 2:
            offset = TWO_BYTE_OFFSET
        else:
            return data
        cell = self.next
        n = cell[0]
        cell[0] = n + 1
        i = n & _MASK
        self.times[i] = send_clock()
        self.sizes[i] = len(data)
        return b"".join((data[:offset], _U16.pack(n & 0xFFFF), data[offset + 2 :]))

    def resolve(self, report: FeedbackReport) -> list[PacketResult]:
        """The packets of `report` still in the send history, with their send times; a
        feedback naming packets never sent (or long forgotten) yields nothing for them."""
        sent = self.next[0]
        results: list[PacketResult] = []
        for seq, arrival in report.packets:
            # Unwrap against the newest sequence number sent: feedback names recent packets.
            back = (sent - 1 - seq) & 0xFFFF
            n = sent - 1 - back
            if back >= HISTORY or n < sent - HISTORY or n < 0:
                continue
            i = n & _MASK
            results.append(PacketResult(n, self.times[i], self.sizes[i], arrival))
        return results
