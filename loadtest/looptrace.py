"""The server's loop trace over a measured window (sfu/looptrace.py): its counters on `/metrics`
at the window's start and end, and what held the loop in between (`server_loop_trace` in the
load tester's report). Empty when the server does not trace (KEYROOM_LOOP_TRACE unset)."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# Counter sample names -> the report's keys.
SERIES = {
    "keyroom_loop_slow_callbacks_total": "slow_count",
    "keyroom_loop_slow_callback_seconds_total": "slow_ms",
    "keyroom_loop_late_samples_total": "late_samples",
    "keyroom_loop_late_held_seconds_total": "late_held_ms",
    "keyroom_loop_late_wait_seconds_total": "late_wait_ms",
    "keyroom_loop_stalls_total": "stalls",
    "keyroom_loop_callbacks_total": "count",
    "keyroom_loop_callback_seconds_total": "cpu_ms",
    "keyroom_loop_datagram_seconds_total": "datagram_ms",
    "keyroom_loop_batches_total": "batches",
    "keyroom_loop_late_reads_total": "late_reads",
    "keyroom_loop_stall_seconds_total": "stall_ms",
}
TOP = 12

Counters = dict[tuple[str, str], float]


def parse(text: str) -> Counters:
    """(series, callback) -> value for the trace's counters in one exposition."""
    found: Counters = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = SERIES.get(sample.name)
            if key is not None:
                found[(key, next(iter(sample.labels.values()), ""))] = sample.value
    return found


def window(before: Counters, after: Counters) -> dict[str, Any] | None:
    """What the trace counted between two scrapes; None when the server has no trace."""
    if not after:
        return None
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}

    def top(series: str, scale: float) -> dict[str, float]:
        rows = [(name, v * scale) for (key, name), v in delta.items() if key == series and v]
        rows.sort(key=lambda row: -row[1])
        return {name: round(v, 2) for name, v in rows[:TOP]}

    slow_ms = top("slow_ms", 1000)
    counts = top("slow_count", 1)
    cpu = top("cpu_ms", 1000)
    ran = top("count", 1)
    return {
        # Per callback: how many ran, their CPU (ms) and mean CPU (µs).
        "profile": {
            name: [int(ran.get(name, 0)), ms, round(1000 * ms / max(ran.get(name, 1), 1), 1)]
            for name, ms in cpu.items()
        },
        "datagram_ms": top("datagram_ms", 1000),
        # recvmmsg calls by datagrams taken, and those whose first datagram waited >= 5 ms.
        "batches": top("batches", 1),
        "late_reads": top("late_reads", 1),
        "slow": {name: [int(counts.get(name, 0)), ms] for name, ms in slow_ms.items()},
        "stalls": int(delta.get(("stalls", ""), 0)),
        "stall_ms": top("stall_ms", 1000),
        "late_samples": int(delta.get(("late_samples", ""), 0)),
        "late_held_ms": top("late_held_ms", 1000),
        # The same waits split: the server's CPU, preempted inside callbacks, outside them.
        "late_wait_ms": top("late_wait_ms", 1000),
    }
