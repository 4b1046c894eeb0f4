"""The load-test report: one JSON-able dict (for CI) and its human table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from loadtest.histogram import ForwardHistogram
from loadtest.procstat import Sample
from loadtest.schedstat import coincidence

if TYPE_CHECKING:
    from loadtest.run import Run


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, p50, p95, p99 and max (nearest rank); None when there is no value."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

    return {
        "count": len(ordered),
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": round(ordered[-1], 3),
    }


def build_report(
    run: Run,
    *,
    settle_ns: int,
    samples: list[Sample],
    runtime_before: dict[str, Any] | None,
    runtime_after: dict[str, Any] | None,
    generator_cpu_seconds: float,
    forward: ForwardHistogram | None = None,
    received: ForwardHistogram | None = None,
    server_gc: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    scenario = run.scenario
    track_nos = {p.track_no for p in run.publishers}
    # A subscriber expects the tracks published in its own room.
    room_tracks = {
        room: {p.track_no for p in run.publishers if p.room == room} for room in run.rooms
    }
    rooms = {
        room: {"expected": 0, "received": 0, "packets_received": 0, "packets_expected": 0}
        for room in run.rooms
    }
    expected_tracks = received_tracks = 0
    packets_received = packets_expected = 0
    first_packet_ms: list[float] = []
    first_keyframe_ms: list[float] = []
    for sub in run.subscribers:
        if sub.deaf:
            continue
        tally = rooms[sub.room]
        wanted = room_tracks[sub.room]
        # Sessions that ended (churn) or began too late to settle count for loss, not tracks.
        if not sub.ended and run.measure_end_ns - sub.join_started_ns >= settle_ns:
            got = len(wanted & {n for n, s in sub.streams.items() if s.packets})
            expected_tracks += len(wanted)
            received_tracks += got
            tally["expected"] += len(wanted)
            tally["received"] += got
        # Rooms are isolated: a track of another room reaching this subscriber is an error.
        foreign = len(set(sub.streams) - wanted)
        if foreign and run.target.forwards_payloads:
            run.errors["subscriber:track_from_other_room"] += foreign
        for stream in sub.streams.values():
            packets_received += stream.packets
            packets_expected += max(stream.expected, stream.packets)
            tally["packets_received"] += stream.packets
            tally["packets_expected"] += max(stream.expected, stream.packets)
            first_packet_ms.append((stream.first_ns - sub.join_started_ns) / 1e6)
            if stream.first_keyframe_ns is not None:
                first_keyframe_ms.append((stream.first_keyframe_ns - sub.join_started_ns) / 1e6)
        for reason, count in sub.drops.items():
            run.errors[f"subscriber:{reason}"] += count
    in_phase_packets, in_phase_bytes, in_phase_requests = (
        end - start for start, end in zip(run.counts_at_start, run.counts_at_end, strict=True)
    )
    lost = packets_expected - packets_received
    measured = (run.measure_end_ns - run.measure_start_ns) / 1e9
    # The first sample after the end still covers mostly measured time.
    in_phase = [s for s in samples if run.measure_start < s.t <= run.measure_end + 0.5]
    report: dict[str, Any] = {
        "scenario": {
            "name": scenario.name,
            "video_publishers": scenario.video_publishers,
            "audio_publishers": scenario.audio_publishers,
            "subscribers": scenario.subscribers,
            "duration_s": scenario.duration,
            "joins_per_second": scenario.joins_per_second,
            "codec": scenario.codec,
            "simulated_loss": scenario.loss,
            "churn_interval_s": scenario.churn_interval,
            # Subscribers per room that read their media (0: all); the others' RTP is dropped
            # by the kernel, sent by the server all the same.
            "listening_subscribers": scenario.listening,
            "bad_token_share": scenario.bad_token_share,
            "rooms": len(run.rooms),
            "pace_ms": scenario.pace_ms,
            "keyframes_on_request": scenario.keyframes_on_request,
            "answer_nacks": scenario.answer_nacks,
        },
        "room": run.room,
        "measured_s": round(measured, 3),
        "tracks": {
            "published": len(track_nos),
            "expected": expected_tracks,
            "received": received_tracks,
            "missing": expected_tracks - received_tracks,
        },
        "packets": {
            "sent": sum(p.packets_sent for p in run.publishers),
            "simulated_drops": sum(p.packets_dropped for p in run.publishers),
            # The server's NACKs to publishers (sequence numbers) and the packets they resent.
            "nacked": sum(p.nacked for p in run.publishers),
            "resent": sum(p.resent for p in run.publishers),
            "received": packets_received,
            "received_measured": in_phase_packets,  # during the measured phase
            "bytes_received_measured": in_phase_bytes,
            "expected": packets_expected,
            "lost": lost,
            "loss": round(lost / packets_expected, 6) if packets_expected else 0.0,
        },
        "latency_ms": percentiles([v / 1e6 for v in run.latencies.samples]),
        # [seconds since the measured phase began (bucket middle), p50, p95, p99 ms, samples]
        "latency_timeline": _latency_timeline(run),
        "join_ms": percentiles(run.join_ms),
        "join_ms_bound": percentiles(run.join_ms_bound),
        "join_redirected_ms": percentiles(run.redirected_join_ms),
        "first_packet_ms": percentiles(first_packet_ms),
        "first_keyframe_ms": percentiles(first_keyframe_ms),
        "keyframe_requests_per_s": round(in_phase_requests / max(measured, 1e-9), 3),
        "generator_cpu_percent": round(100 * generator_cpu_seconds / max(measured, 1e-9), 1),
        # How late the load generator's loop woke from a 5 ms sleep: its own queueing delay.
        "generator_loop_lag_ms": percentiles(run.loop_lag_ms),
        "generator_gc_pause_ms": percentiles(run.gc_pauses_ms),
        # The server's own forwarding time per input packet, from its histogram's bucket
        # deltas over the measured phase: handler entry to the end of the whole fan-out; no
        # kernel or socket queue, nothing of the generator. None when /metrics is unreadable.
        "server_forward_ms": forward.summary() if forward is not None else None,
        # From the kernel's receive timestamp of an input datagram to the send of its copies:
        # the server's socket queue included (shared port with `fanout = "compiled"`; count 0
        # on the other paths, None when /metrics is unreadable).
        "server_receive_to_send_ms": received.summary() if received is not None else None,
        # The server's garbage collections in the measured phase, by generation ("2": full):
        # count, total and longest pause (bucket bound) in ms; None without the histogram.
        "server_gc_pauses": server_gc,
        "auth": dict(run.auth),
    }
    if len(run.rooms) > 1:
        report["rooms"] = [
            _room_report(run, room, rooms[room], len(room_tracks[room])) for room in run.rooms
        ]
    if samples:
        cpu = [s.cpu_percent for s in in_phase] or [0.0]
        mean_cpu = sum(cpu) / len(cpu)
        rate = in_phase_packets / max(measured, 1e-9)
        subscribed_tracks = max(1, len(run.subscribers)) * max(1, len(track_nos))
        report["server"] = {
            "pid_of": run.target.name,
            "cpu_percent_mean": round(mean_cpu, 1),
            # Whole-process CPU shared out: the comparison with a baseline's, same scenario.
            "cpu_percent_per_subscriber": round(mean_cpu / max(1, len(run.subscribers)), 3),
            "cpu_percent_per_subscribed_track": round(mean_cpu / subscribed_tracks, 3),
            "cpu_percent_max": round(max(cpu), 1),
            "rss_mib_max": round(max(s.rss_mib for s in samples), 1),
            "rss_mib_end": round(samples[-1].rss_mib, 1),
            # Whole-process CPU (RTCP, timers, signaling included) per packet subscribers got.
            # (None with deaf subscribers: the server sent them packets nobody counted.)
            "cpu_us_per_received_packet": round(mean_cpu / 100 * 1e6 / rate, 2)
            if rate and not scenario.listening
            else None,
            # [seconds since the measured phase began, CPU % of one core, RSS MiB, the main
            # thread's run-queue wait in the interval, ms]
            "timeline": [
                [
                    round(s.t - run.measure_start, 2),
                    round(s.cpu_percent, 1),
                    round(s.rss_mib, 1),
                    round(s.run_queue_ms, 1),
                ]
                for s in samples
            ],
        }
        # The seconds with an end-to-end p99 over 5 ms against the others: the server's run-queue
        # wait and CPU in each (loadtest/schedstat.py).
        report["server"]["late_seconds"] = coincidence(
            report["latency_timeline"], report["server"]["timeline"], measured
        )
    if runtime_before is not None and runtime_after is not None:
        before, after = runtime_before["stats"], runtime_after["stats"]
        report["server_counters"] = {
            key: after.get(key, 0) - before.get(key, 0)
            for key in ("packets_in", "packets_out", "keyframe_requests", "retransmissions")
        }
        report["server_counters"]["dropped"] = after.get("dropped", {})
        report["server_counters"]["codecs"] = runtime_after.get("codecs")
    return report


def _room_report(run: Run, room: str, tally: dict[str, int], published: int) -> dict[str, Any]:
    lost = tally["packets_expected"] - tally["packets_received"]
    latencies = run.room_latencies.get(room)
    return {
        "room": room,
        "tracks": {
            "published": published,
            "expected": tally["expected"],
            "received": tally["received"],
            "missing": tally["expected"] - tally["received"],
        },
        "packets": {
            "received": tally["packets_received"],
            "expected": tally["packets_expected"],
            "lost": lost,
            "loss": round(lost / tally["packets_expected"], 6)
            if tally["packets_expected"]
            else 0.0,
        },
        "latency_ms": percentiles([v / 1e6 for v in latencies.samples] if latencies else []),
    }


def _latency_timeline(run: Run) -> list[list[float | int | None]]:
    latencies = run.latencies
    offset = (run.measure_start_ns - latencies.origin_ns) / 1e9
    timeline = []
    for second in sorted(latencies.by_second):
        d = percentiles([v / 1e6 for v in latencies.by_second[second]])
        timeline.append([round(second + 0.5 - offset, 2), d["p50"], d["p95"], d["p99"], d["count"]])
    return timeline


def passed(report: dict[str, Any], max_loss: float) -> bool:
    unexpected = {k: v for k, v in report["errors"].items() if v}
    return (
        report["tracks"]["missing"] == 0
        and report["tracks"]["expected"] > 0
        and report["packets"]["loss"] < max_loss + report["scenario"]["simulated_loss"]
        and not unexpected
    )


def format_table(report: dict[str, Any]) -> str:
    def dist(name: str, d: dict[str, Any], unit: str) -> str:
        if not d["count"]:
            return f"{name:<22} -"
        return (
            f"{name:<22} p50 {d['p50']:>8} p95 {d['p95']:>8} p99 {d['p99']:>8}"
            f" max {d['max']:>8} {unit} (n={d['count']})"
        )

    s = report["scenario"]
    t, p = report["tracks"], report["packets"]
    lines = [
        f"scenario {s['name']}: {s['video_publishers']} video + {s['audio_publishers']} audio"
        f" publishers, {s['subscribers']} subscribers"
        + (f" in each of {s['rooms']} rooms" if s.get("rooms", 1) > 1 else "")
        + f", {report['measured_s']} s measured",
        f"{'tracks':<22} expected {t['expected']} received {t['received']} missing {t['missing']}",
        f"{'packets':<22} sent {p['sent']} received {p['received']} expected {p['expected']}"
        f" lost {p['lost']} ({100 * p['loss']:.3f} %)",
        dist("latency through SFU", report["latency_ms"], "ms"),
        dist("join (token→joined)", report["join_ms"], "ms"),
        *(
            [dist("join, bound token", report["join_ms_bound"], "ms")]
            if report.get("join_ms_bound", {}).get("count")
            else []
        ),
        dist("join via redirect", report["join_redirected_ms"], "ms"),
        dist("first packet", report["first_packet_ms"], "ms"),
        dist("first keyframe", report["first_keyframe_ms"], "ms"),
        f"{'keyframe requests':<22} {report['keyframe_requests_per_s']} /s",
        f"{'load generator CPU':<22} {report['generator_cpu_percent']} % of one core",
        dist("generator loop lag", report["generator_loop_lag_ms"], "ms"),
        dist("generator GC pauses", report["generator_gc_pause_ms"], "ms"),
    ]
    server_times = (
        ("server forwarding", "server_forward_ms", "1 in 64"),
        ("server receive->send", "server_receive_to_send_ms", "kernel receive time"),
    )
    for label, key, how in server_times:
        times = report.get(key)
        if times and times["count"]:
            lines.append(
                f"{label:<22} p50 {times['p50']:>8} p95 {times['p95']:>8} p99 {times['p99']:>8}"
                f" mean {times['mean']:>7} ms per input packet"
                f" (n={times['count']}, {how}; bucket resolution)"
            )
        elif key == "server_forward_ms":
            lines.append(f"{label:<22} - (no keyroom_forward_seconds from /metrics)")
    if report.get("server_gc_pauses"):
        lines.append(
            f"{'server GC pauses':<22} "
            + ", ".join(
                f"gen {g}: {p['count']} ({p['total_ms']} ms, longest <= {p['longest_ms_at_most']})"
                for g, p in sorted(report["server_gc_pauses"].items())
            )
        )
    for room in report.get("rooms", []):
        rt, rp, rl = room["tracks"], room["packets"], room["latency_ms"]
        lines.append(
            f"  {room['room']:<20} tracks {rt['received']}/{rt['expected']}"
            f" lost {rp['lost']} ({100 * rp['loss']:.3f} %) latency p50 {rl['p50']}"
            f" p99 {rl['p99']} ms"
        )
    server = report.get("server")
    if server:
        lines.append(
            f"{'server CPU':<22} mean {server['cpu_percent_mean']} % max"
            f" {server['cpu_percent_max']} %, {server['cpu_us_per_received_packet']} µs per"
            f" received packet; RSS max {server['rss_mib_max']} MiB"
        )
    if report["auth"]:
        lines.append(f"{'bad-token joins':<22} {report['auth']}")
    lines.append(f"{'errors':<22} {report['errors'] or 'none'}")
    return "\n".join(lines)


def compare(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Server CPU per subscriber of each run of the same scenario, and each baseline's ratio to
    keyroom's; with what each subscriber got, since a re-encoding server may send less."""
    rows: dict[str, dict[str, Any]] = {}
    for name, report in reports.items():
        server = report.get("server") or {}
        tracks = max(1, report["tracks"]["expected"])
        measured = max(report["measured_s"], 1e-9)
        rows[name] = {
            "cpu_percent_mean": server.get("cpu_percent_mean"),
            "cpu_percent_per_subscriber": server.get("cpu_percent_per_subscriber"),
            "cpu_us_per_received_packet": server.get("cpu_us_per_received_packet"),
            "rss_mib_max": server.get("rss_mib_max"),
            "tracks_missing": report["tracks"]["missing"],
            "loss": report["packets"]["loss"],
            "received_pps_per_track": round(
                report["packets"]["received_measured"] / measured / tracks, 1
            ),
            "received_kbps_per_track": round(
                8 * report["packets"]["bytes_received_measured"] / measured / tracks / 1000, 1
            ),
        }
    base = rows["keyroom"]["cpu_percent_per_subscriber"]
    base_packet = rows["keyroom"]["cpu_us_per_received_packet"]
    for name, row in rows.items():
        if name != "keyroom":
            mine = row["cpu_percent_per_subscriber"]
            row["cpu_per_subscriber_vs_keyroom"] = round(mine / base, 2) if base and mine else None
            per_packet = row["cpu_us_per_received_packet"]
            row["cpu_per_packet_vs_keyroom"] = (
                round(per_packet / base_packet, 2) if base_packet and per_packet else None
            )
    return rows


def format_comparison(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"{'server':<12} {'CPU %':>7} {'CPU %/subscriber':>17} {'x keyroom':>10}"
        f" {'µs/recv pkt':>12} {'x keyroom':>10}"
        f" {'RSS MiB':>8} {'missing':>8} {'loss %':>7} {'pps/track':>10} {'kbit/s/track':>13}"
    ]
    for name, row in rows.items():
        lines.append(
            f"{name:<12} {row['cpu_percent_mean']!s:>7} {row['cpu_percent_per_subscriber']!s:>17}"
            f" {row.get('cpu_per_subscriber_vs_keyroom', 1.0)!s:>10}"
            f" {row['cpu_us_per_received_packet']!s:>12}"
            f" {row.get('cpu_per_packet_vs_keyroom', 1.0)!s:>10} {row['rss_mib_max']!s:>8}"
            f" {row['tracks_missing']:>8} {100 * row['loss']:>7.2f}"
            f" {row['received_pps_per_track']:>10} {row['received_kbps_per_track']:>13}"
        )
    return "\n".join(lines)
