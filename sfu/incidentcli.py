"""Incident response from the command line (issue 15, docs/incident-response.md):

- `keyroom audit search` / `keyroom audit export`: the audit log, filtered, as JSON lines or CSV;
- `keyroom keys revoke KID`: the key kill-switch, through a running server's admin API;
- `keyroom identity revoke IDENTITY`: every session of an identity, in every room.

The revocations call the admin API (`POST /api/keys/KID/revoke`, `POST
/api/identities/ID/revoke`) with an operator's token (roomCreate and roomList, no room), taken
from `$KEYROOM_ADMIN_TOKEN` rather than the command line (arguments are visible in `ps`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from sfu.config import ConfigError

PROG = "keyroom"
HTTP_TIMEOUT = 10.0


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


# -- audit search / export ----------------------------------------------------------------------


def _audit_file(args: argparse.Namespace) -> str:
    if args.file:
        path: str = args.file
        return path
    from sfu.config import parse_config_file

    config = parse_config_file(args.config or os.environ.get("KEYROOM_CONFIG") or None)
    if config.audit.path is None:
        raise ConfigError("audit.path: not set in the config file; give --file")
    return config.audit.path


def _records(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    from auth.auditsearch import AuditQuery, Scan, parse_time

    now = time.time()
    query = AuditQuery(
        identity=args.identity,
        room=args.room,
        ip=args.ip,
        events=frozenset(args.event or ()),
        since=parse_time(args.since, now) if args.since else None,
        until=parse_time(args.until, now) if args.until else None,
    )
    scan = Scan()
    with open(_audit_file(args), "rb") as file:
        yield from scan.records(file, query)
    if scan.bad_lines:
        print(f"{PROG}: warning: {scan.bad_lines} unparsable lines skipped", file=sys.stderr)


def _audit_out(args: argparse.Namespace) -> int:
    from auth.auditsearch import csv_header, csv_line, jsonl

    as_csv = getattr(args, "format", "jsonl") == "csv"
    try:
        records = _records(args)
        first = next(records, None)  # errors (file, config, times) before any output
        if as_csv:
            print(csv_header())
        for record in itertools.chain([first] if first is not None else [], records):
            print(csv_line(record) if as_csv else jsonl(record))
    except (ConfigError, ValueError) as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"{e.filename}: {e.strerror}")
    return 0


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", help="the audit log (default: [audit] path of --config)")
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: $KEYROOM_CONFIG)")
    p.add_argument("--identity", help="records about this identity")
    p.add_argument("--room", help="records about this room")
    p.add_argument("--ip", help="records from this client address")
    p.add_argument(
        "--event", action="append", metavar="EVENT", help="this event (repeatable: any of them)"
    )
    p.add_argument(
        "--since", help="from this time: Unix seconds, ISO 8601 (UTC) or a duration ago (6h)"
    )
    p.add_argument("--until", help="before this time (same forms as --since)")


def add_audit_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    search = verbs.add_parser(
        "search",
        help="print the audit records that match, as JSON lines",
        description="Print the records of an audit log that match every filter given, one JSON"
        " object a line, in log order. Use `keyroom audit verify` to check the log's chain.",
    )
    _filters(search)
    search.set_defaults(handler=_audit_out)
    export = verbs.add_parser(
        "export",
        help="export the audit records that match, as JSON lines or CSV",
        description="Export the matching records of an audit log (JSON lines or CSV with the"
        " common fields as columns and the rest as JSON in `extra`).",
    )
    _filters(export)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.set_defaults(handler=_audit_out)


# -- revocations ----------------------------------------------------------------------------------


def _post(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 (the operator's own server URL)
        url, method="POST", data=b"", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310
        body: dict[str, Any] = json.loads(response.read())
    return body


def _revoke(args: argparse.Namespace) -> int:
    token = os.environ.get("KEYROOM_ADMIN_TOKEN") or args.token
    if not token:
        return _fail("no admin token: set KEYROOM_ADMIN_TOKEN (or --token)")
    kind = "keys" if args.command == "keys" else "identities"
    target = urllib.parse.quote(args.target, safe="")
    url = f"{args.url.rstrip('/')}/api/{kind}/{target}/revoke"
    try:
        body = _post(url, token)
    except urllib.error.HTTPError as e:
        return _fail(f"{url}: HTTP {e.code}: {e.read().decode(errors='replace')[:200]}")
    except (urllib.error.URLError, OSError) as e:
        return _fail(f"{url}: {getattr(e, 'reason', e)}")
    print(json.dumps(body))
    return 0


def _revoke_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], noun: str, what: str, target: str
) -> None:
    p = commands.add_parser(noun, help=f"incident response: {what}")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    revoke = verbs.add_parser(
        "revoke",
        help=f"revoke {what} and end its sessions now, in every room",
        description=f"Revoke {what} on a running server (admin API): every session it admitted"
        " ends at once with `leave` `revoked`, and later joins with it are refused. Audited."
        " The admin token (roomCreate and roomList, no room) comes from $KEYROOM_ADMIN_TOKEN.",
    )
    revoke.add_argument("target", metavar=target)
    revoke.add_argument("--url", default="http://127.0.0.1:7880", help="the server's base URL")
    revoke.add_argument("--token", help="admin token (prefer $KEYROOM_ADMIN_TOKEN)")
    revoke.set_defaults(handler=_revoke)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`keyroom keys revoke` and `keyroom identity revoke`."""
    _revoke_parser(commands, "keys", "a signing key", "KID")
    _revoke_parser(commands, "identity", "an identity", "IDENTITY")
