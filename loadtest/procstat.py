"""CPU and RSS of a process, sampled from /proc (Linux only; no extra dependency)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from loadtest.schedstat import parse_schedstat

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may contain spaces: fields are counted after its closing ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def run_queue_ns(pid: int) -> int:
    """How long `pid`'s main thread has waited on a run queue so far (schedstat field 2)."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        return parse_schedstat(f.read())[1]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


@dataclass
class Sample:
    t: float  # event-loop time of the sample
    cpu_percent: float  # of one core, over the interval before t
    rss_mib: float
    # The main thread's run-queue wait over the interval (ms): runnable, not running.
    run_queue_ms: float = 0.0


@dataclass
class ProcessSampler:
    pid: int
    interval: float = 0.5
    samples: list[Sample] = field(default_factory=list)

    async def run(self, until: float) -> None:
        """Sample until loop time `until` (or cancellation, or the process is gone)."""
        loop = asyncio.get_running_loop()
        last_t, last_cpu, last_wait = loop.time(), cpu_seconds(self.pid), run_queue_ns(self.pid)
        while loop.time() < until:
            await asyncio.sleep(self.interval)
            try:
                cpu, rss, wait = cpu_seconds(self.pid), rss_bytes(self.pid), run_queue_ns(self.pid)
            except OSError:
                return
            now = loop.time()
            percent = 100 * (cpu - last_cpu) / max(now - last_t, 1e-9)
            self.samples.append(Sample(now, percent, rss / 2**20, (wait - last_wait) / 1e6))
            last_t, last_cpu, last_wait = now, cpu, wait
