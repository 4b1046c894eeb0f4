"""Cluster benchmarks (docs/benchmarks.md, docs/cluster.md), run in a namespace:

    loadtest/in-netns python -m loadtest.clusterbench joins   [--rooms 6] [--duration 10]
    loadtest/in-netns python -m loadtest.clusterbench workers [--rooms 4] [--duration 15]

`joins`: a real redis-server and three nodes; `keyroom loadtest` with one `--url` per node, so
joins arrive at nodes that do not hold the room and are redirected: `join_redirected_ms` is the
join time through a non-owning node. The baseline, in the same run: one node alone.
`workers`: the same scenario against one node process, then against `serve --workers 2`, in one
run: packets the subscribers received per second, loss, and the servers' CPU.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from loadtest.spawn import free_port, start, wait_healthy

KEY = "bench"
TOML = "[cluster]\nheartbeat = 0.5\nnode_ttl = 3.0\n"


@contextlib.contextmanager
def redis_server(directory: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", directory],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if "Ready to accept connections" in line:
            break
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def nodes(
    directory: str, redis_url: str, secret: str, count: int, workers: int = 1
) -> Iterator[tuple[list[str], list[int]]]:
    """`count` node processes (or one `--workers` supervisor); their URLs and pids."""
    config = os.path.join(directory, "cluster.toml")
    with open(config, "w") as f:
        f.write(TOML)
    processes, urls = [], []
    for i in range(count):
        port = free_port() if workers == 1 else _free_run(workers)
        command = [
            sys.executable, "-m", "sfu", "serve", "--dev", "--host", "127.0.0.1",
            "--port", str(port), "--rtc-ip", "127.0.0.1", "--key", f"{KEY}={secret}",
            "--log-level", "warning", "--redis", redis_url, "--config", config,
            "--workers", str(workers),
        ]  # fmt: skip
        log = os.path.join(directory, f"node-{i}.log")
        process = start(command, log, cwd=directory)
        processes.append(process)
        for w in range(workers):
            url = f"http://127.0.0.1:{port + w}"
            wait_healthy(process, url + "/healthz", log, "node")
            urls.append(f"ws://127.0.0.1:{port + w}/rtc")
    try:
        time.sleep(1.0)  # one heartbeat: every node registered before the first join
        yield urls, [p.pid for p in processes]
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _free_run(length: int) -> int:
    """A port with the `length - 1` ports after it free too (best effort)."""
    for _ in range(50):
        port = free_port()
        if port + length < 65535 and all(port_free(port + i) for i in range(1, length)):
            return port
    raise RuntimeError("no run of free ports")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def loadtest(urls: list[str], secret: str, scenario: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "sfu", "loadtest", "--json", "--quiet", "--key", KEY,
               *[a for u in urls for a in ("--url", u)], *scenario]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "KEYROOM_SECRET": secret}
    )
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"loadtest failed: {done.stderr[-2000:]}") from None
    return report


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU of `pids` and their children (the workers of a supervisor)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in _with_children(pids):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _with_children(pids: list[int]) -> list[int]:
    found = list(pids)
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                found += [int(c) for c in f.read().split()]
    return found


def summary(report: dict[str, Any], cpu: float) -> dict[str, Any]:
    duration = max(report["measured_s"], 1e-9)
    packets = report["packets"]
    return {
        "received_pps": round(packets["received_measured"] / duration, 1),
        "loss": packets["loss"],
        "server_cpu_seconds": round(cpu, 2),
        "join_ms": report["join_ms"],
        "join_redirected_ms": report["join_redirected_ms"],
        "errors": report.get("errors"),
    }


def run_joins(args: argparse.Namespace) -> dict[str, Any]:
    secret = secrets.token_urlsafe(32)
    scenario = ["--scenario", "10x10-audio", "--audio-publishers", "2", "--subscribers", "4",
                "--rooms", str(args.rooms), "--duration", str(args.duration)]  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as directory, redis_server(directory) as redis_url:
        # The baseline first: one node, so no join is redirected; then three.
        for count in (1, 3):
            with nodes(directory, redis_url, secret, count) as (urls, pids):
                before = cpu_seconds(pids)
                report = loadtest(urls, secret, scenario)
                results[f"nodes_{count}"] = summary(report, cpu_seconds(pids) - before)
    return results


def run_workers(args: argparse.Namespace) -> dict[str, Any]:
    secret = secrets.token_urlsafe(32)
    subscribers = str(args.subscribers)
    scenario = ["--scenario", "5x5-video", "--video-publishers", "1", "--subscribers", subscribers,
                "--rooms", str(args.rooms), "--duration", str(args.duration)]  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as directory, redis_server(directory) as redis_url:
        for name, workers in (("one_process", 1), ("workers_2", 2)):
            with nodes(directory, redis_url, secret, 1, workers) as (urls, pids):
                before = cpu_seconds(pids)
                report = loadtest(urls, secret, scenario)
                results[name] = summary(report, cpu_seconds(pids) - before)
    one, two = results["one_process"]["received_pps"], results["workers_2"]["received_pps"]
    return {**results, "ratio": round(two / one, 3) if one else None}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.clusterbench")
    parser.add_argument("what", choices=("joins", "workers"))
    parser.add_argument("--rooms", type=int, default=6)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--subscribers", type=int, default=6, help="per room (workers)")
    args = parser.parse_args()
    result = run_joins(args) if args.what == "joins" else run_workers(args)
    result["loadavg_before_after"] = os.getloadavg()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
