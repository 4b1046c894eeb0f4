"""Runs a load-test scenario against a keyroom server and builds its report.

Phases: publishers join and start replaying, subscribers join (both at `joins_per_second`), then
`duration` seconds of measurement (churn and bad-token joins happen here), then publishers stop,
in-flight packets drain, and every client leaves. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import secrets
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from auth.tokens import mint_token
from loadtest.clients import Latencies, LoadClient, PlainSubscriber, Publisher, Subscriber
from loadtest.clip import Clip, encode_audio_clip, encode_video_clip
from loadtest.procstat import ProcessSampler
from loadtest.report import ForwardHistogram, build_report
from loadtest.scenarios import Scenario
from loadtest.spawn import free_port, spawned
from signaling.client import KeyroomClient, KeyroomError, SessionClosed

JOIN_TIMEOUT = 10.0
LEAVE_TIMEOUT = 5.0
DRAIN_SECONDS = 1.0
# A subscriber session shorter than this at the end is not expected to have every track yet.
SETTLE_SECONDS = 3.0
BAD_TOKEN_KINDS = ("bad_signature", "expired", "unknown_key", "garbage")


@dataclass
class Target:
    url: str  # ws://host:port/rtc
    key: str
    secret: str
    pid: int | None  # the server's, for CPU/RSS sampling
    dev: bool  # /debug/runtime is available
    name: str = "keyroom"
    # How a participant talks to this server (a baseline's adapter, else keyroom's client).
    client_factory: Callable[[str, str, bool], LoadClient] = lambda url, token, subscribe: (
        KeyroomClient(url, token, auto_subscribe=subscribe)
    )
    # Whether packets reach subscribers byte for byte (a forwarding SFU), so the publishers'
    # trailer gives loss and latency; a re-encoding server gets `PlainSubscriber`s instead.
    forwards_payloads: bool = True
    # keyroom's `GET /metrics` (its `keyroom_forward_seconds` histogram gives the server-side
    # forwarding time); None for a server without it (the baselines).
    metrics_path: str | None = "/metrics"
    metrics_token: str | None = None  # `[metrics] bearer_token`, when the server has one

    def token(self, identity: str, room: str, **overrides: Any) -> str:
        return mint_token(
            key_id=overrides.get("key", self.key),
            secret=overrides.get("secret", self.secret),
            identity=identity,
            room=room,
            ttl=overrides.get("ttl", 3600),
            now=overrides.get("now", time.time()),
        )

    def bad_token(self, kind: str, identity: str, room: str) -> str:
        if kind == "bad_signature":
            return self.token(identity, room, secret=self.secret + "x")
        if kind == "expired":
            return self.token(identity, room, ttl=60, now=time.time() - 7200)
        if kind == "unknown_key":
            return self.token(identity, room, key="no-such-key")
        return secrets.token_urlsafe(48)

    def runtime(self) -> dict[str, Any] | None:
        if not self.dev:
            return None
        http = self.url.replace("ws://", "http://", 1).removesuffix("/rtc")
        try:
            with urllib.request.urlopen(http + "/debug/runtime", timeout=5) as response:
                import json

                data: dict[str, Any] = json.loads(response.read())
                return data
        except OSError:
            return None

    def forward_histogram(self) -> ForwardHistogram | None:
        """The server's `keyroom_forward_seconds` histogram now, or None if it cannot be read."""
        if self.metrics_path is None:
            return None
        http = self.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        request = urllib.request.Request(http.removesuffix("/rtc") + self.metrics_path)
        if self.metrics_token:
            request.add_header("Authorization", f"Bearer {self.metrics_token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        return ForwardHistogram.parse(text)


@contextlib.contextmanager
def spawned_server(log_dir: str) -> Iterator[Target]:
    """A `keyroom serve --dev` on a free loopback port with a fresh key, stopped on exit."""
    port = free_port()
    key, secret = "loadtest", secrets.token_urlsafe(32)
    command = [
        sys.executable, "-m", "sfu", "serve", "--dev", "--host", "127.0.0.1", "--port", str(port),
        "--rtc-ip", "127.0.0.1", "--key", f"{key}={secret}", "--log-level", "warning",
    ]  # fmt: skip
    log_path = os.path.join(log_dir, f"server-{port}.log")
    with spawned(command, port, log_path, "server") as pid:
        yield Target(f"ws://127.0.0.1:{port}/rtc", key, secret, pid, dev=True)


@dataclass
class Run:
    scenario: Scenario
    target: Target
    # One name per room (`scenario.rooms`), filled in on creation.
    rooms: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: Latencies = field(default_factory=Latencies)
    publishers: list[Publisher] = field(default_factory=list)
    subscribers: list[Subscriber] = field(default_factory=list)
    join_ms: list[float] = field(default_factory=list)
    auth: Counter[str] = field(default_factory=Counter)
    measure_start_ns: int = 0
    measure_end_ns: int = 0
    # The same instants in event-loop time, to pick the server samples of the measured phase.
    measure_start: float = 0.0
    measure_end: float = 0.0
    # (packets, bytes received by all subscribers, keyframe requests publishers got) at each
    # instant: rates are of the measured phase only, not of the joins before it.
    counts_at_start: tuple[int, int, int] = (0, 0, 0)
    counts_at_end: tuple[int, int, int] = (0, 0, 0)
    # Per-room latency samples, only when there are several rooms (one more reservoir per
    # received packet otherwise for nothing).
    room_latencies: dict[str, Latencies] = field(default_factory=dict)
    # How late the generator's event loop woke from a short sleep in the measured phase (ms):
    # a received datagram can wait that long before its latency is taken.
    loop_lag_ms: list[float] = field(default_factory=list)
    # The generator's garbage-collection pauses in the measured phase (ms), one per collection.
    gc_pauses_ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.rooms:
            prefix = f"loadtest-{secrets.token_hex(3)}"
            count = max(1, self.scenario.rooms)
            self.rooms = [prefix] if count == 1 else [f"{prefix}-{r}" for r in range(count)]
        if len(self.rooms) > 1:
            origin = self.latencies.origin_ns
            self.room_latencies = {room: Latencies(origin_ns=origin) for room in self.rooms}

    @property
    def room(self) -> str:
        return self.rooms[0]

    def counts(self) -> tuple[int, int, int]:
        streams = [st for sub in self.subscribers for st in sub.streams.values()]
        return (
            sum(st.packets for st in streams),
            sum(st.bytes for st in streams),
            sum(p.keyframe_requests for p in self.publishers),
        )

    async def join(self, identity: str, token: str, auto_subscribe: bool) -> LoadClient | None:
        client = self.target.client_factory(self.target.url, token, auto_subscribe)
        started = time.monotonic()
        try:
            await client.connect(timeout=JOIN_TIMEOUT)
        except KeyroomError as exc:
            self.errors[f"join:{exc.code}"] += 1
            return None
        except (TimeoutError, SessionClosed, OSError) as exc:
            self.errors[f"join:{type(exc).__name__}"] += 1
            return None
        self.join_ms.append(1000 * (time.monotonic() - started))
        return client

    async def add_publisher(self, n: int, clip: Clip, room: str) -> None:
        identity = f"pub-{n}"
        client = await self.join(identity, self.target.token(identity, room), False)
        if client is None:
            return
        publisher = Publisher(
            client, clip, n, self.errors, self.target.forwards_payloads, room=room
        )
        try:
            await publisher.start()
        except (KeyroomError, TimeoutError, ConnectionError, SessionClosed, RuntimeError) as exc:
            self.errors[f"publish:{type(exc).__name__}"] += 1
            await _leave(client, self.errors)
            return
        self.publishers.append(publisher)

    async def add_subscriber(self, n: int, room: str) -> Subscriber | None:
        identity = f"sub-{n}"
        started = time.monotonic_ns()
        client = await self.join(identity, self.target.token(identity, room), True)
        if client is None:
            return None
        kind = Subscriber if self.target.forwards_payloads else PlainSubscriber
        subscriber = kind(client, self.latencies, self.errors, room, self.room_latencies.get(room))
        subscriber.join_started_ns = started
        try:
            await subscriber.start()
        except (TimeoutError, ConnectionError, SessionClosed) as exc:
            self.errors[f"subscribe:{type(exc).__name__}"] += 1
        self.subscribers.append(subscriber)
        return subscriber

    async def bad_join(self, n: int) -> None:
        kind = BAD_TOKEN_KINDS[n % len(BAD_TOKEN_KINDS)]
        room = self.rooms[n % len(self.rooms)]
        client = KeyroomClient(self.target.url, self.target.bad_token(kind, f"bad-{n}", room))
        self.auth["attempts"] += 1
        try:
            await client.connect(timeout=JOIN_TIMEOUT)
        except KeyroomError as exc:
            self.auth[f"refused:{exc.code}:{exc.close_code}"] += 1
            return
        except (TimeoutError, SessionClosed, OSError) as exc:
            self.errors[f"bad_join:{type(exc).__name__}"] += 1
            return
        self.errors[f"bad_token_accepted:{kind}"] += 1
        await _leave(client, self.errors)


async def _leave(client: LoadClient, errors: Counter[str]) -> None:
    try:
        async with asyncio.timeout(LEAVE_TIMEOUT):
            await client.leave()
    except TimeoutError:
        errors["leave:timeout"] += 1
        await client.close()


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
            asyncio.ensure_future(p.run(send_until, scenario.loss)) for p in run.publishers
        ]
        await _each_room(
            run,
            lambda r, room: [
                run.add_subscriber(r * scenario.subscribers + n, room)
                for n in range(scenario.subscribers)
            ],
        )
        # In a thread: the scrape must not stall the generator's loop (and its latencies).
        forward_before = await asyncio.to_thread(target.forward_histogram)
        run.measure_start_ns, run.measure_start = time.monotonic_ns(), loop.time()
        run.counts_at_start = run.counts()
        cpu_before = _own_cpu()
        lag_task = asyncio.ensure_future(_lag_probe(run, loop.time() + scenario.duration))
        with _gc_pauses(run.gc_pauses_ms):
            await _measure(run, loop.time() + scenario.duration, progress)
        await asyncio.gather(lag_task, return_exceptions=True)
        own_cpu = _own_cpu() - cpu_before
        run.measure_end_ns, run.measure_end = time.monotonic_ns(), loop.time()
        run.counts_at_end = run.counts()
        forward_after = await asyncio.to_thread(target.forward_histogram)
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
        forward=forward_after.minus(forward_before) if forward_before and forward_after else None,
    )
    clients = [p.client for p in run.publishers] + [
        s.client for s in run.subscribers if not s.ended
    ]
    await asyncio.gather(*(_leave(c, run.errors) for c in clients))
    report["errors"] = dict(run.errors)
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
    await _leave(leaving.client, run.errors)
    await run.add_subscriber(n, leaving.room)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def default_log_dir() -> str:
    return tempfile.mkdtemp(prefix="keyroom-loadtest-")
