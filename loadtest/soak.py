"""A soak: churn with media for a long time, then a verdict on whether the server stayed flat.

Each room keeps one steady call (a video publisher and a subscriber that drains every track it
gets) for the whole run. Around it, cycle after cycle, every room sees: a participant that joins,
publishes, unpublishes, publishes again and leaves; one that drops its connection without a
word and joins again under the same identity (taking its parked session over); and a signaling
client that joins, loses its socket and resumes it (PROTOCOL 2.7). Between cycles, once only the
steady calls remain, the server's RSS, open fds, tasks, UDP sockets and peer connections are
sampled: comparing quiescent instants compares like with like.

The verdict: after `warmup`, no sample's RSS or fds exceed the first quiescent sample after
warm-up by more than `tolerance`, tasks do not grow (same tolerance), and the steady
subscribers kept receiving frames.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from loadtest.procstat import rss_bytes
from loadtest.target import Target
from signaling.client import FrameCounter, KeyroomClient, KeyroomError, RemoteTrack, SessionClosed
from signaling.media import SyntheticAudioTrack, SyntheticVideoTrack

STEP_TIMEOUT = 15.0  # one join, publish or leave
QUIET_TIMEOUT = 10.0  # for the churners of a cycle to be gone from the server


@dataclass(frozen=True)
class SoakPlan:
    duration: float  # seconds of churn
    warmup: float  # seconds before the baseline sample
    sample_interval: float = 10.0
    rooms: int = 2
    tolerance: float = 0.10


@dataclass
class SoakSample:
    t: float  # seconds since the start
    cycles: int
    rss_mib: float
    fds: int
    tasks: int
    udp_sockets: int
    peer_connections: int
    participants: int
    frames: int  # received by the steady subscribers so far
    task_kinds: dict[str, int] = field(default_factory=dict, repr=False)


@dataclass
class SoakResult:
    plan: SoakPlan
    samples: list[SoakSample] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cycles: int = 0
    failures: list[str] = field(default_factory=list)
    # A steady call's session that the server ended: (identity, close code, cycles then).
    ended: list[tuple[str, int | None, int]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def baseline(self) -> SoakSample | None:
        """The first sample taken after the warm-up."""
        return next((s for s in self.samples if s.t >= self.plan.warmup), None)

    def judge(self) -> None:
        """Fill `failures`: what grew past the tolerance after warm-up, or stopped flowing."""
        for identity, code, cycles in self.ended:
            self.failures.append(
                f"steady participant {identity} was disconnected (close code {code})"
                f" after {cycles} churn cycles"
            )
        base = self.baseline()
        if base is None:
            self.failures.append("no sample after the warm-up: run longer")
            return
        later = [s for s in self.samples if s.t > base.t]
        if not later:
            self.failures.append("one sample after the warm-up only: run longer")
        bound = 1 + self.plan.tolerance
        for name in ("rss_mib", "fds", "tasks"):
            top = max((getattr(s, name) for s in later), default=getattr(base, name))
            if top > getattr(base, name) * bound:
                self.failures.append(
                    f"{name} grew from {getattr(base, name)} to {top}"
                    f" (more than {self.plan.tolerance:.0%})"
                )
        if later and later[-1].tasks > base.tasks * bound:
            grown = Counter(later[-1].task_kinds)
            grown.subtract(base.task_kinds)
            self.failures.append(
                "tasks that grew: "
                + ", ".join(f"{kind} +{n}" for kind, n in grown.most_common(5) if n > 0)
            )
        if later and later[-1].frames <= base.frames:
            self.failures.append("the steady subscribers received no frame after the warm-up")
        if self.cycles < 2:
            self.failures.append(f"only {self.cycles} churn cycles")

    def as_json(self) -> dict[str, Any]:
        return {
            "plan": asdict(self.plan),
            "cycles": self.cycles,
            "errors": dict(self.errors),
            "ended": self.ended,
            "samples": [asdict(s) for s in self.samples],
            "passed": self.passed,
            "failures": self.failures,
        }

    def format(self) -> str:
        lines = [
            f"{'t s':>7} {'cycles':>6} {'rss MiB':>8} {'fds':>5} {'tasks':>6} {'udp':>5}"
            f" {'pcs':>4} {'parts':>5} {'frames':>7}"
        ]
        base = self.baseline()
        for s in self.samples:
            mark = " <- baseline" if s is base else ""
            lines.append(
                f"{s.t:7.0f} {s.cycles:6d} {s.rss_mib:8.1f} {s.fds:5d} {s.tasks:6d}"
                f" {s.udp_sockets:5d} {s.peer_connections:4d} {s.participants:5d}"
                f" {s.frames:7d}{mark}"
            )
        if self.errors:
            lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())))
        lines.append(f"cycles: {self.cycles}")
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        lines.append(f"verdict: {verdict}")
        return "\n".join(lines)


class SteadyCall:
    """A room's call that lasts the whole soak: its subscriber drains every track it gets."""

    def __init__(self, target: Target, room: str) -> None:
        self.publisher = KeyroomClient(target.url, target.token(f"{room}-pub", room))
        self.subscriber = KeyroomClient(target.url, target.token(f"{room}-sub", room))
        # By aiortc track: a recycled section is reported again on the same track.
        self._counters: dict[int, FrameCounter] = {}
        self.subscriber.on("track", self._on_track)

    def _on_track(self, remote: RemoteTrack) -> None:
        if id(remote.track) not in self._counters:
            self._counters[id(remote.track)] = FrameCounter(remote.track)

    def ended(self) -> list[tuple[str, int | None]]:
        """The steady sessions the server ended: (identity, close code)."""
        return [
            (str(c.participant.get("identity")), c.close_code)
            for c in (self.publisher, self.subscriber)
            if c.close_code is not None
        ]

    @property
    def frames(self) -> int:
        return sum(c.count for c in self._counters.values())

    async def start(self) -> None:
        await self.publisher.connect(STEP_TIMEOUT)
        await self.subscriber.connect(STEP_TIMEOUT)
        await self.publisher.publish(SyntheticVideoTrack(), source="camera")
        await self.subscriber.next_track(STEP_TIMEOUT)

    async def stop(self) -> None:
        for counter in self._counters.values():
            await counter.stop()
        await asyncio.gather(self.publisher.leave(), self.subscriber.leave())


async def publish_cycle(target: Target, room: str, n: int) -> None:
    """Join, publish, unpublish, publish again, leave."""
    client = KeyroomClient(
        target.url, target.token(f"{room}-churn-{n}", room), auto_subscribe=False
    )
    try:
        await client.connect(STEP_TIMEOUT)
        first = await client.publish(SyntheticVideoTrack(), source="camera")
        await client.unpublish(first["sid"])
        await client.publish(SyntheticAudioTrack(), source="microphone")
    finally:
        await client.leave()


async def reconnect_cycle(target: Target, room: str, n: int) -> None:
    """Join with media, drop the connection without a word, join again (takeover), leave."""
    identity = f"{room}-crash-{n}"
    crashed = KeyroomClient(target.url, target.token(identity, room), auto_subscribe=False)
    try:
        await crashed.connect(STEP_TIMEOUT)
        await crashed.publish(SyntheticAudioTrack(), source="microphone")
    finally:
        await crashed.close()
    again = KeyroomClient(target.url, target.token(identity, room), auto_subscribe=False)
    try:
        await again.connect(STEP_TIMEOUT)
    finally:
        await again.leave()


async def resume_cycle(target: Target, room: str, n: int) -> None:
    """A signaling-only participant: join, lose the socket, resume on a new one, leave."""
    token = target.token(f"{room}-resume-{n}", room)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(target.url) as ws:
            await ws.send_json({"type": "join", "req": 1, "token": token})
            joined = await _reply(ws, 1)
        async with http.ws_connect(target.url) as ws:
            await ws.send_json({"type": "resume", "req": 2, "resume_token": joined["resume_token"]})
            await _reply(ws, 2)
            await ws.send_json({"type": "leave", "req": 3})
            await _reply(ws, 3)


async def _reply(ws: aiohttp.ClientWebSocketResponse, req: int) -> dict[str, Any]:
    """The server's reply to request `req` (events before it are skipped)."""
    while True:
        message = await ws.receive(timeout=STEP_TIMEOUT)
        if message.type != aiohttp.WSMsgType.TEXT:
            raise SessionClosed(ws.close_code, None)
        frame: dict[str, Any] = json.loads(message.data)
        if frame.get("req") == req:
            if frame.get("type") == "error":
                raise KeyroomError(str(frame.get("code")), str(frame.get("message", "")), frame)
            return frame


CYCLES: tuple[tuple[str, Callable[[Target, str, int], Any]], ...] = (
    ("publish", publish_cycle),
    ("reconnect", reconnect_cycle),
    ("resume", resume_cycle),
)


async def run_soak(
    target: Target, plan: SoakPlan, say: Callable[[str], None] = lambda _: None
) -> SoakResult:
    """Churn for `plan.duration` seconds around steady calls; sample between cycles."""
    if target.pid is None or not target.dev:
        raise ValueError("a soak samples the server: it needs its pid and /debug/runtime (dev)")
    loop = asyncio.get_running_loop()
    result = SoakResult(plan)
    # Churners that drop their connection leave aiortc client tasks failing in the background
    # ("Task exception was never retrieved"): counted as client noise, not printed.
    loop.set_exception_handler(
        lambda _, context: result.errors.update(
            [f"client:{type(context.get('exception')).__name__}"]
        )
    )
    rooms = [f"soak-{os.getpid()}-{r}" for r in range(plan.rooms)]
    calls = [SteadyCall(target, room) for room in rooms]
    await asyncio.gather(*(call.start() for call in calls))
    steady = 2 * len(calls)
    start = loop.time()
    next_sample = start
    try:
        while (now := loop.time()) < start + plan.duration:
            if now >= next_sample:
                sample = await _sample(target, result.cycles, now - start, calls, steady)
                result.samples.append(sample)
                say(_sample_line(sample))
                next_sample += plan.sample_interval
            await _cycle(target, rooms, result)
            _note_ended(calls, result)
        result.samples.append(
            await _sample(target, result.cycles, loop.time() - start, calls, steady)
        )
        say(_sample_line(result.samples[-1]))
    finally:
        await asyncio.gather(*(call.stop() for call in calls), return_exceptions=True)
        loop.set_exception_handler(None)
    result.judge()
    return result


def _note_ended(calls: list[SteadyCall], result: SoakResult) -> None:
    known = {identity for identity, _, _ in result.ended}
    for call in calls:
        for identity, code in call.ended():
            if identity not in known:
                result.ended.append((identity, code, result.cycles))


async def _cycle(target: Target, rooms: list[str], result: SoakResult) -> None:
    """One churn cycle in every room at once; a failed step is counted, not fatal."""
    n = result.cycles
    jobs = [(name, run(target, room, n)) for room in rooms for name, run in CYCLES]
    outcomes = await asyncio.gather(
        *(asyncio.wait_for(job, 4 * STEP_TIMEOUT) for _, job in jobs), return_exceptions=True
    )
    for (name, _), outcome in zip(jobs, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            result.errors[f"{name}:{type(outcome).__name__}"] += 1
    result.cycles += 1


async def _sample(
    target: Target, cycles: int, t: float, calls: list[SteadyCall], steady: int
) -> SoakSample:
    """The server's state once only the steady calls remain (bounded wait)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + QUIET_TIMEOUT
    runtime: dict[str, Any] = {}
    previous: dict[str, Any] = {}
    # Quiet: only the steady calls left and the counts settled (a closed connection's sockets
    # and tasks go a moment after its participant).
    while loop.time() < deadline and not (
        runtime.get("participants") == steady and _settled(previous) == _settled(runtime)
    ):
        previous = runtime
        await asyncio.sleep(0.5)
        runtime = await _runtime(target)
    pid = target.pid
    assert pid is not None
    return SoakSample(
        t=round(t, 1),
        cycles=cycles,
        rss_mib=round(rss_bytes(pid) / 2**20, 1),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        tasks=int(runtime.get("tasks", 0)),
        udp_sockets=int(runtime.get("udp_sockets", 0)),
        peer_connections=int(runtime.get("peer_connections", 0)),
        participants=int(runtime.get("participants", 0)),
        frames=sum(call.frames for call in calls),
        task_kinds=dict(runtime.get("task_kinds", {})),
    )


def _settled(runtime: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(runtime.get(k) for k in ("tasks", "udp_sockets", "open_fds", "peer_connections"))


async def _runtime(target: Target) -> dict[str, Any]:
    # In a thread: the request must not stall the clients' loop.
    return await asyncio.to_thread(target.runtime) or {}


def _sample_line(s: SoakSample) -> str:
    return (
        f"t={s.t:.0f}s cycles={s.cycles} rss={s.rss_mib} MiB fds={s.fds} tasks={s.tasks}"
        f" udp={s.udp_sockets} pcs={s.peer_connections} participants={s.participants}"
        f" frames={s.frames}"
    )


def main_soak(minutes: float, warmup_minutes: float, sample_interval: float, as_json: bool) -> int:
    """`keyroom soak`: spawn a dev server, soak it, print the samples and the verdict."""
    import sys

    import uvloop

    from loadtest.runner import default_log_dir
    from loadtest.target import spawned_server
    from sfu.iceaddr import restrict_host_addresses

    restrict_host_addresses(["127.0.0.1"])
    plan = SoakPlan(
        duration=minutes * 60, warmup=warmup_minutes * 60, sample_interval=sample_interval
    )

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with spawned_server(default_log_dir()) as target:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(run_soak(target, plan, say))
    print(json.dumps(result.as_json(), indent=2) if as_json else result.format())
    return 0 if result.passed else 1
