"""`keyroom loadtest` and `keyroom bench`: argument parsing and entry points."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from loadtest.scenarios import SCENARIOS, with_overrides


def add_loadtest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="5x5-video")
    p.add_argument("--url", help="target server's ws://host:port/rtc (default: --spawn-server)")
    p.add_argument("--key", help="key id to mint tokens with (with --url)")
    p.add_argument("--secret", help="its secret; prefer $KEYROOM_SECRET")
    p.add_argument("--server-pid", type=int, help="sample this pid's CPU/RSS (with --url)")
    p.add_argument("--spawn-server", action="store_true", help="run a dev server (the default)")
    p.add_argument("--video-publishers", type=int)
    p.add_argument("--audio-publishers", type=int)
    p.add_argument("--subscribers", type=int)
    p.add_argument("--duration", type=float, help="measured seconds after everyone joined")
    p.add_argument("--joins-per-second", type=float)
    p.add_argument("--codec", choices=("vp8", "h264"))
    p.add_argument("--video-bitrate", type=int, metavar="BPS")
    p.add_argument("--loss", type=float, help="simulated loss: share of packets publishers drop")
    p.add_argument("--churn-interval", type=float, metavar="S")
    p.add_argument("--bad-token-share", type=float)
    p.add_argument("--max-loss", type=float, default=0.01, help="pass threshold (default 0.01)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def run_loadtest(args: argparse.Namespace) -> int:
    # Imported here: the media stack is only needed once a test really runs.
    import uvloop

    from loadtest.report import format_table, passed
    from loadtest.runner import Target, default_log_dir, run_scenario, spawned_server
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
        churn_interval=args.churn_interval,
        bad_token_share=args.bad_token_share,
    )
    # Load-test traffic stays on loopback (aioice never gathers there by default).
    restrict_host_addresses(["127.0.0.1"])
    progress = not args.quiet and sys.stderr.isatty()

    async def against(target: Target) -> dict[str, Any]:
        return await run_scenario(scenario, target, progress)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if args.url:
            secret = args.secret or os.environ.get("KEYROOM_SECRET")
            if not args.key or not secret:
                print("keyroom: error: --url needs --key and --secret", file=sys.stderr)
                return 2
            target = Target(args.url, args.key, secret, args.server_pid, dev=False)
            report = runner.run(against(target))
        else:
            with spawned_server(default_log_dir()) as target:
                report = runner.run(against(target))
    ok = passed(report, args.max_loss)
    report["passed"] = ok
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    return 0 if ok else 1


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fanout", type=int, action="append", help="repeatable (default 1, 5, 20, 50)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), action="append", help="default both")
    p.add_argument("--path", choices=("fast", "hook"), action="append", help="default both")
    p.add_argument(
        "--out-rate",
        type=int,
        default=20000,
        help="output packets/s offered per cell (input rate = out-rate / fan-out; default 20000)",
    )
    p.add_argument("--seconds", type=float, default=3.0, help="per cell (default 3)")
    p.add_argument("--size", type=int, default=1200, help="RTP packet size (default 1200)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run_bench(args: argparse.Namespace) -> int:
    from loadtest.bench_forward import format_results, run_cells

    results = run_cells(
        fanouts=args.fanout or [1, 5, 20, 50],
        loops=args.loop or ["asyncio", "uvloop"],
        paths=args.path or ["fast", "hook"],
        out_rate=args.out_rate,
        seconds=args.seconds,
        size=args.size,
    )
    print(json.dumps(results, indent=2) if args.json else format_results(results))
    return 0
