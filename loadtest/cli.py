"""`keyroom loadtest` and `keyroom bench`: argument parsing and entry points."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import Iterator
from typing import Any

from loadtest.scenarios import SCENARIOS, Scenario, with_overrides


def add_loadtest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="5x5-video")
    p.add_argument(
        "--url",
        action="append",
        help="target server's ws://host:port/rtc (default: --spawn-server); repeat for the"
        " nodes of a cluster: joins go to each in turn",
    )
    p.add_argument("--key", help="key id to mint tokens with (with --url)")
    p.add_argument("--secret", help="its secret; prefer $KEYROOM_SECRET")
    p.add_argument("--server-pid", type=int, help="sample this pid's CPU/RSS (with --url)")
    p.add_argument(
        "--metrics-token",
        help="the target's [metrics] bearer_token, to read its forwarding time (with --url)",
    )
    p.add_argument("--spawn-server", action="store_true", help="run a dev server (the default)")
    p.add_argument("--video-publishers", type=int)
    p.add_argument("--audio-publishers", type=int)
    p.add_argument("--subscribers", type=int)
    p.add_argument(
        "--rooms",
        type=int,
        help="run the scenario's participants in this many rooms at once (default 1)",
    )
    p.add_argument("--duration", type=float, help="measured seconds after everyone joined")
    p.add_argument(
        "--warmup",
        type=float,
        metavar="SECONDS",
        help="wait this long after the last join before measuring (default 0): the ramp of"
        " joins keeps a busy server above its steady load for a while",
    )
    p.add_argument("--joins-per-second", type=float)
    p.add_argument("--codec", choices=("vp8", "h264"))
    p.add_argument("--video-bitrate", type=int, metavar="BPS")
    p.add_argument("--loss", type=float, help="simulated loss: share of packets publishers drop")
    p.add_argument(
        "--pace-ms",
        type=float,
        metavar="MS",
        help="publishers pace each frame over MS ms (1 ms steps) on random frame phases, as "
        "browsers do (default 0: a frame is one burst, all publishers in phase)",
    )
    p.add_argument(
        "--keyframes-on-request",
        action="store_true",
        help="video publishers send a keyframe only at their start and when asked (PLI/FIR), as"
        " a browser's encoder does (default: the 2 s clip restarts at its keyframe every pass,"
        " every publisher in step once the joins' keyframe requests reset them together)",
    )
    p.add_argument(
        "--ignore-nacks",
        action="store_true",
        help="publishers do not answer the server's NACKs (default: they resend the packet from"
        " a cache of their last 512, as browsers do)",
    )
    p.add_argument(
        "--listening-subscribers",
        type=int,
        metavar="K",
        help="only K subscribers of each room read their media; the kernel drops the others'"
        " RTP, so the load generator keeps up with a server near a core (default: all)",
    )
    p.add_argument("--churn-interval", type=float, metavar="S")
    p.add_argument("--bad-token-share", type=float)
    p.add_argument(
        "--bound-share",
        type=float,
        help="share of subscribers joining with bound tokens and a proof (reported apart)",
    )
    p.add_argument("--max-loss", type=float, default=0.01, help="pass threshold (default 0.01)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument(
        "--baseline",
        choices=("mediarelay", "janus"),
        action="append",
        help="also run the scenario against this baseline (spawned), same clip, and compare"
        " server CPU per subscriber (repeatable; janus needs a namespace: docs/benchmarks.md)",
    )
    p.add_argument(
        "--janus-interface",
        default="krjanus0",
        help="the one interface Janus gathers ICE candidates on (default krjanus0)",
    )
    p.add_argument(
        "--janus-client-ip",
        default="10.77.0.2",
        help="the address load-test clients gather on against Janus (default 10.77.0.2)",
    )
    p.add_argument("--plot", metavar="PNG", help="draw latency and server CPU/RSS over time")
    p.add_argument(
        "--e2ee",
        action="store_true",
        help="publishers declare end-to-end encryption and send encrypted frames; a spawned"
        " server requires it (limits.e2ee_required)",
    )
    p.add_argument(
        "--compare-recording",
        type=int,
        metavar="ROUNDS",
        help="compare recording every track with one more subscriber of every track, this many"
        " alternating rounds on spawned servers (loadtest/recordbench.py)",
    )
    p.add_argument(
        "--client",
        choices=("keyroom", "livekit"),
        default="keyroom",
        help="livekit: LiveKit's Python SDK as the client, join time and forwarding cost"
        " against keyroom's clients (root in a network namespace: docs/benchmarks.md)",
    )
    p.add_argument("--joins", type=int, default=20, help="SDK joins timed (--client livekit)")


def _scenario_problem(scenario: Scenario, baselines: list[str]) -> str | None:
    if scenario.rooms < 1:
        return "--rooms must be at least 1"
    if scenario.listening < 0:
        return "--listening-subscribers must not be negative (0: every subscriber listens)"
    if baselines and scenario.rooms > 1:
        return "baselines serve one room: no --baseline with --rooms"
    if not 0 <= scenario.bound_share <= 1:
        return "--bound-share must be from 0 to 1"
    if baselines and (scenario.bad_token_share or scenario.bound_share):
        return "baselines check no tokens: no --baseline here"
    return None


def run_loadtest(args: argparse.Namespace) -> int:
    if args.client == "livekit":
        return _run_livekit(args)
    # Imported here: the media stack is only needed once a test really runs.
    import uvloop

    from loadtest.clients import prefer_video_codec
    from loadtest.report import compare, format_comparison, format_table, passed
    from loadtest.runner import Clips, default_log_dir, run_scenario
    from loadtest.target import Target, spawned_server
    from sfu import gcpolicy
    from sfu.iceaddr import restrict_host_addresses

    scenario = with_overrides(
        SCENARIOS[args.scenario],
        video_publishers=args.video_publishers,
        audio_publishers=args.audio_publishers,
        subscribers=args.subscribers,
        duration=args.duration,
        joins_per_second=args.joins_per_second,
        codec=args.codec,
        video_bitrate=args.video_bitrate,
        loss=args.loss,
        pace_ms=args.pace_ms,
        keyframes_on_request=args.keyframes_on_request or None,
        answer_nacks=False if args.ignore_nacks else None,
        listening=args.listening_subscribers,
        warmup=args.warmup,
        churn_interval=args.churn_interval,
        bad_token_share=args.bad_token_share,
        bound_share=args.bound_share,
        rooms=args.rooms,
        e2ee=args.e2ee or None,
    )
    baselines = args.baseline or []
    problem = _scenario_problem(scenario, baselines)
    if problem is not None:
        print(f"keyroom: error: {problem}", file=sys.stderr)
        return 2
    if args.compare_recording:
        from loadtest.recordbench import run_recording_comparison

        restrict_host_addresses(["127.0.0.1"])
        return run_recording_comparison(args, scenario, args.compare_recording)
    secret = args.secret or os.environ.get("KEYROOM_SECRET")
    if args.url and (not args.key or not secret):
        print("keyroom: error: --url needs --key and --secret", file=sys.stderr)
        return 2
    # Load-test traffic stays on loopback (aioice never gathers there by default).
    restrict_host_addresses(["127.0.0.1"])
    progress = not args.quiet and sys.stderr.isatty()
    clips = Clips.for_scenario(scenario)
    if clips.video is not None:
        prefer_video_codec(clips.video.mime_type)
    log_dir = default_log_dir()
    reports: dict[str, dict[str, Any]] = {}
    # The generator's own collector pauses would reach the server as bursts: the server's schedule.
    gcpolicy.apply()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if args.url:
            assert args.key and secret
            target = Target(
                args.url[0],
                args.key,
                secret,
                args.server_pid,
                dev=False,
                metrics_token=args.metrics_token or os.environ.get("KEYROOM_METRICS_TOKEN"),
                urls=tuple(args.url),
            )
            reports["keyroom"] = runner.run(run_scenario(scenario, target, progress, clips))
        else:
            with spawned_server(log_dir, e2ee_required_config(log_dir, scenario)) as target:
                reports["keyroom"] = runner.run(run_scenario(scenario, target, progress, clips))
        for name in baselines:
            with baseline_target(name, log_dir, args) as target:
                reports[name] = runner.run(run_scenario(scenario, target, progress, clips))
    report = reports["keyroom"]
    # Pass or fail is keyroom's; a baseline's loss or missing tracks are reported beside it.
    ok = passed(report, args.max_loss)
    report["passed"] = ok
    if args.plot:
        from loadtest.plot import plot_reports

        plot_reports(reports, args.plot)
    if baselines:
        output: dict[str, Any] = dict(reports)
        output["comparison"] = compare(reports)
        output["passed"] = ok
        text = "\n\n".join(
            [f"== {name}\n{format_table(r)}" for name, r in reports.items()]
            + [format_comparison(output["comparison"])]
        )
    else:
        output, text = report, format_table(report)
    print(json.dumps(output, indent=2) if args.json else text)
    return 0 if ok else 1


def e2ee_required_config(log_dir: str, scenario: Any) -> tuple[str, ...]:
    """`--config` for a spawned server whose rooms require E2EE, when the run sends it."""
    if not scenario.e2ee:
        return ()
    path = os.path.join(log_dir, "e2ee-required.toml")
    with open(path, "w") as file:
        file.write("[limits]\ne2ee_required = true\n")
    return ("--config", path)


@contextlib.contextmanager
def baseline_target(name: str, log_dir: str, args: argparse.Namespace) -> Iterator[Any]:
    """A spawned baseline server as a load-test target."""
    from loadtest.baseline_relay import BaselineClient, spawned_baseline
    from loadtest.janus import JanusClient, spawned_janus
    from loadtest.target import Target
    from sfu.iceaddr import restrict_host_addresses

    if name == "janus":
        # libnice never gathers on loopback: the clients meet Janus on the veth pair.
        restrict_host_addresses([args.janus_client_ip])
        try:
            with spawned_janus(log_dir, args.janus_interface) as (url, pid):
                yield Target(
                    url,
                    "baseline",
                    secrets.token_urlsafe(32),
                    pid,
                    dev=False,
                    name=name,
                    client_factory=JanusClient,
                    metrics_path=None,
                )
        finally:
            restrict_host_addresses(["127.0.0.1"])
        return
    with spawned_baseline(log_dir) as (url, pid):
        # Tokens are minted as for keyroom (same client work) and never checked.
        yield Target(
            url,
            "baseline",
            secrets.token_urlsafe(32),
            pid,
            dev=False,
            name=name,
            client_factory=BaselineClient,
            forwards_payloads=False,
            metrics_path=None,
        )


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fanout", type=int, action="append", help="repeatable (default 1, 5, 20, 50)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), action="append", help="default both")
    p.add_argument(
        "--path",
        choices=("fast", "shared", "batched", "recvmmsg", "compiled", "hook"),
        action="append",
        help="default all: fast (a socket per subscriber), shared (one socket, pure Python),"
        " batched (one socket, compiled sendmmsg fan-out), recvmmsg (that, with the input read"
        " in batches), compiled (that, with each copy made in compiled code: rtc.fanout"
        " compiled), hook (aiortc's queued hand-off)",
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="alternating runs of every cell (default 1)"
    )
    p.add_argument(
        "--out-rate",
        type=int,
        default=20000,
        help="output packets/s offered per cell (input rate = out-rate / fan-out; default 20000)",
    )
    p.add_argument("--seconds", type=float, default=3.0, help="per cell (default 3)")
    p.add_argument("--size", type=int, default=1200, help="RTP packet size (default 1200)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--simulcast",
        action="store_true",
        help="instead: a 3-layer simulcast track against a single-layer one, per output packet,"
        " at the first --fanout (default 20), rounds alternating; with --path compiled through"
        " the shared socket's batch and the compiled per-copy loop",
    )
    p.add_argument(
        "--transport-cc",
        action="store_true",
        help="instead: subscribers with transport-cc and a send budget (browsers) against"
        " subscribers without, compiled per-copy loop and Python path, per output packet",
    )
    p.add_argument(
        "--red",
        action="store_true",
        help="instead: RED audio to subscribers that negotiated RED (their own Opus payload"
        " type), compiled per-copy loop and Python path, per RED copy",
    )
    p.add_argument(
        "--tight",
        action="store_true",
        help="instead: CPU per input packet with warm caches (inputs back to back, no loop"
        " wake-up) on the fast, shared, batched and compiled paths (default fan-out 1, 10, 20)",
    )


def run_bench(args: argparse.Namespace) -> int:
    from loadtest.bench_forward import format_results, run_cells

    if args.simulcast:
        from loadtest.bench_simulcast import compare, format_comparison

        path = "compiled" if "compiled" in (args.path or ()) else "python"
        result = compare(fanout=(args.fanout or [20])[0], path=path)
        print(json.dumps(result, indent=2) if args.json else format_comparison(result))
        return 0
    if args.transport_cc:
        from loadtest import bench_twcc

        twcc = bench_twcc.compare(fanout=(args.fanout or [20])[0])
        print(json.dumps(twcc, indent=2) if args.json else bench_twcc.format_comparison(twcc))
        return 0
    if args.red:
        from loadtest import bench_red

        red = bench_red.compare(fanout=(args.fanout or [20])[0])
        print(json.dumps(red, indent=2) if args.json else bench_red.format_comparison(red))
        return 0
    if args.tight:
        from loadtest.bench_tight import PATHS, format_tight, run_tight

        paths = [p for p in args.path or PATHS if p in PATHS]
        tight = run_tight(
            fanouts=args.fanout or [1, 10, 20], paths=paths, chunks=5, size=args.size,
            repeat=args.repeat,
        )  # fmt: skip
        print(json.dumps(tight, indent=2) if args.json else format_tight(tight))
        return 0
    results = run_cells(
        fanouts=args.fanout or [1, 5, 20, 50],
        loops=args.loop or ["asyncio", "uvloop"],
        paths=args.path or ["fast", "shared", "batched", "recvmmsg", "compiled", "hook"],
        out_rate=args.out_rate,
        seconds=args.seconds,
        size=args.size,
        repeat=args.repeat,
    )
    print(json.dumps(results, indent=2) if args.json else format_results(results))
    return 0


def add_soak_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`keyroom soak`: the whole subcommand here, so that sfu/cli.py only names it."""
    p = commands.add_parser(
        "soak",
        help="churn with media for a long time; check RSS, fds and tasks stay flat",
        description="Spawn a dev server, churn around steady calls (joins, publishes,"
        " unpublishes, leaves, reconnects, resumes), sample it between cycles, and say whether"
        " RSS, open fds and tasks stayed within 10 %% of the first sample after warm-up.",
    )
    p.add_argument("--minutes", type=float, default=30.0, help="churn time (default 30)")
    p.add_argument(
        "--warmup-minutes", type=float, help="before the baseline sample (default: a sixth)"
    )
    p.add_argument("--sample-interval", type=float, default=30.0, metavar="S", help="(default 30)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_soak)


def _soak(args: argparse.Namespace) -> int:
    from loadtest.soak import main_soak

    warmup = args.warmup_minutes if args.warmup_minutes is not None else args.minutes / 6
    return main_soak(args.minutes, warmup, args.sample_interval, args.json)


def _run_livekit(args: argparse.Namespace) -> int:
    from loadtest.livekitload import Options, format_report, run

    options = Options(
        joins=args.joins,
        publishers=args.video_publishers or 2,
        subscribers=args.subscribers or 4,
        duration=args.duration or 20.0,
    )
    report = asyncio.run(run(options))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
