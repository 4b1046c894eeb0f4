"""`keyroom loadtest --compare-recording`: what recording every track costs the server, against
what one more subscriber of every track costs, in the same run (docs/benchmarks.md).

Three variants of the chosen scenario's publishers, each on a fresh spawned server, alternating
for `--rounds` rounds so that drift in the machine's load hits all of them alike:
publishers only; plus one subscriber receiving every track; plus a recording of every track
(no subscriber). The acceptance: recording's added CPU is at most 1.2 times the subscriber's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from dataclasses import replace
from typing import Any

from loadtest.scenarios import Scenario

VARIANTS = ("publishers only", "+1 subscriber of every track", "+recording of every track")
ALLOWED_RATIO = 1.2


def _config(directory: str) -> str:
    from sfu.recording import keys

    _private, public = keys.generate()
    path = os.path.join(directory, "recording.toml")
    with open(path, "w") as file:
        file.write(
            f'[server]\ndata_dir = "{os.path.join(directory, "data")}"\n'
            f'[recording]\npublic_key = """\n{public.decode()}"""\n'
            "[limits]\nrecording_allowed = true\n"
        )
    return path


def _variant(scenario: Scenario, index: int) -> Scenario:
    if index == 0:
        return replace(scenario, subscribers=0, record=False)
    if index == 1:
        return replace(scenario, subscribers=1, record=False)
    return replace(scenario, subscribers=0, record=True)


def run_recording_comparison(args: argparse.Namespace, scenario: Scenario, rounds: int) -> int:
    import uvloop

    from loadtest.clients import prefer_video_codec
    from loadtest.runner import Clips, default_log_dir, run_scenario
    from loadtest.target import spawned_server

    clips = Clips.for_scenario(scenario)
    if clips.video is not None:
        prefer_video_codec(clips.video.mime_type)
    log_dir = default_log_dir()
    cpu: dict[int, list[float]] = {i: [] for i in range(len(VARIANTS))}
    runner_of = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    with tempfile.TemporaryDirectory() as directory, runner_of as runner:
        config = _config(directory)
        for _round in range(rounds):
            for index in range(len(VARIANTS)):
                variant = _variant(scenario, index)
                with spawned_server(log_dir, ("--config", config)) as target:
                    report = runner.run(run_scenario(variant, target, False, clips))
                cpu[index].append(float(report.get("server", {}).get("cpu_percent_mean", 0.0)))
                print(f"round {_round + 1} {VARIANTS[index]}: {cpu[index][-1]} %", file=sys.stderr)
    result = summarize(cpu, scenario)
    print(json.dumps(result, indent=2) if args.json else format_summary(result))
    return 0 if result["passed"] else 1


def summarize(cpu: dict[int, list[float]], scenario: Scenario) -> dict[str, Any]:
    means = {VARIANTS[i]: round(sum(v) / len(v), 2) for i, v in cpu.items() if v}
    base = means[VARIANTS[0]]
    subscriber = means[VARIANTS[1]] - base
    recording = means[VARIANTS[2]] - base
    ratio = recording / subscriber if subscriber > 0 else None
    return {
        "tracks": scenario.video_publishers + scenario.audio_publishers,
        "duration": scenario.duration,
        "rounds": len(cpu[0]),
        "server_cpu_percent_mean": means,
        "runs": {VARIANTS[i]: v for i, v in cpu.items()},
        "subscriber_cost_percent": round(subscriber, 2),
        "recording_cost_percent": round(recording, 2),
        "recording_vs_subscriber": round(ratio, 2) if ratio is not None else None,
        "passed": ratio is not None and ratio <= ALLOWED_RATIO,
    }


def format_summary(result: dict[str, Any]) -> str:
    lines = [
        f"{result['tracks']} tracks, {result['duration']:g} s measured, {result['rounds']} rounds"
    ]
    for name, value in result["server_cpu_percent_mean"].items():
        lines.append(f"  {name:<32} server CPU {value} % (runs {result['runs'][name]})")
    lines.append(
        f"  recording costs {result['recording_cost_percent']} %, one subscriber of every track"
        f" {result['subscriber_cost_percent']} %: ratio {result['recording_vs_subscriber']}"
        f" (allowed {ALLOWED_RATIO}) {'PASS' if result['passed'] else 'FAIL'}"
    )
    return "\n".join(lines)
