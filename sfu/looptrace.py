"""What held the event loop: an opt-in trace of the loop's callbacks, to attribute the tail of
`keyroom_receive_to_send_seconds` (docs/benchmarks.md, "What held the loop").

A datagram waits in the socket's queue while the loop runs something else; the receive-to-send
histogram says how long, not behind what. With `KEYROOM_LOOP_TRACE=MS` in the server's
environment the loop is built as a `TracedLoop`: every callback scheduled through it (timers,
`call_soon`, task steps, `add_reader` readers such as the shared media port's) is timed. The
trace then logs, every REPORT_EVERY seconds (at WARNING, logger `keyroom.looptrace`; totals since
the start, and the WORST late samples and stalls of the interval with what made each):

- `profile`: every callback's count and CPU time, per callback;
- `datagrams`: the shared port's received datagrams by kind (STUN, DTLS, RTP or RTCP with its
  type): count and CPU time each (inside the reader's callback);
- `batches`: the shared port's `recvmmsg` calls by how many datagrams each took (1, 2-7, 8-31,
  32-63, 64: a full batch), with the spread of their kernel receive stamps (count, total,
  max ms): a full batch that arrived within a millisecond or two came as a burst from the
  senders; `late_reads`: the calls whose first datagram had waited 5 ms or more (how long);
- `slow`: callbacks that used MS milliseconds of CPU or more, per callback (count, total, max;
  CPU time, so a loaded machine's preemptions do not make every callback look slow);
- `stalls`: runs of callbacks back to back (no poll of the sockets between them, as when a
  loop pass runs every timer due at one instant) that used MS ms of CPU together, and the CPU
  of each callback within them: many small callbacks add up to one wait as one slow one does;
- `late`: for each sampled receive-to-send time over LATE_AFTER, what ran in the loop between
  the datagram's kernel receive stamp and its send, summed per callback over all late samples
  (and the part no traced callback accounts for: protocol callbacks uvloop calls directly, the
  reader that handled the datagram itself, the poll).

The same totals are on `/metrics` while tracing (sfu/tracemetrics.py, docs/metrics.md), so a
benchmark diffs them over its measured window like any counter (the load tester's
`server_loop_trace`).

Without the variable nothing is installed: the loop is uvloop's own, the reader's `recvmmsg` and
datagram handler are not wrapped, and the receive path only compares each sampled wait (1
datagram in 64) with 5 ms. A task step is named by its task's coroutine, a `TimerDriver` by the
owner it drives, a bound method by its class.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import uvloop

from sfu.clock import TimerDriver

log = logging.getLogger("keyroom.looptrace")

ENV = "KEYROOM_LOOP_TRACE"
# A sampled receive-to-send time over this (ns) is explained.
LATE_AFTER = 5_000_000
REPORT_EVERY = 5.0
# Callbacks remembered for explaining late samples (a late sample looks back over its wait).
RING = 16384
# Callbacks starting within this of the previous one's end (ns) ran in one loop pass.
GAP = 50_000
# recvmmsg batch sizes, for the trace's batch table.
BATCH_SIZES = ((1, "1"), (7, "2-7"), (31, "8-31"), (63, "32-63"), (1 << 30, "64"))
# Late samples whose own breakdown is logged (the worst).
WORST = 5


def describe(callback: Any) -> str:
    """A callback's name for the trace: the coroutine of a task step, the owner a TimerDriver
    drives, the class and method of a bound method."""
    while isinstance(callback, functools.partial):
        callback = callback.func
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return "task " + getattr(coro, "__qualname__", type(coro).__qualname__)
    if isinstance(owner, TimerDriver):
        return f"timer {type(owner._owner).__qualname__}.handle_timer"
    name = getattr(callback, "__qualname__", None) or type(callback).__qualname__
    if owner is not None and not isinstance(owner, type) and "." not in name:
        name = f"{type(owner).__qualname__}.{name}"
    module = getattr(callback, "__module__", None) or ""
    return f"{module}:{name}" if module else name


def datagram_kind(data: bytes) -> str:
    """A received datagram's kind for the trace (RFC 7983 demultiplexing, then the RTP payload
    type or the RTCP packet type)."""
    if not data:
        return "other"
    first = data[0]
    if first < 4:
        return "stun"
    if 19 < first < 64:
        return "dtls"
    if 127 < first < 192 and len(data) > 1:
        second = data[1]
        if 191 < second < 224:
            return f"rtcp {second}"
        return f"rtp {second & 0x7F}"
    return "other"


class Stat:
    __slots__ = ("count", "total", "max")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0
        self.max = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.total += ns
        self.max = max(self.max, ns)

    def summary(self) -> list[float]:
        return [self.count, round(self.total / 1e6, 2), round(self.max / 1e6, 2)]


class Trace:
    """The record: callbacks run (a ring of the latest), slow ones per name, late samples'
    windows. Pure bookkeeping over nanosecond times passed in (no clock read here but in
    `ran`'s caller)."""

    def __init__(self, slow_ns: int) -> None:
        self.slow_ns = slow_ns
        # (end, wall duration, callback, CPU), perf ns and thread CPU ns.
        self.ring: collections.deque[tuple[int, int, Any, int]] = collections.deque(maxlen=RING)
        self.slow: dict[str, Stat] = collections.defaultdict(Stat)
        self.late: dict[str, Stat] = collections.defaultdict(Stat)
        self.late_samples = 0
        self.worst: list[tuple[int, dict[str, float]]] = []
        self.callbacks = 0
        self.batches: dict[str, Stat] = collections.defaultdict(Stat)  # spread by size
        self.late_reads: dict[str, Stat] = collections.defaultdict(Stat)  # oldest by size
        self.datagrams: dict[str, Stat] = collections.defaultdict(Stat)  # CPU by kind
        self.profile: dict[str, Stat] = collections.defaultdict(Stat)  # every callback's CPU
        self.started = 0  # perf ns at which the callback running now started (0: none)
        self.started_cpu = 0  # the thread's CPU ns then
        # Late samples' waits split three ways (LATE_PARTS): the server's CPU, its callbacks'
        # wall time off the CPU (preempted: runnable, not running), the rest (outside traced
        # callbacks: the poll, the wake-up, untraced work).
        self.late_parts: dict[str, Stat] = collections.defaultdict(Stat)
        # Stalls: callbacks run back to back (each starting within GAP of the previous end),
        # the loop polling no socket between them, that used slow_ns of CPU or more together.
        self.stalls = 0
        self.worst_stalls: list[tuple[int, int, dict[str, float]]] = []
        self.stalled: dict[str, Stat] = collections.defaultdict(Stat)
        self._run: list[tuple[Any, int]] = []
        self._run_cpu = 0
        self._run_end = 0

    def ran(self, callback: Any, start: int, end: int, cpu: int) -> None:
        """`callback` ran from `start` to `end` (perf ns), using `cpu` ns of the thread's CPU
        time: slow by its CPU time (what it costs on a quiet machine; on a loaded one its wall
        time also counts the other processes that ran meanwhile)."""
        self.callbacks += 1
        self.ring.append((end, end - start, callback, cpu))
        name = describe(callback)
        self.profile[name].add(cpu)
        if cpu >= self.slow_ns:
            self.slow[name].add(cpu)
        if start - self._run_end > GAP:
            self._end_run()
        self._run.append((callback, cpu))
        self._run_cpu += cpu
        self._run_end = end

    def batch(self, count: int, spread: int, oldest: int) -> None:
        """A `recvmmsg` call took `count` datagrams, whose kernel stamps span `spread` ns, the
        first received `oldest` ns ago: many datagrams in a short spread arrived as a burst
        (the senders), a long `oldest` means the loop read late (something held it)."""
        size = next(label for bound, label in BATCH_SIZES if count <= bound)
        self.batches[size].add(spread)
        if oldest >= LATE_AFTER:
            self.late_reads[size].add(oldest)

    def datagram(self, data: bytes, cpu: int) -> None:
        self.datagrams[datagram_kind(data)].add(cpu)

    def _end_run(self) -> None:
        if self._run_cpu >= self.slow_ns:
            self.stalls += 1
            within: dict[str, int] = collections.defaultdict(int)
            for callback, cpu in self._run:
                within[describe(callback)] += cpu
            for name, cpu in within.items():
                self.stalled[name].add(cpu)
            top = sorted(within.items(), key=lambda item: -item[1])[:4]
            self.worst_stalls.append(
                (self._run_cpu, len(self._run), {n: round(c / 1e6, 2) for n, c in top})
            )
            self.worst_stalls.sort(key=lambda item: -item[0])
            del self.worst_stalls[WORST:]
        self._run.clear()
        self._run_cpu = 0

    def explain(self, wait: int, now: int, cpu_now: int = 0) -> None:
        """A sampled datagram waited `wait` ns until `now` (perf ns; `cpu_now`: the thread's CPU
        ns then): charge what ran then, and split the wait into CPU, preempted and outside."""
        self.late_samples += 1
        since = now - wait
        window: dict[str, int] = collections.defaultdict(int)
        cpu_in = 0.0
        for end, duration, callback, cpu in reversed(self.ring):
            if end <= since:
                break
            overlap = min(duration, end - since)
            window[describe(callback)] += overlap
            cpu_in += cpu * overlap / duration if duration else 0
        if self.started:
            overlap = now - max(self.started, since)
            window["(the callback handling the datagram, so far)"] += overlap
            ran = now - self.started
            cpu_in += (cpu_now - self.started_cpu) * overlap / ran if ran > 0 else 0
        inside = sum(window.values())
        window["(untraced)"] = max(0, wait - inside)
        cpu_part = min(int(cpu_in), inside)
        self.late_parts["cpu"].add(cpu_part)
        self.late_parts["preempted"].add(inside - cpu_part)
        self.late_parts["outside"].add(window["(untraced)"])
        for name, ns in window.items():
            self.late[name].add(ns)
        top = sorted(window.items(), key=lambda item: -item[1])[:6]
        self.worst.append((wait, {name: round(ns / 1e6, 2) for name, ns in top}))
        self.worst.sort(key=lambda item: -item[0])
        del self.worst[WORST:]

    def report(self) -> dict[str, Any]:
        def table(stats: dict[str, Stat]) -> dict[str, list[float]]:
            ranked = sorted(stats.items(), key=lambda item: -item[1].total)
            return {name: stat.summary() for name, stat in ranked[:15]}

        return {
            "callbacks": self.callbacks,
            "profile": table(self.profile),
            "datagrams": table(self.datagrams),
            "batches": table(self.batches),
            "late_reads": table(self.late_reads),
            "slow_ms": self.slow_ns / 1e6,
            "slow": table(self.slow),
            "stalls": self.stalls,
            "stalled": table(self.stalled),
            "worst_stalls": [[round(cpu / 1e6, 2), n, top] for cpu, n, top in self.worst_stalls],
            "late_samples": self.late_samples,
            "late": table(self.late),
            "late_parts": table(self.late_parts),
            "worst": [[round(wait / 1e6, 2), top] for wait, top in self.worst],
        }


class _Timed:
    """A callback, timed into the trace when the loop runs it."""

    __slots__ = ("callback", "trace")

    def __init__(self, callback: Callable[..., Any], trace: Trace) -> None:
        self.callback = callback
        self.trace = trace

    def __call__(self, *args: Any) -> Any:
        trace = self.trace
        cpu = trace.started_cpu = time.thread_time_ns()
        start = trace.started = time.perf_counter_ns()
        try:
            return self.callback(*args)
        finally:
            trace.started = 0
            end = time.perf_counter_ns()
            trace.ran(self.callback, start, end, time.thread_time_ns() - cpu)


def _timed(callback: Any, trace: Trace) -> Any:
    return callback if isinstance(callback, _Timed) else _Timed(callback, trace)


class TracedLoop(uvloop.Loop):
    """uvloop's loop with every callback scheduled through its public methods timed."""

    trace: Trace

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:  # type: ignore[override]
        return super().call_soon(_timed(callback, self.trace), *args, context=context)

    def call_soon_threadsafe(self, callback: Any, *args: Any, context: Any = None) -> Any:  # type: ignore[override]
        wrapped = _timed(callback, self.trace)
        return super().call_soon_threadsafe(wrapped, *args, context=context)

    def call_later(self, delay: float, callback: Any, *args: Any, context: Any = None) -> Any:  # type: ignore[override]
        return super().call_later(delay, _timed(callback, self.trace), *args, context=context)

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:  # type: ignore[override]
        return super().call_at(when, _timed(callback, self.trace), *args, context=context)

    def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:  # type: ignore[override]
        super().add_reader(fd, _timed(callback, self.trace), *args)


# The running server's trace (None: not tracing; read by the receive path's late hook).
active: Trace | None = None


def threshold_from_env(environ: dict[str, str] | None = None) -> float | None:
    """The slow-callback threshold (ms) KEYROOM_LOOP_TRACE asks for; None when unset/empty."""
    raw = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV} must be a number of milliseconds, not {raw!r}") from None
    if not 0 < value < 10_000:
        raise ValueError(f"{ENV} must be between 0 and 10000 ms, not {raw!r}")
    return value


def loop_factory() -> Callable[[], uvloop.Loop]:
    """The factory for the server's loop: uvloop's, or a TracedLoop when tracing is asked."""
    global active
    slow_ms = threshold_from_env()
    if slow_ms is None:
        return uvloop.new_event_loop
    trace = active = Trace(int(slow_ms * 1e6))

    def make() -> uvloop.Loop:
        loop = TracedLoop()
        loop.trace = trace
        loop.call_later(REPORT_EVERY, _report, loop, trace)
        return loop

    log.warning("tracing the loop: callbacks of %s ms or more, waits over 5 ms", slow_ms)
    return make


def _report(loop: asyncio.AbstractEventLoop, trace: Trace) -> None:
    log.warning("loop trace %s", json.dumps(trace.report()))
    # The worst samples and stalls of each interval; the totals are cumulative.
    trace.worst.clear()
    trace.worst_stalls.clear()
    loop.call_later(REPORT_EVERY, _report, loop, trace)


def timed_deliver(deliver: Callable[[bytes, Any], None]) -> Callable[[bytes, Any], None]:
    """The shared port's per-datagram handler, timed by kind while tracing (else itself)."""
    trace = active
    if trace is None:
        return deliver

    def timed(data: bytes, address: Any) -> None:
        cpu = time.thread_time_ns()
        try:
            deliver(data, address)
        finally:
            trace.datagram(data, time.thread_time_ns() - cpu)

    return timed


def traced_recv(recv: Callable[[Any, int], int], stamps: Any) -> Callable[[Any, int], int]:
    """The shared port's `recvmmsg` call, noting each batch's size and how long its datagrams
    took to arrive (their kernel stamps, ns), while tracing (else itself)."""
    trace = active
    if trace is None:
        return recv

    def traced(rx: Any, fd: int) -> int:
        count = recv(rx, fd)
        if count > 0:
            trace.batch(count, stamps[count - 1] - stamps[0], time.time_ns() - stamps[0])
        return count

    return traced


def late(wait_ns: int) -> None:
    """The receive path's hook for a sampled wait over LATE_AFTER."""
    if active is not None:
        active.explain(wait_ns, time.perf_counter_ns(), time.thread_time_ns())
