"""Fan-out workers at saturation (`[rtc] fanout_workers`): output packets per second of one
room's fan-out with 1 worker and with N, in the same run.

`python -m loadtest.fanoutbench [--subscribers 200] [--workers 1,2] [--seconds 5] [--red]`

The real worker processes (sfu/fanout/worker.py, started as the server starts them) get one
video track and their share of `--subscribers` subscribers, each with its own SRTP session and
address (loopback sink sockets nobody reads: the kernel drops what overflows, in the sender's
system call as it would for a real peer). The feeder sends 1,200-byte RTP packets to every
worker as fast as their sockets take them (blocking: the workers set the pace), so the rate
measured is what the workers forward: copies per second, from their own reports (the kernel's
monotonic clock, shared by every process), over the measured window after a warm-up. Printed
with the workers' and the feeder's CPU and the load average before and after: a shared machine
shows in them.

`--red`: one audio track the publisher sends RED on (Opus as 111, each 20 ms frame of 80 bytes
with the one before), every subscriber a RED subscriber whose Opus is 96, so each copy's block
headers are renamed (sfu/redtrack.py in the worker, its compiled `RedCopies` loop with
`--fanout compiled`); `red pps` counts those copies.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import subprocess
import time
from typing import Any

from loadtest.procstat import cpu_seconds
from sfu.fanout import wire
from sfu.fanout.handoff import spawn_worker
from sfu.fastpath import loader
from sfu.forwarder import CodecInfo
from sfu.red import wrap
from sfu.rtprewrite import RtpRewriter

PROFILE = 1  # SRTP_AES128_CM_SHA1_80, as most browsers negotiate
PAYLOAD = b"\x10\x00" + bytes(1188)  # VP8, every packet a "keyframe": no wait
SINKS = 16  # loopback sockets the subscribers' copies go to (distinct ports)
WARMUP = 1.0
TRACK = 1
# --red: the publisher's RED and Opus payload types (Chromium's), the subscribers' Opus.
RED_PT, OPUS_PT, SUBSCRIBER_OPUS = 63, 111, 96
RED_CODEC = CodecInfo("audio/opus", 48000, OPUS_PT, red_payload_type=RED_PT)
OPUS_FRAME = bytes(range(80))


def _rewriter(i: int, red: bool) -> RtpRewriter:
    return RtpRewriter(
        out_ssrc=0x10000 + i,
        pt_map={OPUS_PT: SUBSCRIBER_OPUS, RED_PT: RED_PT} if red else {96: 96},
        ext_map={},
        mid_ext_id=None,
        mid="0",
        seq_start=i * 97,
        ts_start=0,
    )


def _packet(seq: int, red: bool) -> bytes:
    if red:
        header = bytes((0x80, RED_PT)) + (seq & 0xFFFF).to_bytes(2, "big")
        payload = wrap(OPUS_PT, OPUS_FRAME, [(OPUS_PT, 960, OPUS_FRAME)])
        return header + ((seq * 960) & 0xFFFFFFFF).to_bytes(4) + (0xABCD).to_bytes(4) + payload
    header = bytes((0x80, 96)) + (seq & 0xFFFF).to_bytes(2, "big")
    return header + ((seq * 3000) & 0xFFFFFFFF).to_bytes(4, "big") + (0xABCD).to_bytes(4) + PAYLOAD


class Setup:
    """The sink sockets, the workers' UDP socket, and the workers of one measurement."""

    def __init__(self, subscribers: int, workers: int, fanout: str, red: bool = False) -> None:
        self.red = red
        self.sinks = []
        for _ in range(SINKS):
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sink.bind(("127.0.0.1", 0))
            self.sinks.append(sink)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.udp.setblocking(False)
        spawned = [spawn_worker({"127.0.0.1": self.udp.fileno()}, fanout) for _ in range(workers)]
        self.processes: list[subprocess.Popen[bytes]] = [p for p, _ in spawned]
        self.channels: list[socket.socket] = [c for _, c in spawned]
        for index, share in enumerate(wire.split(range(subscribers), workers)):
            channel = self.channels[index]
            if red:
                channel.send(wire.encode_control(wire.TRACK, TRACK, "audio", "audio/opus"))
                channel.send(wire.encode_control(wire.CODEC, TRACK, RED_CODEC))
            else:
                channel.send(wire.encode_control(wire.TRACK, TRACK, "video", "video/VP8"))
            opus = SUBSCRIBER_OPUS if red else None
            for i in share:
                remote = self.sinks[i % SINKS].getsockname()
                key = os.urandom(30)
                channel.send(
                    wire.encode_control(wire.SESSION, f"s{i}", key, PROFILE, "127.0.0.1", remote)
                )
                state = wire.DownState(_rewriter(i, red), None, not red, False, 0x10000 + i)
                message = wire.encode_control(wire.DOWN, i + 1, f"s{i}", TRACK, state, opus)
                channel.send(message)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()  # the workers read end of file and exit
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
        for sock in (*self.sinks, self.udp):
            sock.close()


def measure(
    subscribers: int, workers: int, seconds: float, fanout: str, red: bool = False
) -> dict[str, Any]:
    setup = Setup(subscribers, workers, fanout, red)
    try:
        return _drive(setup, seconds)
    finally:
        setup.close()


def _drive(setup: Setup, seconds: float) -> dict[str, Any]:
    selector = selectors.DefaultSelector()
    for index, channel in enumerate(setup.channels):
        channel.setblocking(False)
        selector.register(channel, selectors.EVENT_READ | selectors.EVENT_WRITE, index)
    latest: list[wire.WorkerCounters] = [wire.WorkerCounters() for _ in setup.channels]
    first: list[wire.WorkerCounters | None] = [None] * len(setup.channels)
    pending = [b""] * len(setup.channels)  # the packet a full socket refused, resent first
    seq = 0
    start = time.monotonic()
    window_start, window_end = start + WARMUP, start + WARMUP + seconds
    cpu_start: list[float] = []
    while True:
        now = time.monotonic()
        if now >= window_end and all(
            b is not None and c.at >= window_end and c.at > b.at
            for b, c in zip(first, latest, strict=True)
        ):
            break
        if now > window_end + 5:
            raise RuntimeError("the workers stopped reporting")
        if not cpu_start and now >= window_start:
            cpu_start = [cpu_seconds(p.pid) for p in setup.processes] + [cpu_seconds(os.getpid())]
        packet = wire.packet_header(TRACK) + _packet(seq, setup.red)
        for key, events in selector.select(1.0):
            index = key.data
            channel = setup.channels[index]
            if events & selectors.EVENT_READ:
                _read_reports(channel, index, latest, first, window_start)
            if events & selectors.EVENT_WRITE:
                try:
                    channel.send(pending[index] or packet)
                    pending[index] = b""
                except BlockingIOError:
                    pending[index] = pending[index] or packet
        seq += 1
    cpu = [cpu_seconds(p.pid) for p in setup.processes] + [cpu_seconds(os.getpid())]
    return _result(first, latest, cpu_start, cpu)


def _read_reports(
    channel: socket.socket,
    index: int,
    latest: list[wire.WorkerCounters],
    first: list[wire.WorkerCounters | None],
    window_start: float,
) -> None:
    while True:
        try:
            message = wire.decode(channel.recv(1 << 22), wire.REPLY_KINDS)
        except BlockingIOError:
            return
        if message[0] == wire.REPORT:
            counters: wire.WorkerCounters = message[2]
            if first[index] is None and counters.at >= window_start:
                first[index] = counters
            latest[index] = counters


def _result(
    first: list[wire.WorkerCounters | None],
    latest: list[wire.WorkerCounters],
    cpu_start: list[float],
    cpu_end: list[float],
) -> dict[str, Any]:
    rates, red, failed = [], 0.0, 0
    for begin, end in zip(first, latest, strict=True):
        assert begin is not None
        rates.append((end.packets_out - begin.packets_out) / (end.at - begin.at))
        red += (end.red_packets - begin.red_packets) / (end.at - begin.at)
        failed += end.send_failed - begin.send_failed
    elapsed = max(e.at for e in latest) - min(b.at for b in first if b is not None)
    cpu = [(e - s) / elapsed for s, e in zip(cpu_start, cpu_end, strict=True)]
    total = sum(rates)
    return {
        "workers": len(latest),
        "output_pps": round(total),
        "red_pps": round(red),
        "per_worker_pps": [round(r) for r in rates],
        "worker_cpu_cores": [round(c, 2) for c in cpu[:-1]],
        "feeder_cpu_cores": round(cpu[-1], 2),
        "us_per_packet_worker_cpu": round(1e6 * sum(cpu[:-1]) / max(total, 1), 2),
        "send_failed": failed,
    }


def run(
    subscribers: int,
    worker_counts: list[int],
    seconds: float,
    fanout: str,
    repeat: int = 1,
    red: bool = False,
) -> dict[str, Any]:
    """Each count of `worker_counts` measured `repeat` times, alternating (a neighbour's load
    then falls on both alike); the median of each count compared with the first count's."""
    results: dict[str, Any] = {
        "subscribers": subscribers,
        "fanout": fanout,
        "track": "RED audio" if red else "video",
        "cores": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "cells": [],
    }
    for _ in range(repeat):
        for count in worker_counts:
            results["cells"].append(measure(subscribers, count, seconds, fanout, red))
    results["loadavg_after"] = os.getloadavg()
    medians = {
        count: statistics.median(c["output_pps"] for c in results["cells"] if c["workers"] == count)
        for count in worker_counts
    }
    base = medians[worker_counts[0]]
    for cell in results["cells"]:
        cell["speedup"] = round(cell["output_pps"] / max(base, 1), 2)
    results["median_output_pps"] = {str(k): round(v) for k, v in medians.items()}
    results["median_speedup"] = {str(k): round(v / max(base, 1), 2) for k, v in medians.items()}
    return results


def format_results(results: dict[str, Any]) -> str:
    lines = [
        f"fan-out workers at saturation: {results['subscribers']} subscribers,"
        f" one {results['track']} track,"
        f" {results['fanout']} path, {results['cores']} cores",
        f"load average before {results['loadavg_before']}, after {results['loadavg_after']}",
        "workers  output pps  red pps  speedup  worker CPU (cores)  feeder CPU  us/pkt"
        "  send_failed",
    ]
    for c in results["cells"]:
        lines.append(
            f"{c['workers']:>7}  {c['output_pps']:>10}  {c['red_pps']:>7}  {c['speedup']:>7}"
            f"  {str(c['worker_cpu_cores']):>18}  {c['feeder_cpu_cores']:>10}"
            f"  {c['us_per_packet_worker_cpu']:>6}  {c['send_failed']:>11}"
        )
    lines.append(
        f"median output pps {results['median_output_pps']}, speedup {results['median_speedup']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.fanoutbench", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--workers", default="1,2", help="worker counts, compared with the first")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--fanout", choices=("compiled", "python"), default="compiled")
    parser.add_argument("--repeat", type=int, default=1, help="alternating rounds (medians)")
    parser.add_argument("--red", action="store_true", help="a RED audio track, RED subscribers")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.fanout == "compiled" and loader.load() is None:
        parser.error(f"the compiled fan-out does not build here: {loader.failure()}")
    counts = [int(n) for n in args.workers.split(",")]
    if args.subscribers < max(counts) or min(counts) < 1:
        parser.error("--workers: each count from 1 to --subscribers")
    results = run(
        args.subscribers, counts, args.seconds, args.fanout, max(1, args.repeat), args.red
    )
    print(json.dumps(results) if args.json else format_results(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
