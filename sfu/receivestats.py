"""What keyroom tells a publisher about a stream it receives: RFC 3550 receiver-report numbers.

Sequence bookkeeping only (appendix A.1/A.3): no clock is read per packet, so the interarrival
jitter is reported as 0. Time enters when a report is built.
"""

from __future__ import annotations

from sfu.rtcp import ReportBlock

SEQ_MOD = 1 << 16
MAX_LOST = (1 << 23) - 1


class ReceiveStats:
    __slots__ = (
        "started",
        "base_seq",
        "max_seq",
        "cycles",
        "received",
        "expected_prior",
        "received_prior",
        "last_sr_ntp",
        "last_sr_at",
    )

    def __init__(self) -> None:
        self.started = False
        self.base_seq = self.max_seq = self.cycles = self.received = 0
        self.expected_prior = self.received_prior = 0
        self.last_sr_ntp: int | None = None
        self.last_sr_at = 0.0

    def update(self, seq: int) -> None:
        if not self.started:
            self.started = True
            self.base_seq = self.max_seq = seq
        elif (seq - self.max_seq) % SEQ_MOD < SEQ_MOD // 2:
            # In order (or a forward jump): a smaller number means the counter wrapped.
            if seq < self.max_seq:
                self.cycles += SEQ_MOD
            self.max_seq = seq
        self.received += 1

    def on_sender_report(self, ntp: int, now: float) -> None:
        self.last_sr_ntp = ntp
        self.last_sr_at = now

    def report_block(self, ssrc: int, now: float) -> ReportBlock:
        extended_max = self.cycles + self.max_seq
        expected = extended_max - self.base_seq + 1
        lost = max(-MAX_LOST - 1, min(MAX_LOST, expected - self.received))
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior, self.received_prior = expected, self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = (lost_interval << 8) // expected_interval
        lsr = dlsr = 0
        if self.last_sr_ntp is not None:
            lsr = (self.last_sr_ntp >> 16) & 0xFFFFFFFF
            dlsr = int((now - self.last_sr_at) * 65536) & 0xFFFFFFFF
        return ReportBlock(
            ssrc=ssrc,
            fraction_lost=min(fraction, 255),
            packets_lost=lost,
            highest_seq=extended_max & 0xFFFFFFFF,
            jitter=0,
            lsr=lsr,
            dlsr=dlsr,
        )
