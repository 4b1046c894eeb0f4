"""Receiver-report numbers from sequence bookkeeping (RFC 3550 A.3), time passed in."""

from __future__ import annotations

from sfu.receivestats import ReceiveStats
from sfu.rtcp import ReceiverReport, build_rr, parse_rtcp


def test_no_loss() -> None:
    stats = ReceiveStats()
    for seq in range(100, 200):
        stats.update(seq)
    block = stats.report_block(42, now=10.0)
    assert (block.ssrc, block.fraction_lost, block.packets_lost, block.highest_seq) == (
        42,
        0,
        0,
        199,
    )


def test_loss_fraction_is_per_interval_and_cumulative_count_grows() -> None:
    stats = ReceiveStats()
    for seq in range(0, 100):
        if seq % 4 != 1:
            stats.update(seq)  # a quarter lost
    block = stats.report_block(1, now=1.0)
    assert block.packets_lost == 25 and block.fraction_lost == 64  # 25% of 256
    for seq in range(100, 200):
        stats.update(seq)
    block = stats.report_block(1, now=2.0)
    assert block.packets_lost == 25 and block.fraction_lost == 0


def test_wraparound_and_reordering() -> None:
    stats = ReceiveStats()
    for seq in [65530, 65531, 65533, 65532, 65534, 65535, 0, 1, 2]:
        stats.update(seq)
    block = stats.report_block(1, now=0.0)
    assert block.highest_seq == 65536 + 2 and block.packets_lost == 0


def test_lsr_and_dlsr_follow_the_last_sender_report() -> None:
    stats = ReceiveStats()
    stats.update(1)
    stats.on_sender_report(0x1122334455667788, now=5.0)
    block = stats.report_block(1, now=5.5)
    assert block.lsr == 0x33445566 and block.dlsr == 32768
    (rr,) = parse_rtcp(build_rr(9, [block]))
    assert isinstance(rr, ReceiverReport) and rr.reports[0] == block
