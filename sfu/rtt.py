"""Round-trip time to a peer from the LSR/DLSR fields of its report blocks (RFC 3550 6.4.1).

keyroom's Sender Reports to a subscriber carry the publishers' NTP timestamps (for lip sync), so
the time each one left is remembered by its middle 32 bits, the value the subscriber echoes as
LSR; a repeated NTP value keeps its latest send time (the subscriber's DLSR counts from the last
one it got). RTT = arrival - send - DLSR, smoothed like TCP's SRTT. Unknown LSRs and absurd
samples are ignored and counted. The other direction needs nothing here: keyroom's Receiver
Reports to a publisher carry LSR/DLSR of its Sender Reports, so the publisher measures its RTT.
"""

from __future__ import annotations

MAX_REMEMBERED = 16
MAX_RTT = 10.0
GAIN = 0.125


class RttEstimator:
    __slots__ = ("_sent", "rtt", "samples", "ignored")

    def __init__(self) -> None:
        self._sent: dict[int, float] = {}
        self.rtt: float | None = None  # smoothed, seconds
        self.samples = 0
        self.ignored = 0

    def sent(self, ntp: int, now: float) -> None:
        """A Sender Report with 64-bit NTP timestamp `ntp` left now."""
        key = (ntp >> 16) & 0xFFFFFFFF
        self._sent.pop(key, None)
        self._sent[key] = now
        if len(self._sent) > MAX_REMEMBERED:
            del self._sent[next(iter(self._sent))]

    def on_block(self, lsr: int, dlsr: int, now: float) -> float | None:
        """One report block's LSR/DLSR; the RTT sample it gives, if any."""
        if lsr == 0:
            return None  # no Sender Report received yet
        at = self._sent.get(lsr)
        sample = None if at is None else now - at - dlsr / 65536
        if sample is None or not 0 <= sample <= MAX_RTT:
            self.ignored += 1
            return None
        self.samples += 1
        self.rtt = sample if self.rtt is None else self.rtt + GAIN * (sample - self.rtt)
        return sample
