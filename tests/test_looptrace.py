"""The opt-in loop trace (sfu/looptrace.py): bookkeeping over chosen times, the traced loop's
timing of real callbacks, its metrics and the load tester's window over them."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from loadtest import arrivals
from loadtest import looptrace as window_of
from loadtest.clients import next_frame
from sfu import looptrace
from sfu.clock import TimerDriver
from sfu.looptrace import Trace, TracedLoop, datagram_kind, describe
from sfu.tracemetrics import TraceCollector

MS = 1_000_000


class Reports:
    def next_deadline(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass


async def _coroutine_named_here() -> None:
    await asyncio.sleep(0)


def _plain() -> None:
    pass


async def test_callbacks_are_named_by_what_they_run() -> None:
    task = asyncio.ensure_future(_coroutine_named_here())
    driver = TimerDriver(Reports())
    assert describe(functools.partial(_plain)).endswith("test_looptrace:_plain")
    assert describe(driver._fire) == "timer Reports.handle_timer"
    assert describe(task.cancel) == "task _coroutine_named_here"
    await task
    assert describe(Trace(MS).ran).endswith("looptrace:Trace.ran")


def test_datagram_kinds_follow_rfc_7983() -> None:
    assert datagram_kind(b"\x00\x01" + bytes(18)) == "stun"
    assert datagram_kind(b"\x16\xfe\xfd") == "dtls"
    assert datagram_kind(b"\x80\x60" + bytes(10)) == "rtp 96"
    assert datagram_kind(b"\x80\xe0" + bytes(10)) == "rtp 96"  # marker bit set
    assert datagram_kind(b"\x80\xc9" + bytes(6)) == "rtcp 201"
    assert datagram_kind(b"") == "other"


def test_slow_callbacks_count_by_cpu_not_wall_time() -> None:
    trace = Trace(MS)
    # 5 ms of wall time but 0.2 ms of CPU: preempted, not slow.
    trace.ran(_plain, 0, 5 * MS, MS // 5)
    trace.ran(_coroutine_named_here, 10 * MS, 12 * MS, 2 * MS)
    assert [describe(_coroutine_named_here)] == list(trace.slow)
    assert trace.slow[describe(_coroutine_named_here)].count == 1


def test_back_to_back_callbacks_add_up_to_one_stall() -> None:
    trace = Trace(MS)
    # Eight 0.2 ms timers in one loop pass (each starts right after the previous ends) ...
    for n in range(8):
        start = 100 * MS + n * (MS // 5 + 1000)
        trace.ran(_plain, start, start + MS // 5, MS // 5)
    # ... then, after the loop polled (a gap), one short callback: the pass was one stall.
    trace.ran(_plain, 200 * MS, 200 * MS + 1000, 1000)
    assert trace.stalls == 1
    assert trace.stalled[describe(_plain)].total == 8 * (MS // 5)
    assert trace.worst_stalls[0][:2] == (8 * (MS // 5), 8)
    # The same eight spread out (the loop polls between them) are no stall.
    spread = Trace(MS)
    for n in range(9):
        spread.ran(_plain, n * MS, n * MS + MS // 5, MS // 5)
    assert spread.stalls == 0


def test_a_late_sample_is_charged_to_what_ran_during_its_wait() -> None:
    trace = Trace(MS)
    trace.ran(_plain, 0, 2 * MS, 2 * MS)  # before the datagram arrived (at 10 ms)
    # 5 ms of it after, at half its wall time on the CPU (preempted for the rest)
    trace.ran(_coroutine_named_here, 9 * MS, 15 * MS, 3 * MS)
    trace.started = 15 * MS  # the reader handling the datagram, since 15 ms, all on the CPU
    trace.started_cpu = 100 * MS
    trace.explain(wait=8 * MS, now=18 * MS, cpu_now=103 * MS)
    late = {name: stat.total for name, stat in trace.late.items()}
    assert late == {
        describe(_coroutine_named_here): 5 * MS,
        "(the callback handling the datagram, so far)": 3 * MS,
        "(untraced)": 0,
    }
    assert trace.late_samples == 1
    assert trace.worst[0][0] == 8 * MS
    # 2.5 ms + 3 ms of CPU, 2.5 ms preempted, nothing outside the callbacks.
    parts = {name: stat.total for name, stat in trace.late_parts.items()}
    assert parts == {"cpu": 5.5 * MS, "preempted": 2.5 * MS, "outside": 0}
    # Waiting outside any callback (the poll, the wake-up) is the third part.
    idle = Trace(MS)
    idle.explain(wait=6 * MS, now=50 * MS, cpu_now=0)
    assert {n: s.total for n, s in idle.late_parts.items()} == {
        "cpu": 0,
        "preempted": 0,
        "outside": 6 * MS,
    }


def test_threshold_comes_from_the_environment_and_bad_values_are_refused() -> None:
    assert looptrace.threshold_from_env({}) is None
    assert looptrace.threshold_from_env({"KEYROOM_LOOP_TRACE": " "}) is None
    assert looptrace.threshold_from_env({"KEYROOM_LOOP_TRACE": "0.5"}) == 0.5
    for bad in ("fast", "0", "-1", "1e9", "nan"):
        with pytest.raises(ValueError, match="KEYROOM_LOOP_TRACE"):
            looptrace.threshold_from_env({"KEYROOM_LOOP_TRACE": bad})


def test_without_tracing_the_loop_and_the_datagram_handler_are_untouched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KEYROOM_LOOP_TRACE", raising=False)
    monkeypatch.setattr(looptrace, "active", None)
    factory = looptrace.loop_factory()
    loop = factory()
    try:
        assert type(loop) is not TracedLoop
    finally:
        loop.close()
    assert looptrace.timed_deliver(_plain_deliver) is _plain_deliver
    looptrace.late(100 * MS)  # no trace: nothing to charge, no error


def _plain_deliver(data: bytes, address: object) -> None:
    pass


def test_the_traced_loop_times_callbacks_tasks_and_datagrams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYROOM_LOOP_TRACE", "0.001")
    monkeypatch.setattr(looptrace, "active", None)
    loop = looptrace.loop_factory()()
    trace = looptrace.active
    assert isinstance(loop, TracedLoop) and trace is not None
    handled: list[bytes] = []

    async def main() -> None:
        done = asyncio.Event()
        loop.call_later(0.001, done.set)
        await done.wait()
        looptrace.timed_deliver(lambda data, address: handled.append(data))(
            b"\x80\x60" + bytes(10), ("127.0.0.1", 9)
        )

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    names = set(trace.profile)
    assert any(name.startswith("task ") and name.endswith("main") for name in names)
    assert any(name.endswith("Event.set") for name in names)
    assert trace.datagrams["rtp 96"].count == 1 and handled
    # Every callback of 1 µs or more is "slow" at this threshold; all are on /metrics.
    registry = CollectorRegistry()
    registry.register(TraceCollector(trace))
    text = generate_latest(registry).decode()
    assert "keyroom_loop_callbacks_total{" in text
    assert 'keyroom_loop_datagram_seconds_total{kind="rtp 96"}' in text
    # The load tester's window over two scrapes: the difference, busiest first.
    before = window_of.parse(text)
    trace.ran(_plain, 0, 3 * MS, 3 * MS)
    trace.ran(_plain, 200 * MS, 200 * MS + 1, 1)  # ends the 3 ms run: a stall
    after = window_of.parse(generate_latest(registry).decode())
    window = window_of.window(before, after)
    assert window is not None
    name = describe(_plain)
    assert window["profile"][name][:2] == [2, 3.0]
    assert window["slow"][name] == [1, 3.0]
    assert window["stalls"] == 1 and window["stall_ms"][name] == 3.0
    assert window_of.window({}, {}) is None


def test_batches_tell_a_burst_of_arrivals_from_a_late_read() -> None:
    trace = Trace(MS)
    trace.batch(64, spread=MS // 2, oldest=MS)  # 64 datagrams that came within 0.5 ms
    trace.batch(64, spread=8 * MS, oldest=9 * MS)  # read 9 ms after the first arrived
    trace.batch(3, spread=0, oldest=0)
    assert trace.batches["64"].count == 2 and trace.batches["2-7"].count == 1
    assert trace.batches["64"].max == 8 * MS
    assert list(trace.late_reads) == ["64"] and trace.late_reads["64"].max == 9 * MS


def test_the_traced_recvmmsg_notes_each_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = Trace(MS)
    monkeypatch.setattr(looptrace, "active", trace)
    stamps = [10, 20, 30]
    results = iter([3, -11])
    recv = looptrace.traced_recv(lambda rx, fd: next(results), stamps)
    assert recv(None, 5) == 3 and recv(None, 5) == -11  # EAGAIN: nothing noted
    assert trace.batches["2-7"].count == 1 and trace.batches["2-7"].total == 20
    monkeypatch.setattr(looptrace, "active", None)
    untraced = looptrace.traced_recv(recv, stamps)
    assert untraced is recv


def test_a_looping_clip_sends_its_keyframe_only_when_asked_if_so_configured() -> None:
    """The load generator's publishers: by default the clip loops back to its keyframe (frame
    0) every pass; with keyframes on request it loops to frame 1, so keyframes come only at the
    start and on PLI (which resets the position to 0 elsewhere)."""
    looping = [0]
    asked = [0]
    for _ in range(7):
        looping.append(next_frame(looping[-1], 3, keyframes_on_request=False))
        asked.append(next_frame(asked[-1], 3, keyframes_on_request=True))
    assert looping == [0, 1, 2, 0, 1, 2, 0, 1, 2][:8]
    assert asked == [0, 1, 2, 1, 2, 1, 2, 1]
    assert next_frame(0, 1, keyframes_on_request=True) == 0  # a one-frame clip: its keyframe


def test_the_arrival_model_shows_the_keyframe_storm_of_looping_clips() -> None:
    """loadtest/arrivals.py: 100 publishers of a 30-frame clip whose keyframe is 3x a frame,
    at ~half the modelled server's capacity: looping keyframes all fall in one frame interval
    every pass and queue for milliseconds; keyframes on request do not."""
    sizes = [27] + [9] * 29
    looping = arrivals.arrivals(sizes, 1 / 15, 100, 0, keyframes_on_request=False, seconds=4)
    asked = arrivals.arrivals(sizes, 1 / 15, 100, 0, keyframes_on_request=True, seconds=4)
    load = len(asked) / 4 * 35e-6
    assert 0.4 < load < 0.6
    _, storm_p99, _ = arrivals.summary(arrivals.waits(looping, 35e-6))
    _, calm_p99, _ = arrivals.summary(arrivals.waits(asked, 35e-6))
    assert storm_p99 > 5 and calm_p99 < 1
    assert arrivals.peak_per_ms(looping) > arrivals.peak_per_ms(asked)


def test_the_server_refuses_to_start_with_a_bad_trace_threshold() -> None:
    env = {**os.environ, "KEYROOM_LOOP_TRACE": "fast"}
    result = subprocess.run(
        [sys.executable, "-m", "sfu", "serve", "--dev", "--host", "127.0.0.1", "--port", "1",
         "--key", "t=test-secret-that-is-long-enough-0123456789"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert "KEYROOM_LOOP_TRACE must be a number of milliseconds, not 'fast'" in result.stderr
