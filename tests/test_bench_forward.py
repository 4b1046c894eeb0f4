"""The forwarding benchmark measures what it claims: every input reaches every down-track."""

from __future__ import annotations

import pytest

from loadtest.bench_forward import PATHS, format_results, run_cells


@pytest.mark.timeout(60)
def test_bench_cells_forward_every_input_to_every_down_track() -> None:
    results = run_cells(
        fanouts=[3], loops=["uvloop"], paths=list(PATHS), out_rate=1500, seconds=0.5, size=400
    )
    floor, *cells = results["cells"]
    assert floor["kind"] == "floor" and floor["us_per_packet"] > 0
    assert [c["path"] for c in cells] == list(PATHS)
    batched = cells[PATHS.index("batched")]
    # Every copy the sinks queued went out, one sendmmsg per input packet (3 copies each).
    assert batched["batched_sent_total"] == batched["queued_total"] > 0
    assert batched["sendmmsg_calls"] * 3 == batched["queued_total"]
    # Read with recvmmsg: every copy of every input went out, in at most one call per input.
    received = cells[PATHS.index("recvmmsg")]
    assert received["batched_sent_total"] == received["queued_total"] > 0
    assert 0 < received["sendmmsg_calls"] * 3 <= received["queued_total"]
    assert received["recvmmsg_calls"] > 0
    # The same, each copy made by the compiled loop: the sinks' counts include its copies.
    compiled = cells[PATHS.index("compiled")]
    assert compiled["batched_sent_total"] == compiled["queued_total"] > 0
    assert 0 < compiled["sendmmsg_calls"] * 3 <= compiled["queued_total"]
    for cell in cells:
        assert cell["errors"] == {}
        assert cell["in_packets"] > 0
        # Packets in flight at the window's edges make out/in differ by a few.
        assert abs(cell["out_packets"] - 3 * cell["in_packets"]) <= 3 * 5
        assert cell["ratio_to_floor"] > 0
    assert "fast" in format_results(results)


@pytest.mark.timeout(60)
def test_tight_bench_forwards_every_input_on_every_path() -> None:
    from loadtest.bench_tight import PATHS as TIGHT_PATHS
    from loadtest.bench_tight import format_tight, run_tight

    results = run_tight(fanouts=[2], paths=list(TIGHT_PATHS), chunks=1, size=400, repeat=1)
    assert [r["path"] for r in results["rows"]] == list(TIGHT_PATHS)
    for row in results["rows"]:  # run_tight raises if an input was not forwarded to both
        assert row["us_per_input"] > 0
        assert abs(row["us_per_out"] - row["us_per_input"] / 2) <= 0.01
    assert "batched" in format_tight(results)
