"""CLI: build the impaired topology, print how to enter each namespace, run a command or wait.

    python -m loadtest.impair --clients pub,sub1,sub2 --up pub=loss:0.03 \
        --down sub1=loss:0.03,delay:0.1,rate:300 [-- COMMAND ...]

COMMAND runs in the caller's namespace with KEYROOM_IMPAIR_<NAME>=<nsenter prefix> for each
namespace in its environment (e.g. `$KEYROOM_IMPAIR_SERVER keyroom serve ...`); without one,
the topology stays up until interrupted. Run it inside a throw-away namespace
(`loadtest/in-netns`), as root or with a user namespace.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys

from loadtest.impair.topology import SERVER_ADDRESS, Impairment, topology


def parse_impairment(text: str) -> tuple[str, Impairment]:
    """`NAME=loss:0.03,delay:0.1,rate:300` (delay in seconds, rate in kbit/s)."""
    name, _, spec = text.partition("=")
    values: dict[str, float] = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition(":")
        if key not in ("loss", "delay", "rate"):
            raise argparse.ArgumentTypeError(f"unknown impairment {key!r}")
        values[key] = float(value)
    rate = values.get("rate")
    return name, Impairment(
        values.get("loss", 0.0), values.get("delay", 0.0), None if rate is None else int(rate)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="pub,sub1,sub2")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--up", type=parse_impairment, action="append", default=[])
    parser.add_argument("--down", type=parse_impairment, action="append", default=[])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    clients = args.clients.split(",")
    with topology(clients, args.seed) as built:
        for name, impairment in args.up:
            built.impair(name, up=impairment)
        for name, impairment in args.down:
            built.impair(name, down=impairment)
        env = dict(os.environ)
        for name in ["server", *clients]:
            prefix = shlex.join(built.command(name, []))
            env[f"KEYROOM_IMPAIR_{name.upper()}"] = prefix
            where = SERVER_ADDRESS if name == "server" else built.address(name)
            print(f"{name:8} {where:12} {prefix}", flush=True)
        command = [c for c in args.command if c != "--"]
        if command:
            return subprocess.run(command, env=env).returncode
        print("topology up; Ctrl-C to tear down", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
