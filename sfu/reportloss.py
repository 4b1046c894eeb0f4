"""Downlink loss from a subscriber's report blocks, over enough packets to mean something.

A report block's `fraction_lost` covers the packets since the receiver's previous report, and
Chromium sends a report with every NACK (compound RTCP): at a few dozen video packets a second,
one such interval holds a handful of packets, one of which is the loss the NACK asks for. At
100 ms + 1 % loss both ways, 16-33 % readings were common, each taken for congestion: the
estimate was cut, the video paused until a keyframe, seconds of freeze for 1 % random loss.

So loss is counted the way libwebrtc's own sender does (RtcpBandwidthObserver, then
SendSideBandwidthEstimation's kLimitNumPackets): from the deltas of each SSRC's extended highest
sequence number (packets expected) and cumulative packets lost between its blocks, summed over
blocks until at least MIN_PACKETS were expected. The cumulative count goes down again when a
retransmission arrives, so a loss that was repaired weighs nothing, while a link that drops what
it cannot carry shows its loss within a report or two. Pure: no clock needed.
"""

from __future__ import annotations

from collections.abc import Collection

from sfu.rtcp import ReportBlock

MIN_PACKETS = 20
# More packets than this between two blocks of one SSRC is no report interval but a restart,
# a reordered report or a broken receiver: a new baseline, not a loss sample.
MAX_INTERVAL = 0x8000
_U32 = 0xFFFFFFFF


class ReportLoss:
    __slots__ = ("_last", "_expected", "_lost", "ignored")

    def __init__(self) -> None:
        # SSRC -> (extended highest sequence number, cumulative packets lost) of its last block.
        self._last: dict[int, tuple[int, int]] = {}
        self._expected = 0
        self._lost = 0
        self.ignored = 0  # blocks that went backwards or jumped: re-baselined

    def on_block(self, block: ReportBlock) -> float | None:
        """One report block of a stream keyroom sends; the fraction lost (0..1) once the blocks
        since the last sample span MIN_PACKETS, else None."""
        last = self._last.get(block.ssrc)
        self._last[block.ssrc] = (block.highest_seq & _U32, block.packets_lost)
        if last is None:
            return None
        expected = (block.highest_seq - last[0]) & _U32
        if expected > MAX_INTERVAL:
            self.ignored += 1
            return None
        self._expected += expected
        self._lost += block.packets_lost - last[1]
        if self._expected < MIN_PACKETS:
            return None
        fraction = min(max(self._lost, 0), self._expected) / self._expected
        self._expected = self._lost = 0
        return fraction

    def keep(self, ssrcs: Collection[int]) -> None:
        """Forget the SSRCs no longer sent (a subscription ended)."""
        for ssrc in [s for s in self._last if s not in ssrcs]:
            del self._last[ssrc]
