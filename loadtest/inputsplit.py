"""Where the light-load cost goes: CPU per input packet of the bench's server side, cut in layers.

`keyroom bench` cells (loadtest/bench_forward.py: the generator in its own process, the
server's own FastPath, Ingress, down-tracks and sinks in this one) at a fixed input rate, run
with more of the path switched off each time:
- `bare`: the loop wake-up and the reader (`recvmmsg` path: the batched socket's reader, its
  address book, the bench's datagram callback), the datagram then dropped;
- `unprotect`: + the fast path's checks and SRTP unprotect, `Ingress.on_rtp` a no-op;
- `ingress`: + the ingress (parse, uplink NACK tracking, receive statistics, the track's
  forward) with no down-track;
- `fan1`, `fanN`: + 1 and N down-tracks (rewrite, protect and sendmmsg of the copies).
Differences between neighbours are each layer's cost; CPU is getrusage over the window.

    python -m loadtest.inputsplit --rate 200 --fanout 10 --seconds 8 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
from collections.abc import Iterator
from typing import Any

import uvloop

from loadtest import bench_forward
from sfu import internals
from sfu.ingress import Ingress

LAYERS = ("bare", "unprotect", "ingress", "fan1", "fanN")


@contextlib.contextmanager
def _switched_off(layer: str) -> Iterator[None]:
    """The path cut after `layer` (the class methods restored after)."""
    fast, on_rtp = internals.FastPath._datagram_received, Ingress.on_rtp
    if layer == "bare":
        internals.FastPath._datagram_received = lambda self, stock, data, addr: None  # type: ignore[method-assign]
    if layer == "unprotect":
        Ingress.on_rtp = lambda self, data: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        internals.FastPath._datagram_received, Ingress.on_rtp = fast, on_rtp  # type: ignore[method-assign]


def _cell(layer: str, fanout: int, rate: float, seconds: float, path: str) -> float:
    """µs of CPU per input packet."""
    fans = {"fan1": 1, "fanN": fanout}.get(layer, 0)
    with _switched_off(layer), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        cell: dict[str, Any] = runner.run(bench_forward._cell(path, fans, rate, seconds, 1200))
    inputs = cell["in_packets"] / cell["wall_s"]
    return 1e4 * cell["cpu_percent"] / inputs if inputs else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="input packets/s")
    parser.add_argument("--fanout", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--path", default="recvmmsg", choices=("recvmmsg", "batched", "fast"))
    args = parser.parse_args()
    # The bench rounds CPU % to 0.1 for its table; here the unrounded value is wanted.
    bench_forward.round = lambda x, n=None: x  # type: ignore[attr-defined]
    results: dict[str, list[float]] = {layer: [] for layer in LAYERS}
    print(f"load average before {os.getloadavg()}", flush=True)
    for rep in range(args.repeat):
        for layer in LAYERS if rep % 2 == 0 else LAYERS[::-1]:
            us = _cell(layer, args.fanout, args.rate, args.seconds, args.path)
            results[layer].append(round(us, 1))
            print(f"  {layer:<9} {us:7.1f} µs CPU per input", flush=True)
    print(f"load average after {os.getloadavg()}")
    previous = 0.0
    for layer in LAYERS:
        median = statistics.median(results[layer])
        label = layer.replace("N", str(args.fanout))
        print(
            f"{label:<9} median {median:7.1f} µs/input (+{median - previous:6.1f}) {results[layer]}"
        )
        previous = median


if __name__ == "__main__":
    main()
