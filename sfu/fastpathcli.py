"""`keyroom build-ext`: compile the batched fan-out extension (sfu/fastpath) into the cache now,
rather than on the first server start with `[rtc] udp_port`."""

from __future__ import annotations

import argparse
import sys


def _build_ext(args: argparse.Namespace) -> int:
    from sfu.fastpath import loader

    try:
        path = loader.build()
    except Exception as exc:  # a compiler or Python's headers missing: say what, exit 1
        print(f"keyroom: error: cannot build the fan-out extension: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "build-ext",
        help="compile the batched fan-out extension into the cache",
        description="Compile the batched fan-out extension (cffi, sfu/fastpath/_build.py) into"
        " $KEYROOM_CACHE_DIR (default ~/.cache/keyroom) and print its path. Needs a C compiler"
        " and Python's headers; servers use it with [rtc] udp_port.",
    )
    p.set_defaults(handler=_build_ext)
