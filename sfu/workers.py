"""`keyroom serve --workers N`: N node processes on one host sharing its Redis, to use every
core (docs/cluster.md). Each worker is a whole node: its own signaling port (the base port +
its index), its own share of `[rtc] port_min..port_max`, its own data directory and audit log.
The supervisor forwards SIGTERM (drain) and SIGINT to every worker and exits when all have.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from sfu.config import Config, ConfigError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N node processes sharing [cluster] redis_url (ports PORT..PORT+N-1)",
    )
    p.add_argument("--worker", metavar="I/N", help=argparse.SUPPRESS)  # set by the supervisor


def parse_worker(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or int(index) >= int(count):
        raise ConfigError(f"--worker: expected I/N with I < N, got {text!r}")
    return int(index), int(count)


def worker_overrides(config: Config, index: int, count: int) -> dict[str, dict[str, Any]]:
    """What worker `index` of `count` changes in the configuration everyone shares."""
    server: dict[str, Any] = {
        "port": config.server.port + index,
        "data_dir": os.path.join(config.server.data_dir, f"worker-{index}"),
    }
    overrides: dict[str, dict[str, Any]] = {"server": server}
    rtc = config.rtc
    if rtc.port_min:
        share = (rtc.port_max - rtc.port_min + 1) // count
        if share < 1:
            raise ConfigError("rtc.port_min..port_max: fewer ports than --workers")
        low = rtc.port_min + index * share
        overrides["rtc"] = {"port_min": low, "port_max": low + share - 1}
    if config.audit.path is not None:
        overrides["audit"] = {"path": f"{config.audit.path}.worker-{index}"}
    return overrides


def check_workers(config: Config, count: int) -> None:
    if count < 1:
        raise ConfigError("--workers: expected 1 or more")
    if count > 1 and config.cluster.redis_url is None:
        raise ConfigError("--workers: needs [cluster] redis_url (or --redis)")


def supervise(argv: Sequence[str], count: int) -> int:
    """Run `count` workers with the command line `argv` (without --workers); their exit."""
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "sfu", *argv, "--worker", f"{i}/{count}"],
            preexec_fn=_die_with_parent,
        )
        for i in range(count)
    ]

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    return max(child.wait() for child in children)


def _die_with_parent() -> None:
    """In the child: SIGINT it when the supervisor dies, even by SIGKILL (Linux), so no worker
    outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGINT)


def without_workers(argv: Sequence[str]) -> list[str]:
    """`argv` less its --workers option."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            kept.append(arg)
    return kept
