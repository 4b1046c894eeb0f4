"""The loop trace's totals as counters on `/metrics` (sfu/looptrace.py; docs/metrics.md), so a
benchmark diffs them over its measured window like any counter."""

from __future__ import annotations

from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from sfu.looptrace import Trace

# The trace's counters: (name, help, the Trace attribute, its count or its time in seconds).
FAMILIES = (
    ("keyroom_loop_callbacks", "Loop callbacks run, by callback", "profile", False),
    ("keyroom_loop_callback_seconds", "CPU time of loop callbacks, by callback", "profile", True),
    (
        "keyroom_loop_slow_callbacks",
        "Loop callbacks that used KEYROOM_LOOP_TRACE ms of CPU or more, by callback",
        "slow",
        False,
    ),
    (
        "keyroom_loop_slow_callback_seconds",
        "CPU time of those slow callbacks, by callback",
        "slow",
        True,
    ),
    (
        "keyroom_loop_stall_seconds",
        "CPU time of each callback within runs of back-to-back callbacks that used"
        " KEYROOM_LOOP_TRACE ms of CPU or more together (stalls), by callback",
        "stalled",
        True,
    ),
    (
        "keyroom_loop_late_wait_seconds",
        "The waits of sampled receive-to-send times over 5 ms, by part: the server's CPU (cpu),"
        " its callbacks' time off the CPU (preempted), outside traced callbacks (outside)",
        "late_parts",
        True,
    ),
    (
        "keyroom_loop_late_held_seconds",
        "Within the waits of sampled receive-to-send times over 5 ms, time each callback held"
        " the loop",
        "late",
        True,
    ),
)


class TraceCollector(Collector):
    """The trace's totals as counters, read at each scrape."""

    def __init__(self, trace: Trace) -> None:
        self._trace = trace

    def collect(self) -> Any:
        trace = self._trace
        for name, doc, attribute, in_seconds in FAMILIES:
            family = CounterMetricFamily(name, doc, labels=["callback"])
            for key, stat in getattr(trace, attribute).items():
                family.add_metric([key], stat.total / 1e9 if in_seconds else stat.count)
            yield family
        yield CounterMetricFamily(
            "keyroom_loop_stalls", "Stalls (see keyroom_loop_stall_seconds)", value=trace.stalls
        )
        yield CounterMetricFamily(
            "keyroom_loop_late_samples",
            "Sampled receive-to-send times over 5 ms that the trace explained",
            value=trace.late_samples,
        )
        for name, doc, stats in (
            ("keyroom_loop_batches", "recvmmsg calls on the shared port, by datagrams taken",
             trace.batches),
            ("keyroom_loop_late_reads",
             "recvmmsg calls whose first datagram had waited 5 ms or more, by datagrams taken",
             trace.late_reads),
        ):  # fmt: skip
            family = CounterMetricFamily(name, doc, labels=["size"])
            for size, stat in stats.items():
                family.add_metric([size], stat.count)
            yield family
        kinds = CounterMetricFamily(
            "keyroom_loop_datagram_seconds",
            "CPU time of handling received datagrams on the shared port, by kind",
            labels=["kind"],
        )
        for kind, stat in trace.datagrams.items():
            kinds.add_metric([kind], stat.total / 1e9)
        yield kinds
