"""`keyroom bench --simulcast` compares like with like: the same subscribers, packet sizes and
output count on both sides, and every simulcast subscriber on the renumbering path it claims."""

from __future__ import annotations

from collections import Counter

from loadtest.bench_simulcast import compare, format_comparison, simulcast, single_layer


def test_both_sides_send_the_same_outputs_and_the_simulcast_side_renumbers_for_all() -> None:
    single, layered = single_layer(20, 1100), simulcast(20, 1100)
    assert len(single.downs) == len(layered.downs) == 20
    switches = [d.layers for d in layered.downs]
    assert all(s is not None and s.munger is not None and s.munger.key for s in switches)
    assert Counter(s.current for s in switches if s is not None) == {0: 7, 1: 7, 2: 6}
    single_before, layered_before = single.sink.packets, layered.sink.packets
    single.send(300)
    layered.send(900)  # 300 per layer: each subscriber takes one layer of three
    assert single.sink.packets - single_before == layered.sink.packets - layered_before == 6000


def test_the_comparison_reports_both_sides_and_their_ratio() -> None:
    result = compare(fanout=6, rounds=1, packets=60)
    assert result["single_us_per_out"] > 0 and result["simulcast_us_per_out"] > 0
    assert "3-layer simulcast" in format_comparison(result)


def test_the_compiled_path_puts_every_settled_subscriber_in_its_layers_loop() -> None:
    result = compare(fanout=6, rounds=1, packets=60, path="compiled")
    assert result["ratio"] > 0 and result["python_ratio"] > 0 and result["send_failed"] == 0
    assert "Python path" in format_comparison(result)
    layered = simulcast(6, 1100, "compiled")
    layered.send(300)
    track = layered.downs[0].track
    assert [len(x.copies.members) if x.copies else 0 for x in track.layers] == [2, 2, 2]
    assert layered.sink.packets >= 6 * 100
    kept = simulcast(6, 1100, "compiled", layers=False)
    kept.send(300)
    assert all(x.copies is None for x in kept.downs[0].track.layers)


def test_the_transport_cc_bench_puts_browser_like_subscribers_in_the_compiled_loop() -> None:
    from loadtest import bench_twcc

    result = bench_twcc.compare(fanout=4, rounds=1, packets=60)
    # compiled, compiled with transport-cc + budget, then the two Python-path cells.
    assert result["compiled_members"] == [4, 4, 0, 0] and result["send_failed"] == 0
    assert all(us > 0 for us in result["us_per_out"].values())
    assert "transport-cc + budget" in bench_twcc.format_comparison(result)
