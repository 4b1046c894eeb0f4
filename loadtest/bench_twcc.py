"""`keyroom bench --transport-cc`: CPU per output packet of a single-layer track at fan-out 20
whose subscribers negotiated transport-cc and are paced within a send budget (what a browser
subscriber is), against subscribers without either; each through the compiled per-copy loop and
through the Python path (one `FanoutBatch.add` per copy), rounds alternating, same run.

The setup is `keyroom bench --simulcast --path compiled`'s single-layer side (loadtest/
bench_simulcast.py): RtpSinks into one FanoutBatch, SRTP and `sendmmsg` to a socket nobody reads.
The budget's rate (200 Mbit/s) is never reached: every copy fits, as on a link with room.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from typing import Any

from loadtest import bench_simulcast as bs
from sfu import clock
from sfu.forwarder import SDES_MID
from sfu.sendbudget import BudgetedSink, SendBudget
from sfu.stats import DropReason
from sfu.twcc import URI, TransportSequence

RATE = 200_000_000
CELLS = (("compiled", False), ("compiled", True), ("python", False), ("python", True))


def _setup(path: str, transport_cc: bool, fanout: int, size: int) -> bs.Setup:
    setup = bs.single_layer(fanout, size, "compiled")
    sinks = setup.sink
    assert isinstance(sinks, bs.BatchSinks)
    sinks.batch.copies = path == "compiled"
    if transport_cc:
        for down, sink in zip(setup.downs, sinks.sinks, strict=True):
            sink.transport_sequence = TransportSequence(3)
            assert down.out_ssrc is not None and down.rewriter is not None
            # The same stream goes on (a jump back would make SRTP refuse the packets as old).
            down.configure(
                sink=sink, out_ssrc=down.out_ssrc, mid="0", payload_types={96: 96},
                extensions={SDES_MID: 1, URI: 3}, seq_start=down.rewriter.last_out_seq + 1,
            )  # fmt: skip
            budget = SendBudget()
            budget.set_rate(RATE, clock.now())
            down.sink = BudgetedSink(sink, budget)
            down.waiting_for_keyframe = False  # the stream goes on: no keyframe to wait for
    return setup


async def _compare(fanout: int, rounds: int, packets: int, size: int) -> dict[str, Any]:
    load = os.getloadavg()
    setups = {cell: _setup(*cell, fanout, size) for cell in CELLS}
    for setup in setups.values():
        bs._round(setup, packets // 10)  # warm-up (and into the compiled loop)
    samples: dict[tuple[str, bool], list[float]] = {cell: [] for cell in CELLS}
    for _ in range(rounds):
        for cell, setup in setups.items():
            samples[cell].append(bs._round(setup, packets))
    steady = [
        len(copies.members) if (copies := setup.downs[0].track.copies) else 0
        for setup in setups.values()
    ]
    return {
        "fanout": fanout,
        "rounds": rounds,
        "us_per_out": {
            f"{path}{', transport-cc + budget' if tcc else ''}": round(statistics.median(v), 3)
            for (path, tcc), v in samples.items()
        },
        "compiled_members": steady,
        # Copies SRTP or the socket refused (none expected: a refused one costs less).
        "send_failed": sum(
            setup.sink.batch._stats.dropped[DropReason.SEND_FAILED.value]
            for setup in setups.values()
            if isinstance(setup.sink, bs.BatchSinks)
        ),
        "load_average": [round(x, 2) for x in load + os.getloadavg()],
    }


def compare(
    fanout: int = 20, rounds: int = 9, packets: int = 3000, size: int = 1100
) -> dict[str, Any]:
    """Alternating rounds of the four cells (in an event loop: the pacer's clock); medians."""
    return asyncio.run(_compare(fanout, rounds, packets, size))


def format_comparison(result: dict[str, Any]) -> str:
    cells = ", ".join(f"{name} {us} µs" for name, us in result["us_per_out"].items())
    before, after = result["load_average"][0], result["load_average"][3]
    return (
        f"fan-out {result['fanout']}, {result['rounds']} alternating rounds (medians), per output"
        f" packet: {cells}; load average {before:.2f} -> {after:.2f}"
    )
