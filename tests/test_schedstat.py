"""The load tester's scheduling window (loadtest/schedstat.py): run-queue wait, preemptions,
steal and softirq per CPU, read from /proc and diffed."""

from __future__ import annotations

import os

import pytest

from loadtest.schedstat import (
    Snapshot,
    ThreadTimes,
    coincidence,
    parse_cpus,
    parse_involuntary,
    parse_schedstat,
    parse_udp_drops,
    rank_correlation,
    window,
)

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")
STAT = """cpu  10 0 10 100 0 0 5 1 0 0
cpu0 5 0 5 50 0 1 3 1 0 0
cpu1 5 0 5 50 0 0 2 0 0 0
intr 1 2 3
"""


def test_files_are_parsed_and_bad_ones_refused() -> None:
    assert parse_schedstat("123 456 7\n") == (123, 456, 7)
    assert parse_involuntary("voluntary_ctxt_switches:\t9\nnonvoluntary_ctxt_switches:\t4\n") == 4
    with pytest.raises(ValueError):
        parse_involuntary("Name:\tpython\n")
    cpus = parse_cpus(STAT)
    assert set(cpus) == {"cpu0", "cpu1"}  # not the total line
    assert cpus["cpu0"]["softirq"] == 3 * TICK_MS and cpus["cpu0"]["steal"] == TICK_MS


def test_the_window_is_the_difference_of_its_edges() -> None:
    before = Snapshot(ThreadTimes(1_000_000, 2_000_000, 10, 3), parse_cpus(STAT))
    later = STAT.replace("cpu0 5 0 5 50 0 1 3 1", "cpu0 5 0 5 60 0 1 7 3")
    after = Snapshot(ThreadTimes(401_000_000, 52_000_000, 110, 13), parse_cpus(later))
    report = window(before, after, 2.0)
    assert report["server_main_thread"] == {
        "cpu_ms": 400.0,
        "run_queue_wait_ms": 50.0,
        "run_queue_wait_percent": 2.5,
        "timeslices": 100,
        "mean_wait_per_slice_ms": 0.5,
        "involuntary_switches": 10,
    }
    assert report["cpus_ms"]["cpu0"] == {
        "steal": round(2 * TICK_MS, 1),
        "softirq": round(4 * TICK_MS, 1),
        "irq": 0.0,
        "idle": round(10 * TICK_MS, 1),
    }
    assert report["cpus_ms"]["cpu1"]["softirq"] == 0.0


def test_a_live_process_can_be_read() -> None:
    snapshot = Snapshot.take(os.getpid())
    assert snapshot.thread is not None and snapshot.thread.cpu_ns > 0
    assert snapshot.udp_drops is not None and snapshot.udp_drops >= 0
    assert Snapshot.take(None).thread is None


_ROW = "{}: 0100007F:{} 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 {} 2 0 {}"
UDP = "\n".join(
    [
        "sl local_address rem_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout"
        " inode ref pointer drops",
        _ROW.format(100, "1EC2", 4242, 17),
        _ROW.format(101, "9C40", 4343, 5),
        _ROW.format(102, "9C41", 4444, 0),
    ]
)


def test_udp_drops_are_summed_over_the_servers_sockets_only() -> None:
    assert parse_udp_drops(UDP, {4242, 4444}) == 17
    assert parse_udp_drops(UDP, set()) == 0
    assert parse_udp_drops("header only\n", {4242}) == 0


def test_late_seconds_are_matched_with_the_servers_wait_in_them() -> None:
    latency = [
        [-0.5, 1, 2, 90.0, 10],  # before the window: left out
        [0.5, 0.4, 1, 2.0, 100],
        [1.5, 0.4, 30, 60.0, 100],  # late
        [2.5, 0.4, 1, 3.0, 0],  # no samples
    ]
    server = [
        [0.4, 40, 100, 1.0],
        [0.9, 50, 100, 3.0],
        [1.4, 60, 100, 200.0],
        [1.9, 80, 100, 100.0],
    ]
    found = coincidence(latency, server, measured=3.0)
    assert found["late"] == {"seconds": 1, "run_queue_ms_per_s": 300.0, "cpu_percent": 70.0}
    assert found["on_time"] == {"seconds": 1, "run_queue_ms_per_s": 4.0, "cpu_percent": 45.0}
    assert found["p99_rank_correlation"] == {"run_queue": None, "cpu": None}  # 2 seconds
    assert coincidence([], server, 3.0)["late"] == {
        "seconds": 0,
        "run_queue_ms_per_s": 0.0,
        "cpu_percent": 0.0,
    }


def test_rank_correlation_follows_the_order_not_the_size() -> None:
    assert rank_correlation([1, 2, 3, 4], [10, 20, 300, 4000]) == 1.0
    assert rank_correlation([1, 2, 3, 4], [9, 7, 5, 1]) == -1.0
    assert rank_correlation([1, 1, 2, 2], [1, 1, 2, 2]) == 1.0  # ties
    assert rank_correlation([1, 1, 1], [1, 2, 3]) is None  # constant
    assert rank_correlation([1, 2], [1, 2]) is None  # too short


def test_the_seconds_correlate_with_the_wait_that_drives_their_tail() -> None:
    waits = [5.0, 300.0, 10.0, 200.0, 0.0, 100.0]
    latency = [[n + 0.5, 0.4, 1, 1 + w / 10, 100] for n, w in enumerate(waits)]
    server = [[n + 0.9, 50 + (n % 2), 100, w / 2] for n, w in enumerate(waits)]
    server += [[n + 0.4, 50 + (n % 2), 100, w / 2] for n, w in enumerate(waits)]
    found = coincidence(latency, server, measured=6.0)
    assert found["p99_rank_correlation"]["run_queue"] == 1.0
    assert found["p99_rank_correlation"]["cpu"] is not None
    assert found["p99_rank_correlation"]["cpu"] < 0.9
