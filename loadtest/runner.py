"""Runs a load-test scenario against a keyroom server and builds its report.

Phases: publishers join and start replaying, subscribers join (both at `joins_per_second`), then
`duration` seconds of measurement (churn and bad-token joins happen here), then publishers stop,
in-flight packets drain, and every client leaves. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from loadtest import looptrace, schedstat
from loadtest.clients import Subscriber
from loadtest.clip import Clip, encode_audio_clip, encode_video_clip
from loadtest.histogram import gc_pause_summary
from loadtest.procstat import ProcessSampler
from loadtest.report import build_report
from loadtest.run import JOIN_TIMEOUT, LEAVE_TIMEOUT, Run
from loadtest.scenarios import Scenario
from loadtest.target import Target

DRAIN_SECONDS = 1.0
# A subscriber session shorter than this at the end is not expected to have every track yet.
SETTLE_SECONDS = 3.0


async def _paced(coros: list[Any], per_second: float) -> None:
    """Start the coroutines at `per_second` and wait for all of them."""
    tasks = []
    for n, coro in enumerate(coros):
        if n and per_second > 0:
            await asyncio.sleep(1 / per_second)
        tasks.append(asyncio.ensure_future(coro))
    await asyncio.gather(*tasks)


@dataclass(frozen=True)
class Clips:
    video: Clip | None
    audio: Clip | None

    @classmethod
    def for_scenario(cls, scenario: Scenario) -> Clips:
        """Encoded once; a comparison run replays the same clips against every server."""
        return cls(
            encode_video_clip(scenario.codec, bitrate=scenario.video_bitrate)
            if scenario.video_publishers
            else None,
            encode_audio_clip() if scenario.audio_publishers else None,
        )


async def run_scenario(
    scenario: Scenario, target: Target, progress: bool, clips: Clips | None = None
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run = Run(scenario, target)
    encoded = clips or Clips.for_scenario(scenario)
    video, audio = encoded.video, encoded.audio
    sampler = ProcessSampler(target.pid) if target.pid else None
    sampler_task = asyncio.ensure_future(sampler.run(loop.time() + 3600)) if sampler else None
    runtime_before = target.runtime()
    published = [video] * scenario.video_publishers + [audio] * scenario.audio_publishers
    per_room = len(published)
    send_tasks: list[asyncio.Task[None]] = []
    try:
        # Rooms join side by side, each at `joins_per_second`; track numbers and identities
        # are unique across rooms (room r's publisher i is track r * per_room + i).
        await _each_room(
            run,
            lambda r, room: [
                run.add_publisher(r * per_room + n, clip, room)
                for n, clip in enumerate(published)
                if clip is not None
            ],
        )
        # Publishers send from now on, through the subscribers' joins and the measurement.
        send_until = loop.time() + 3600
        send_tasks = [
            asyncio.ensure_future(
                p.run(
                    send_until,
                    scenario.loss,
                    scenario.pace_ms,
                    scenario.keyframes_on_request,
                    scenario.answer_nacks,
                )
            )
            for p in run.publishers
        ]
        await _each_room(
            run,
            lambda r, room: [
                run.add_subscriber(r * scenario.subscribers + n, room)
                for n in range(scenario.subscribers)
            ],
        )
        if scenario.record:  # the recorder joins every published track, like one more subscriber
            for room in run.rooms:
                await asyncio.to_thread(target.start_recording, room)
        await asyncio.sleep(scenario.warmup)
        # In a thread: the scrape must not stall the generator's loop (and its latencies).
        before = await asyncio.to_thread(target.snapshot)
        sched_before = schedstat.Snapshot.take(target.pid)
        for latencies in (run.latencies, *run.room_latencies.values()):
            latencies.start_window()
        run.measure_start_ns, run.measure_start = time.monotonic_ns(), loop.time()
        run.counts_at_start = run.counts()
        cpu_before = _own_cpu()
        lag_task = asyncio.ensure_future(_lag_probe(run, loop.time() + scenario.duration))
        with _gc_pauses(run.gc_pauses_ms):
            await _measure(run, loop.time() + scenario.duration, progress)
        await asyncio.gather(lag_task, return_exceptions=True)
        own_cpu = _own_cpu() - cpu_before
        run.measure_end_ns, run.measure_end = time.monotonic_ns(), loop.time()
        for latencies in (run.latencies, *run.room_latencies.values()):
            latencies.end_window()
        run.counts_at_end = run.counts()
        sched_after = schedstat.Snapshot.take(target.pid)
        after = await asyncio.to_thread(target.snapshot)
    finally:
        for task in send_tasks:
            task.cancel()
        await asyncio.gather(*send_tasks, return_exceptions=True)
    await asyncio.sleep(DRAIN_SECONDS)
    runtime_after = target.runtime()
    if sampler_task is not None:
        sampler_task.cancel()
        await asyncio.gather(sampler_task, return_exceptions=True)
    report = build_report(
        run,
        settle_ns=int(SETTLE_SECONDS * 1e9),
        samples=sampler.samples if sampler else [],
        runtime_before=runtime_before,
        runtime_after=runtime_after,
        generator_cpu_seconds=own_cpu,
        forward=after.forward.minus(before.forward) if before.forward and after.forward else None,
        received=after.received.minus(before.received)
        if before.received and after.received
        else None,
        server_gc=gc_pause_summary(before.gc, after.gc),
    )
    clients = [p.client for p in run.publishers] + [
        s.client for s in run.subscribers if not s.ended
    ]
    await asyncio.gather(*(run.leave(c) for c in clients))
    report["errors"] = dict(run.errors)
    # What delayed the server besides its own CPU, and its socket's overflows, in the window.
    report["server_scheduling"] = schedstat.window(
        sched_before, sched_after, run.measure_end - run.measure_start
    )
    if before.overflows is not None and after.overflows is not None:
        report["server_socket_overflows"] = int(after.overflows - before.overflows)
    trace = looptrace.window(before.trace, after.trace)
    if trace is not None:
        report["server_loop_trace"] = trace
    return report


LAG_PROBE_INTERVAL = 0.005


async def _lag_probe(run: Run, until: float) -> None:
    """Sleep `LAG_PROBE_INTERVAL` again and again until `until`; record each oversleep."""
    # time.monotonic, not loop.time: uvloop's clock has millisecond steps.
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        asked = time.monotonic()
        await asyncio.sleep(LAG_PROBE_INTERVAL)
        run.loop_lag_ms.append(1000 * (time.monotonic() - asked - LAG_PROBE_INTERVAL))


@contextlib.contextmanager
def _gc_pauses(pauses_ms: list[float]) -> Iterator[None]:
    """Record how long each garbage collection of this process takes while inside."""
    started = [0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter_ns()
        elif started[0]:
            pauses_ms.append((time.perf_counter_ns() - started[0]) / 1e6)

    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)


async def _each_room(run: Run, joins: Callable[[int, str], list[Any]]) -> None:
    """Every room's joins (`joins(room index, room)`), rooms side by side, each paced."""
    await asyncio.gather(
        *(_paced(joins(r, room), run.scenario.joins_per_second) for r, room in enumerate(run.rooms))
    )


async def _measure(run: Run, until: float, progress: bool) -> None:
    """The measured phase: churn, bad joins, and a progress line once a second."""
    loop = asyncio.get_running_loop()
    scenario = run.scenario
    extra: list[asyncio.Task[Any]] = []
    next_churn = loop.time() + scenario.churn_interval
    churned = 0
    bad_joins = (
        round(
            len(run.rooms)
            * scenario.subscribers
            * scenario.bad_token_share
            / (1 - scenario.bad_token_share)
        )
        if scenario.bad_token_share < 1
        else 0
    )
    if bad_joins:
        extra.append(
            asyncio.ensure_future(
                _paced([run.bad_join(n) for n in range(bad_joins)], scenario.joins_per_second)
            )
        )
    start = loop.time()
    line = (
        ProgressLine(f"{run.target.name} {scenario.name}", scenario.duration) if progress else None
    )
    while (now := loop.time()) < until:
        if scenario.churn_interval and now >= next_churn and run.subscribers:
            live = [s for s in run.subscribers if not s.ended]
            if live:
                leaving = live[churned % len(live)]
                leaving.ended = True
                churned += 1
                extra.append(
                    asyncio.ensure_future(
                        _churn(run, leaving, len(run.rooms) * scenario.subscribers + churned)
                    )
                )
            next_churn += scenario.churn_interval
        if line is not None:
            line.update(now - start, run)
        await asyncio.sleep(min(0.25, max(0.0, until - loop.time())))
    if line is not None:
        line.close()
    # Joins started in the measured phase get a bounded grace to finish.
    if extra:
        _, pending = await asyncio.wait(extra, timeout=JOIN_TIMEOUT + LEAVE_TIMEOUT)
        for task in pending:
            task.cancel()
            run.errors["measure:task_timeout"] += 1


class ProgressLine:
    """A rich progress bar on stderr with what the run received so far. Refreshed from the
    measuring loop (no refresh thread competing with the clients for the GIL)."""

    def __init__(self, label: str, duration: float) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            TextColumn("{task.completed:>5.1f}/{task.total:.0f} s"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[counts]}"),
            console=Console(file=sys.stderr),
            auto_refresh=False,
            transient=False,
        )
        self._task = self._progress.add_task(label, total=duration, counts="")
        self._progress.start()

    def update(self, elapsed: float, run: Run) -> None:
        received = sum(st.packets for s in run.subscribers for st in s.streams.values())
        # The latest second's samples (at most a few thousand): cheap enough 4 times a second.
        buckets = run.latencies.by_second
        recent = sorted(buckets[max(buckets)]) if buckets else []
        p50 = f" latency p50 {recent[len(recent) // 2] / 1e6:.2f} ms" if recent else ""
        self._progress.update(
            self._task,
            completed=elapsed,
            counts=f"pub {len(run.publishers)} sub {sum(not s.ended for s in run.subscribers)}"
            f" recv {received}{p50} err {sum(run.errors.values())}",
        )
        self._progress.refresh()

    def close(self) -> None:
        self._progress.stop()


async def _churn(run: Run, leaving: Subscriber, n: int) -> None:
    await run.leave(leaving.client)
    await run.add_subscriber(n, leaving.room)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def default_log_dir() -> str:
    return tempfile.mkdtemp(prefix="keyroom-loadtest-")
