"""Servers started as processes (the load test's, the tests'): a free loopback port, a process
writing to a log file, a wait for its `/healthz`, a stop."""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    command: list[str],
    log_path: str | Path,
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Run `command` with its stdout and stderr going to `log_path`."""
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )


def wait_healthy(
    process: subprocess.Popen[bytes],
    url: str,
    log_path: str | Path,
    what: str,
    *,
    context: ssl.SSLContext | None = None,
) -> None:
    """Return once `url` (a `/healthz`) answers; see `wait_ready`."""
    wait_ready(
        process,
        lambda: urllib.request.urlopen(url, timeout=5, context=context).close(),
        log_path,
        what,
    )


def wait_ready(
    process: subprocess.Popen[bytes], probe: Callable[[], None], log_path: str | Path, what: str
) -> None:
    """Return once `probe` stops raising OSError; stop the process and raise RuntimeError with
    the end of its log if it exits or `START_TIMEOUT` passes first."""
    deadline = time.monotonic() + START_TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        try:
            probe()
            return
        except OSError:
            time.sleep(0.1)
    stop(process)
    with open(log_path, errors="replace") as f:
        raise RuntimeError(f"{what} did not start:\n{f.read()[-4000:]}")


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, and SIGKILL if it outlives `STOP_TIMEOUT`; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextlib.contextmanager
def spawned(command: list[str], port: int, log_path: str, what: str) -> Iterator[int]:
    """Run `command` until its `/healthz` on `port` answers; yield its pid; stop it on exit."""
    process = start(command, log_path)
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}/healthz", log_path, what)
        yield process.pid
    finally:
        stop(process)
