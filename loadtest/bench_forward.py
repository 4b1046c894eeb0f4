"""Forwarding micro-benchmark: CPU per output packet of the forwarding core, beside the floor.

One publisher track fans out to N down-tracks in-process. Input is real SRTP over loopback UDP
from a generator process (its CPU is not counted), at `out_rate / N` packets/s. Each cell runs in
a fresh event loop (asyncio or uvloop) and takes the input one of two ways:
- `fast`: the server's `internals.FastPath` callback (unprotect inside datagram_received);
- `hook`: an emulation of aiortc's stock hand-off that the server used before: the STUN parse
  attempt, aioice's queue, a task awaiting it through two coroutine levels, unprotect, and an
  awaited handler.
- `shared`: the fast path's input, all output through one shared socket (`[rtc] udp_port`),
  one protect and one sendto per copy (the pure-Python path);
- `batched`: the same with the compiled fan-out (sfu/fastpath/batch.py): an input packet's
  copies protected and sent in one sendmmsg, the input read one datagram at a time by the loop;
- `recvmmsg`: what `rtc.fanout = "compiled"` runs: the input socket drained with recvmmsg by one
  reader (sfu/fastpath/receive.py), the copies of every input packet of a receive batch
  protected and sent in one sendmmsg; each copy still made in Python (one `FanoutBatch.add`).
- `compiled`: what `rtc.fanout = "compiled"` runs since issue 14's per-copy loop: `recvmmsg`,
  with every steady down-track's copy rewritten, counted and queued by one call into compiled
  code per input packet (sfu/fastpath/steady.py).
Output goes through the server's own `internals.RtpSink` (SRTP protect + sendto on an aioice
StunProtocol socket), one socket per subscriber (fast, hook) or one for all (shared, batched),
to loopback sockets that are never read.

The floor, measured in the same run and loop: one pylibsrtp protect + one DatagramTransport
sendto per packet, in a tight loop over the same destinations. CPU is this process's user+sys
time (getrusage) over the measured window.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import socket
import statistics
import struct
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as EventType
from types import SimpleNamespace
from typing import Any, cast

import aioice.ice
import aioice.stun
import uvloop
from aiortc.rtcdtlstransport import State
from pylibsrtp import Policy, Session

from sfu import internals
from sfu.fastpath import loader as fastpath_loader
from sfu.fastpath.batch import FanoutBatch
from sfu.forwarder import CodecInfo, DownTrack, PublishedTrack
from sfu.ingress import Ingress
from sfu.stats import Stats

PROFILE = Policy.SRTP_PROFILE_AEAD_AES_128_GCM
KEY = bytes(range(28))  # 16-byte key + 12-byte salt for AES-128-GCM
SSRC = 0x1234ABCD
EXTENSIONS = {
    1: "urn:ietf:params:rtp-hdrext:sdes:mid",
    3: "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
}
# VP8 payload descriptor (start of partition 0) + a keyframe tag: the down-tracks' gate opens.
VP8_KEYFRAME = b"\x10" + b"\x10\x02\x00\x9d\x01\x2a"
WARMUP = 0.5
SHARED_PATHS = ("shared", "batched", "recvmmsg", "compiled")
PATHS = ("fast", "shared", "batched", "recvmmsg", "compiled", "hook")
# The summary's ratios between paths (same run, same loop).
PAIRS = (
    ("batched", "fast"),
    ("recvmmsg", "fast"),
    ("recvmmsg", "batched"),
    ("compiled", "fast"),
    ("compiled", "recvmmsg"),
)
SOCKET_BUFFER = 4 * 1024 * 1024
START_TIMEOUT = 15.0


def _tx_policy() -> Policy:
    # As aiortc's: a forwarder may legitimately send the same sequence number twice (NACK).
    policy = Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILE)
    policy.allow_repeat_tx = True
    return policy


def _packet(seq: int, size: int) -> bytes:
    header = struct.pack("!BBHII", 0x90, 96, seq & 0xFFFF, (seq // 5) * 3000, SSRC)
    ext = struct.pack("!HH", 0xBEDE, 2) + b"\x10" + b"0" + b"\x32" + b"\x00\x01\x02" + b"\x00"
    head = header + ext + VP8_KEYFRAME
    return head + bytes(size - len(head))


def _generate(port: int, rate: float, size: int, stop: EventType, sent: Synchronized[int]) -> None:
    """Send SRTP at `rate` packets/s to 127.0.0.1:`port` until `stop` (at most 60 s)."""
    tx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILE))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = time.perf_counter()
    n = 0
    while not stop.is_set() and (elapsed := time.perf_counter() - start) < 60:
        due = int(elapsed * rate)
        while n < due:
            sock.sendto(tx.protect(_packet(n, size)), ("127.0.0.1", port))
            n += 1
        time.sleep(0.0005)
    sent.value = n


class _Input(asyncio.DatagramProtocol):
    """The input socket: the fast path's callback, or aioice's queue for the hook path."""

    def __init__(self, path: str, queue: asyncio.Queue[bytes]) -> None:
        self.path = path
        self.fast: internals.FastPath | None = None
        self.batch: FanoutBatch | None = None
        self.queue = queue
        self.received = 0
        self.batched_rx = path in ("recvmmsg", "compiled")
        # Until the generator's first datagram: learns its address (see _measure).
        self.learn: Callable[[tuple[Any, ...]], None] | None = None

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received += 1
        if self.learn is not None:
            self.learn(addr)
        batch = self.batch
        if self.batched_rx:  # the batch is opened and flushed per recvmmsg call
            self.fast._datagram_received(_unexpected, data, addr)  # type: ignore[union-attr]
            return
        if batch is not None:  # as the shared socket's reader does (sfu/internals/sharedport.py)
            batch.depth += 1
            self.fast._datagram_received(_unexpected, data, addr)  # type: ignore[union-attr]
            batch.depth -= 1
            batch.flush()
            return
        if self.fast is not None:
            self.fast._datagram_received(_unexpected, data, addr)
            return
        try:  # aioice tries every datagram as STUN first
            aioice.stun.parse_message(data)
        except ValueError:
            self.queue.put_nowait(data)


def _unexpected(data: bytes, addr: tuple[Any, ...]) -> None:
    raise AssertionError("the benchmark sends only SRTP")


async def _shared_output(
    loop: asyncio.AbstractEventLoop, path: str
) -> tuple[asyncio.DatagramTransport, FanoutBatch | None]:
    """The one output socket of the shared-port paths, and the batch of the compiled one."""
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    if path == "shared":
        return transport, None
    module = fastpath_loader.load()
    if module is None:
        raise RuntimeError(f"the compiled fan-out cannot be built: {fastpath_loader.failure()}")
    batch = FanoutBatch(module, sock.fileno(), Stats())
    batch.copies = path == "compiled"  # else one `add` per copy, as before issue 14's loop
    return transport, batch


async def _output_protocol(
    loop: asyncio.AbstractEventLoop,
    shared: tuple[asyncio.DatagramTransport, FanoutBatch | None] | None,
    transports: list[asyncio.BaseTransport],
) -> Any:
    """A subscriber connection's protocol: its own socket, or a view of the shared one."""
    if shared is None:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: aioice.ice.StunProtocol(_NO_CONNECTION),
            local_addr=("127.0.0.1", 0),
        )
        transports.append(transport)
        return protocol
    protocol = aioice.ice.StunProtocol(_NO_CONNECTION)
    protocol.transport = cast(Any, SimpleNamespace(sendto=shared[0].sendto, batch=shared[1]))
    return protocol


async def _fan_out(
    loop: asyncio.AbstractEventLoop,
    track: PublishedTrack,
    fanout: int,
    shared: tuple[asyncio.DatagramTransport, FanoutBatch | None] | None = None,
) -> tuple[list[internals.RtpSink], list[asyncio.BaseTransport], list[socket.socket]]:
    """`fanout` down-tracks of `track`, each sending through the server's own RtpSink to a
    socket that only drains."""
    sinks: list[internals.RtpSink] = []
    transports: list[asyncio.BaseTransport] = []
    drains: list[socket.socket] = []
    for i in range(fanout):
        drain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        drain.bind(("127.0.0.1", 0))
        drains.append(drain)
        protocol = await _output_protocol(loop, shared, transports)
        sink = internals.RtpSink(_fake_dtls(Session(_tx_policy()), protocol, drain.getsockname()))
        down = DownTrack(track, f"PA_sub{i}")
        down.configure(
            sink=sink,
            out_ssrc=1000 + i,
            mid=str(i),
            payload_types={96: 96},
            extensions={uri: n for n, uri in EXTENSIONS.items()},
        )
        track.down_tracks.append(down)
        sinks.append(sink)
    return sinks, transports, drains


def _ingress() -> tuple[Ingress, PublishedTrack]:
    """The server's own ingress with one bound VP8 track, as a publisher's offer leaves it."""
    track = PublishedTrack(
        sid="TR_bench", cid="c", kind="video", source="camera", name="", publisher_sid="PA"
    )
    ingress = Ingress({track.sid: track}, Stats())
    codec = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96)
    ingress.bind(track, "0", SSRC, None, codec, dict(EXTENSIONS))
    return ingress, track


async def _cell(
    path: str, fanout: int, in_rate: float, seconds: float, size: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ingress, track = _ingress()
    shared = await _shared_output(loop, path) if path in SHARED_PATHS else None
    sinks, transports, drains = await _fan_out(loop, track, fanout, shared)
    if shared is not None:
        transports.append(shared[0])
    errors: Counter[str] = Counter()
    rx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=PROFILE))
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    in_transport, protocol_in = await _input(loop, path, queue, shared)
    transports.append(in_transport)
    dtls_in = _fake_dtls(rx, None, ("127.0.0.1", 0))
    if path != "hook":
        protocol_in.fast = internals.FastPath(dtls_in, ingress.on_rtp, errors)
        protocol_in.batch = shared[1] if shared is not None else None
    hook_task = (
        asyncio.ensure_future(_hook_loop(queue, rx, ingress.on_rtp, errors))
        if path == "hook"
        else None
    )
    try:
        port = in_transport.get_extra_info("sockname")[1]
        measured = await _measure(
            loop, protocol_in, dtls_in, lambda: sent_packets(track, sinks), (port, in_rate, size),
            seconds,
        )  # fmt: skip
    finally:
        if hook_task is not None:
            hook_task.cancel()
            await asyncio.gather(hook_task, return_exceptions=True)
        for t in transports:
            t.close()
        for d in drains:
            d.close()
    if shared is not None and shared[1] is not None:
        # Whole cell, warm-up included: what the sinks queued, what sendmmsg sent, in how many.
        stats = shared[1]._stats
        measured["queued_total"] = sent_packets(track, sinks)
        measured["batched_sent_total"] = stats.fanout_packets
        measured["sendmmsg_calls"] = stats.fanout_calls
        measured["recvmmsg_calls"] = getattr(stats, "receive_calls", 0)
    return {
        "path": path,
        "fanout": fanout,
        "in_rate": round(in_rate, 1),
        **measured,
        "errors": dict(errors),
    }


async def _input(
    loop: asyncio.AbstractEventLoop,
    path: str,
    queue: asyncio.Queue[bytes],
    shared: tuple[asyncio.DatagramTransport, FanoutBatch | None] | None,
) -> tuple[Any, _Input]:
    """The input socket: read by the loop's datagram transport, or in batches (recvmmsg)."""
    # Imported here: the other paths also run against an older tree's sfu (an A/B of the
    # forwarding code with this benchmark, docs/benchmarks.md).
    from sfu.fastpath.receive import BatchedSocket

    protocol = _Input(path, queue)
    if path not in ("recvmmsg", "compiled"):
        transport, _ = await loop.create_datagram_endpoint(
            lambda: protocol, local_addr=("127.0.0.1", 0)
        )
        return transport, protocol
    assert shared is not None and shared[1] is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    module = fastpath_loader.load()
    assert module is not None
    batched = BatchedSocket(module, sock, shared[1]._stats)
    batched.start(protocol.datagram_received, shared[1])
    return batched, protocol


def sent_packets(track: PublishedTrack, sinks: list[internals.RtpSink]) -> int:
    """What the sinks queued, the compiled loop's copies included."""
    if track.copies is not None:
        track.copies.sync_all()
    return sum(s.sent_packets for s in sinks)


async def _hook_loop(
    queue: asyncio.Queue[bytes],
    rx: Session,
    on_rtp: Callable[[bytes], None],
    errors: Counter[str],
) -> None:
    """aiortc's own path, emulated: RTCDtlsTransport._recv_next awaits the ICE transport,
    unprotects, and awaits a handler coroutine per packet."""

    async def handler(data: bytes, arrival_time_ms: int = 0) -> None:
        on_rtp(data)

    async def transport_recv() -> bytes:
        return await queue.get()

    while True:
        data = await transport_recv()
        try:
            plain = rx.unprotect(data)
        except Exception:
            errors["srtp_failure"] += 1
            continue
        await handler(plain, 0)


async def _measure(
    loop: asyncio.AbstractEventLoop,
    protocol_in: _Input,
    dtls_in: Any,
    sent_total: Callable[[], int],
    generated: tuple[int, float, int],
    seconds: float,
) -> dict[str, Any]:
    """Run the generator process (to port, at rate, of size) and measure a `seconds` window
    after warm-up."""
    port, in_rate, size = generated
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    sent = ctx.Value("q", 0)
    generator = ctx.Process(target=_generate, args=(port, in_rate, size, stop, sent), daemon=True)
    # The fast path only takes datagrams from the nominated remote address: the generator's,
    # learned from its first datagram.
    first: asyncio.Future[tuple[Any, ...]] = loop.create_future()

    def learn(addr: tuple[Any, ...]) -> None:
        first.set_result(addr)
        dtls_in.transport._connection._nominated[1].remote_addr = addr
        protocol_in.learn = None

    protocol_in.learn = learn
    generator.start()
    try:
        await asyncio.wait_for(first, START_TIMEOUT)
        await asyncio.sleep(WARMUP)
        out0, in0, usage0, t0 = (
            sent_total(),
            protocol_in.received,
            resource.getrusage(resource.RUSAGE_SELF),
            time.perf_counter(),
        )
        await asyncio.sleep(seconds)
        out1, in1, usage1, t1 = (
            sent_total(),
            protocol_in.received,
            resource.getrusage(resource.RUSAGE_SELF),
            time.perf_counter(),
        )
    finally:
        stop.set()
        await loop.run_in_executor(None, generator.join, 10)
        if generator.is_alive():
            generator.kill()
        await asyncio.sleep(0.2)  # what is still in flight arrives
    user, system = usage1.ru_utime - usage0.ru_utime, usage1.ru_stime - usage0.ru_stime
    out = out1 - out0
    return {
        "wall_s": round(t1 - t0, 3),
        "in_packets": in1 - in0,
        "out_packets": out,
        "out_pps": round(out / (t1 - t0)),
        "cpu_percent": round(100 * (user + system) / (t1 - t0), 1),
        "us_per_out": round(1e6 * (user + system) / out, 2) if out else None,
        "us_user_per_out": round(1e6 * user / out, 2) if out else None,
        "us_sys_per_out": round(1e6 * system / out, 2) if out else None,
        "input_lost": max(0, int(sent.value) - protocol_in.received),
        "input_sent": int(sent.value),
    }


async def _floor(fanout: int, packets: int, size: int) -> dict[str, Any]:
    """One protect + one DatagramTransport.sendto per packet, nothing else."""
    loop = asyncio.get_running_loop()
    drains, transports, sessions = [], [], []
    for _ in range(fanout):
        drain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        drain.bind(("127.0.0.1", 0))
        drains.append(drain)
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        transports.append(transport)
        sessions.append(Session(_tx_policy()))
    inputs = [_packet(n, size) for n in range(max(1, packets // fanout))]
    targets = [
        (sessions[i].protect, transports[i].sendto, drains[i].getsockname()) for i in range(fanout)
    ]
    usage0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    count = 0
    for packet in inputs:
        for protect, sendto, addr in targets:
            sendto(protect(packet), addr)
            count += 1
    usage1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for t in transports:
        t.close()
    for d in drains:
        d.close()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return {
        "fanout": fanout,
        "packets": count,
        "us_per_packet": round(1e6 * cpu / count, 2),
        "pps": round(count / (t1 - t0)),
    }


# What a StunProtocol tells its aioice Connection when its socket closes: nothing to do here.
_NO_CONNECTION = cast(Any, SimpleNamespace(protocol_lost=lambda protocol: None))


def _fake_dtls(session: Session, protocol: Any, remote: tuple[Any, ...]) -> Any:
    """The attributes of a connected RTCDtlsTransport that RtpSink and FastPath read."""
    pair = SimpleNamespace(protocol=protocol, remote_addr=remote)
    connection = SimpleNamespace(_nominated={1: pair}, _protocols=[])
    return SimpleNamespace(
        _state=State.CONNECTED,
        _tx_srtp=session,
        _rx_srtp=session,
        transport=SimpleNamespace(_connection=connection),
    )


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def run_cells(
    *,
    fanouts: list[int],
    loops: list[str],
    paths: list[str],
    out_rate: int,
    seconds: float,
    size: int,
    repeat: int = 1,
) -> dict[str, Any]:
    """Every (loop, fan-out) cell: the floor, then each path; with `repeat` > 1 the sequence
    runs again with the paths in reverse order every other time (A B C, C B A, ...), so a
    neighbour's load lands on every path alike."""
    cells = []
    load_before = os.getloadavg()
    for loop_name in loops:
        for fanout in fanouts:
            for rep in range(repeat):
                with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
                    floor = runner.run(_floor(fanout, max(20000, out_rate), size))
                floor.update(loop=loop_name, rep=rep)
                cells.append({"kind": "floor", **floor})
                for path in paths if rep % 2 == 0 else paths[::-1]:
                    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
                        cell = runner.run(_cell(path, fanout, out_rate / fanout, seconds, size))
                    cell.update(loop=loop_name, rep=rep, floor_us=floor["us_per_packet"])
                    if cell["us_per_out"]:
                        cell["ratio_to_floor"] = round(cell["us_per_out"] / cell["floor_us"], 2)
                    cells.append({"kind": "forward", **cell})
    return {
        "out_rate": out_rate,
        "seconds": seconds,
        "size": size,
        "repeat": repeat,
        "srtp_profile": "AEAD_AES_128_GCM",
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cells": cells,
        "summary": summarize(cells),
    }


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (loop, fan-out): each path's median µs per output packet, the floor's, and the
    ratios of each path to the floor and of `batched` and `recvmmsg` to `fast` and to each other
    (same run, same loop)."""
    rows = []
    keys = sorted({(c["loop"], c["fanout"]) for c in cells})
    for loop_name, fanout in keys:
        mine = [c for c in cells if c["loop"] == loop_name and c["fanout"] == fanout]
        floor = statistics.median(c["us_per_packet"] for c in mine if c["kind"] == "floor")
        row: dict[str, Any] = {"loop": loop_name, "fanout": fanout, "floor_us": floor}
        for path in PATHS:
            values = [c["us_per_out"] for c in mine if c.get("path") == path and c["us_per_out"]]
            if values:
                row[path] = round(statistics.median(values), 2)
                row[f"{path}_to_floor"] = round(row[path] / floor, 2)
        for new, old in PAIRS:
            if new in row and old in row:
                row[f"{new}_to_{old}"] = round(row[new] / row[old], 2)
        rows.append(row)
    return rows


def format_results(results: dict[str, Any]) -> str:
    head: tuple[str, ...] = ("loop", "path", "fan-out", "in pps", "out pps", "CPU %", "µs/out")
    head += ("user", "sys", "floor", "ratio", "in lost")
    lines = [
        f"offered {results['out_rate']} out-pps per cell, {results['seconds']} s each,"
        f" {results['size']} B packets, SRTP {results['srtp_profile']},"
        f" {results['repeat']} alternating run(s); load average before"
        f" {results['loadavg_before']}, after {results['loadavg_after']}",
        f"{head[0]:<8} {head[1]:<8}" + "".join(f" {h:>7}" for h in head[2:]),
    ]
    for c in results["cells"]:
        if c["kind"] == "floor":
            continue
        values: tuple[Any, ...] = (c["fanout"], round(c["in_rate"]), c["out_pps"], c["cpu_percent"])
        values += (c["us_per_out"], c["us_user_per_out"], c["us_sys_per_out"], c["floor_us"])
        values += (c.get("ratio_to_floor", "-"), c["input_lost"])
        lines.append(f"{c['loop']:<8} {c['path']:<8}" + "".join(f" {v!s:>7}" for v in values))
    lines.append("medians, µs per output packet (ratio to the protect+sendto floor):")
    for row in results["summary"]:
        parts = [f"floor {row['floor_us']}"]
        parts += [f"{p} {row[p]} ({row[p + '_to_floor']}x)" for p in PATHS if p in row]
        for new, old in PAIRS:
            if f"{new}_to_{old}" in row:
                parts.append(f"{new}/{old} {row[f'{new}_to_{old}']}")
        lines.append(f"  {row['loop']:<8} fan-out {row['fanout']:>3}: " + ", ".join(parts))
    return "\n".join(lines)
