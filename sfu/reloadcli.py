"""`keyroom reload`: make a running server read its configuration again, without dropping calls.

`--pid PID` (or `--pid-file FILE`) sends it SIGHUP, as `systemctl reload` does; `--url URL`
calls `POST /api/reload` with the server admin token, minted from `--config FILE` (its key,
for 60 s) or given as $KEYROOM_ADMIN_TOKEN, and prints what changed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from sfu.config import ConfigError

ADMIN_TOKEN_TTL = 60.0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "reload",
        help="reload a running server's configuration (keys, limits, rooms, webhooks, TURN)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--pid", type=int, help="the server's process id: send it SIGHUP")
    target.add_argument("--pid-file", metavar="FILE", help="a file holding the server's pid")
    target.add_argument("--url", help="the server's base URL, e.g. https://sfu.example.com:7880")
    p.add_argument("--config", metavar="FILE", help="with --url: mint the admin token from it")
    p.add_argument("--cafile", metavar="PEM", help="with --url: CA bundle to verify TLS with")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.url is None:
            return _signal(args)
        return _call(args)
    except (ValueError, ConfigError, OSError) as exc:
        print(f"keyroom: error: {exc}", file=sys.stderr)
        return 2


def _signal(args: argparse.Namespace) -> int:
    pid = args.pid
    if pid is None:
        with open(args.pid_file) as file:
            pid = int(file.read().strip())
    os.kill(pid, signal.SIGHUP)
    print(f"sent SIGHUP to {pid}: the server logs what it applied")
    return 0


def _admin_token(config_path: str | None) -> str:
    from auth.tokens import mint_token
    from sfu.config import parse_config_file, parse_keys

    token = os.environ.get("KEYROOM_ADMIN_TOKEN")
    if token:
        return token
    if config_path is None:
        raise ValueError("--url needs --config FILE (or $KEYROOM_ADMIN_TOKEN)")
    keys = dict(parse_config_file(config_path).auth.keys)
    if os.environ.get("KEYROOM_KEYS"):
        keys = parse_keys(os.environ["KEYROOM_KEYS"].split(","), "KEYROOM_KEYS")
    if not keys:
        raise ValueError(f"{config_path}: no signing keys ([auth] keys or KEYROOM_KEYS)")
    key_id, secret = next(iter(keys.items()))
    grants = {"roomJoin": False, "roomList": True, "roomCreate": True}
    return mint_token(
        key_id=key_id,
        secret=secret,
        identity="keyroom-reload",
        room=None,
        ttl=ADMIN_TOKEN_TTL,
        now=time.time(),
        grants=grants,
    )


def _call(args: argparse.Namespace) -> int:
    request = urllib.request.Request(
        args.url.rstrip("/") + "/api/reload",
        method="POST",
        headers={"Authorization": f"Bearer {_admin_token(args.config)}"},
    )
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            result: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        if exc.code != 422:
            raise ValueError(f"{args.url}: HTTP {exc.code}: {body[:300]}") from None
        result = json.loads(body)
    if not result.get("ok"):
        print(f"not reloaded, the old configuration stays in use: {result.get('error')}")
        return 1
    print(f"reloaded; changed: {', '.join(result['changed']) or 'nothing'}")
    if result["restart_needed"]:
        print(f"not applied until a restart: {', '.join(result['restart_needed'])}")
    return 0
