"""Wall-clock delay that is not the server's CPU, over a measured window (Linux /proc only).

A datagram waits in the server's socket while the server's thread is not running. That is its
own CPU (the loop busy with other work), or the scheduler's: the thread runnable but waiting for
the core (run-queue wait, `/proc/PID/task/TID/schedstat` field 2; involuntary context switches
in its `status`), or the core taken from the guest (steal) or by interrupts (softirq: the
network stack's receive, loopback and veth included). Read at the window's edges and diffed,
with the kernel's drop count of the server's UDP sockets (/proc/net/udp, any server version).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")
# /proc/stat per-CPU columns after the name (man 5 proc).
_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


@dataclass(frozen=True)
class ThreadTimes:
    cpu_ns: int  # on the CPU
    wait_ns: int  # runnable, waiting on a run queue
    slices: int  # times it ran
    involuntary: int  # context switches the scheduler forced (preempted)


def parse_schedstat(text: str) -> tuple[int, int, int]:
    """(cpu ns, run-queue wait ns, timeslices) from a schedstat file."""
    cpu, wait, slices = (int(v) for v in text.split()[:3])
    return cpu, wait, slices


def parse_involuntary(status: str) -> int:
    """`nonvoluntary_ctxt_switches` from a status file."""
    for line in status.splitlines():
        if line.startswith("nonvoluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise ValueError("no nonvoluntary_ctxt_switches")


def parse_cpus(stat: str) -> dict[str, dict[str, float]]:
    """Per CPU (cpu0, cpu1, ...; not the total line), its /proc/stat times in ms."""
    cpus: dict[str, dict[str, float]] = {}
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit():
            values = rest.split()
            cpus[name] = {f: int(v) * _TICK_MS for f, v in zip(_CPU_FIELDS, values, strict=False)}
    return cpus


def parse_udp_drops(table: str, inodes: set[int]) -> int:
    """The drops column summed over the sockets of /proc/net/udp{,6} whose inode is in
    `inodes`."""
    total = 0
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 12 and int(fields[9]) in inodes:
            total += int(fields[-1])
    return total


def socket_inodes(pid: int) -> set[int]:
    """The inodes of `pid`'s open sockets."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def udp_drops(pid: int) -> int:
    """Datagrams the kernel dropped at `pid`'s UDP sockets so far (full receive buffers)."""
    inodes = socket_inodes(pid)
    total = 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name) as f:
                total += parse_udp_drops(f.read(), inodes)
        except OSError:
            continue
    return total


def read_thread(pid: int, tid: int | None = None) -> ThreadTimes:
    """The times of thread `tid` of `pid` (its main thread by default)."""
    base = f"/proc/{pid}/task/{tid or pid}"
    with open(f"{base}/schedstat") as f:
        cpu, wait, slices = parse_schedstat(f.read())
    with open(f"{base}/status") as f:
        return ThreadTimes(cpu, wait, slices, parse_involuntary(f.read()))


def read_cpus() -> dict[str, dict[str, float]]:
    with open("/proc/stat") as f:
        return parse_cpus(f.read())


@dataclass(frozen=True)
class Snapshot:
    thread: ThreadTimes | None
    cpus: dict[str, dict[str, float]]
    udp_drops: int | None = None

    @classmethod
    def take(cls, pid: int | None) -> Snapshot:
        thread = drops = None
        if pid:
            try:
                thread, drops = read_thread(pid), udp_drops(pid)
            except (OSError, ValueError):
                thread = drops = None
        return cls(thread, read_cpus(), drops)


def window(before: Snapshot, after: Snapshot, seconds: float) -> dict[str, Any]:
    """What the scheduler and the host did between two snapshots `seconds` apart."""
    report: dict[str, Any] = {}
    a, b = before.thread, after.thread
    if a is not None and b is not None:
        cpu_ms, wait_ms = (b.cpu_ns - a.cpu_ns) / 1e6, (b.wait_ns - a.wait_ns) / 1e6
        slices = b.slices - a.slices
        report["server_main_thread"] = {
            "cpu_ms": round(cpu_ms, 1),
            "run_queue_wait_ms": round(wait_ms, 1),
            # Of the window's wall time: runnable but not running.
            "run_queue_wait_percent": round(100 * wait_ms / max(seconds * 1000, 1e-9), 2),
            "timeslices": slices,
            "mean_wait_per_slice_ms": round(wait_ms / slices, 3) if slices else 0.0,
            "involuntary_switches": b.involuntary - a.involuntary,
        }
    if before.udp_drops is not None and after.udp_drops is not None:
        # The server's UDP sockets' overflows in the window (/proc/net/udp's drops column).
        report["server_udp_drops"] = after.udp_drops - before.udp_drops
    report["cpus_ms"] = {
        name: {
            field: round(after.cpus[name][field] - times.get(field, 0.0), 1)
            for field in ("steal", "softirq", "irq", "idle")
            if field in after.cpus[name]
        }
        for name, times in before.cpus.items()
        if name in after.cpus
    }
    return report


def rank_correlation(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation of two series (ties share their mean rank); None when either
    is constant or shorter than 3."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        start = 0
        while start < len(order):
            end = start
            while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
                end += 1
            for k in range(start, end + 1):
                result[order[k]] = (start + end) / 2
            start = end + 1
        return result

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return round(cov / (vx * vy) ** 0.5, 2) if vx and vy else None


def coincidence(
    latency: list[list[Any]], server: list[list[Any]], measured: float, late_ms: float = 5.0
) -> dict[str, Any]:
    """Whether the seconds with a latency tail are those the server waited for its core: each
    measured second of `latency` (rows [t, p50, p95, p99, count], t its middle) is late when its
    p99 is over `late_ms`, and gets the server's run-queue wait and CPU from the `server` rows
    ([t, CPU %, RSS, run-queue ms], t each interval's end) that end within it. Per kind of
    second: how many, the mean run-queue wait per second (ms) and the mean CPU %; and over all
    seconds, the rank correlation of each second's p99 with its run-queue wait and with its CPU
    (the end-to-end p99 also holds the generator's own delays: a threshold alone can be met by
    every second)."""
    kinds: dict[str, list[tuple[float, float]]] = {"late": [], "on_time": []}
    p99s: list[float] = []
    for t, _, _, p99, count in latency:
        if not count or p99 is None or not 0 <= t - 0.5 < measured:
            continue
        rows = [r for r in server if t - 0.5 < r[0] <= t + 0.5]
        if not rows:
            continue
        waited = sum(r[3] for r in rows) / (len(rows) * 0.5)
        cpu = sum(r[1] for r in rows) / len(rows)
        kinds["late" if p99 > late_ms else "on_time"].append((waited, cpu))
        p99s.append(p99)
    report: dict[str, Any] = {
        kind: {
            "seconds": len(values),
            "run_queue_ms_per_s": round(sum(w for w, _ in values) / len(values), 1)
            if values
            else 0.0,
            "cpu_percent": round(sum(c for _, c in values) / len(values), 1) if values else 0.0,
        }
        for kind, values in kinds.items()
    }
    both = kinds["late"] + kinds["on_time"]
    ordered = [p for p in p99s if p > late_ms] + [p for p in p99s if p <= late_ms]
    report["p99_rank_correlation"] = {
        "run_queue": rank_correlation([w for w, _ in both], ordered),
        "cpu": rank_correlation([c for _, c in both], ordered),
    }
    return report
