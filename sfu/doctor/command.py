"""`keyroom doctor`'s arguments and handler (registered by sfu/cli.py); light to import."""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit


def add_doctor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", metavar="FILE", help="the server's TOML config (default: $KEYROOM_CONFIG)"
    )
    p.add_argument(
        "--url", help="the running server as clients reach it, e.g. https://sfu.example.com"
    )
    p.add_argument("--coturn", metavar="FILE", help="a turnserver.conf to check for an open relay")
    p.add_argument("--cafile", metavar="FILE", help="also trust this CA for --url (a private CA)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")


def _usage_error(message: str) -> int:
    print(f"keyroom: error: {message}", file=sys.stderr)
    return 2


def run_doctor(args: argparse.Namespace) -> int:
    # Imported here: the checks pull in cryptography and the config package.
    from sfu.config import ConfigError
    from sfu.doctor.run import doctor

    config = args.config or os.environ.get("KEYROOM_CONFIG") or None
    if config is None and args.url is None:
        return _usage_error("nothing to check: give --config FILE (or $KEYROOM_CONFIG), --url URL")
    if args.url is not None and urlsplit(args.url).scheme not in ("http", "https"):
        return _usage_error("--url: the server's base URL, like https://sfu.example.com")
    if args.coturn is not None and config is None:
        return _usage_error("--coturn needs --config: the SFU's addresses are the relay's peers")
    try:
        lines, status = doctor(
            config, args.url, coturn=args.coturn, cafile=args.cafile, timeout=args.timeout
        )
    except ConfigError as e:
        return _usage_error(str(e))
    print("\n".join(lines))
    return status
