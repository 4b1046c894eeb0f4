"""The forwarding core with warm caches: CPU per input packet with no event loop wake-up.

`keyroom bench --tight`: the same ingress, down-tracks and sinks as `keyroom bench` (the server's
own `Ingress.on_rtp`, `DownTrack.forward`, `RtpSink`), but SRTP input packets protected in
advance are handed to the input callback in a tight loop, back to back. What this measures is
the code's own cost per input packet and per copy; `keyroom bench` at a light input rate adds a
loop wake-up per packet and runs the same code with caches gone cold between packets, which
costs several times as much on a shared VM (docs/benchmarks.md, issue 14).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import Counter
from typing import Any

import uvloop
from pylibsrtp import Policy, Session

from loadtest import bench_forward as bf
from sfu import internals

PATHS = ("fast", "shared", "batched", "compiled")
CHUNK = 1000
WARMUP = 200
PEER = ("127.0.0.1", 9)


async def _tight(path: str, fanout: int, chunks: int, size: int) -> list[float]:
    """CPU µs per input packet of each chunk of CHUNK packets."""
    loop = asyncio.get_running_loop()
    ingress, track = bf._ingress()
    shared = await bf._shared_output(loop, path) if path in bf.SHARED_PATHS else None
    sinks, transports, drains = await bf._fan_out(loop, track, fanout, shared)
    rx = Session(Policy(key=bf.KEY, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=bf.PROFILE))
    tx = Session(Policy(key=bf.KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=bf.PROFILE))
    errors: Counter[str] = Counter()
    protocol = bf._Input(path, asyncio.Queue())
    protocol.fast = internals.FastPath(bf._fake_dtls(rx, None, PEER), ingress.on_rtp, errors)
    protocol.batch = shared[1] if shared is not None else None
    packets = [tx.protect(bf._packet(n, size)) for n in range(WARMUP + chunks * CHUNK)]
    per_input = []
    try:
        for packet in packets[:WARMUP]:
            protocol.datagram_received(packet, PEER)
        for k in range(chunks):
            chunk = packets[WARMUP + k * CHUNK : WARMUP + (k + 1) * CHUNK]
            start = time.process_time()
            for packet in chunk:
                protocol.datagram_received(packet, PEER)
            per_input.append(1e6 * (time.process_time() - start) / CHUNK)
    finally:
        for t in transports + ([shared[0]] if shared is not None else []):
            t.close()
        for d in drains:
            d.close()
    if errors or bf.sent_packets(track, sinks) < fanout * len(packets) * 0.99:
        raise RuntimeError(f"{path}: not every input forwarded ({dict(errors)})")
    return per_input


def run_tight(
    *, fanouts: list[int], paths: list[str], chunks: int, size: int, repeat: int
) -> dict[str, Any]:
    """Every (fan-out, path), `repeat` times alternating the path order; median and best chunk."""
    load_before = os.getloadavg()
    rows = []
    for fanout in fanouts:
        samples: dict[str, list[float]] = {p: [] for p in paths}
        for rep in range(repeat):
            for path in paths if rep % 2 == 0 else paths[::-1]:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    samples[path] += runner.run(_tight(path, fanout, chunks, size))
        for path in paths:
            median, best = statistics.median(samples[path]), min(samples[path])
            rows.append(
                {
                    "fanout": fanout,
                    "path": path,
                    "us_per_input": round(median, 2),
                    "us_per_out": round(median / fanout, 2),
                    "best_us_per_input": round(best, 2),
                    "chunks": len(samples[path]),
                }
            )
    return {
        "size": size,
        "chunk": CHUNK,
        "repeat": repeat,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }


def format_tight(results: dict[str, Any]) -> str:
    lines = [
        f"warm, no loop wake-ups: {results['chunk']}-packet chunks, {results['size']} B,"
        f" {results['repeat']} alternating run(s); load average before"
        f" {results['loadavg_before']}, after {results['loadavg_after']}",
        f"{'fan-out':>7} {'path':<8} {'µs/input':>9} {'µs/out':>7} {'best/input':>10}",
    ]
    for r in results["rows"]:
        lines.append(
            f"{r['fanout']:>7} {r['path']:<8} {r['us_per_input']:>9} {r['us_per_out']:>7}"
            f" {r['best_us_per_input']:>10}"
        )
    return "\n".join(lines)
