"""`keyroom token --config FILE` and `--admin`: the operator's way to mint tokens for their own
server without pasting its secrets into a shell, and the admin tokens the admin API needs.

`prepare(args, env)` fills in, before `keyroom token` mints: the key id and its secret from the
server's config (`[auth] keys`, or KEYROOM_KEYS as the server reads it), the admin grants, and a
check of the lifetime against `auth.max_token_ttl` (refused with --config: the server would
refuse the token; a warning otherwise, against the default maximum).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from auth.tokens import parse_ttl
from sfu.config import AuthConfig, parse_config_file, parse_keys

# What `--admin` grants: with --room, that room's admin (admin API section 4); without, the
# server-wide grants (list and create rooms, reload the configuration). Neither joins a room.
ROOM_ADMIN_GRANTS = ("roomJoin=false", "roomAdmin=true")
SERVER_ADMIN_GRANTS = ("roomJoin=false", "roomList=true", "roomCreate=true")
DEFAULT_MAX_TTL = AuthConfig().max_token_ttl


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the server's TOML config: its key (and KEYROOM_KEYS) sign, its max_token_ttl holds",
    )
    parser.add_argument(
        "--admin",
        action="store_true",
        help="an admin token: roomAdmin of --room, or without --room the server-wide"
        " roomList and roomCreate (list and create rooms, reload the configuration)",
    )


def prepare(args: argparse.Namespace, env: Mapping[str, str]) -> list[str]:
    """Complete `args` for minting; return warnings for stderr; raise ValueError to refuse."""
    max_ttl, source = DEFAULT_MAX_TTL, "the default auth.max_token_ttl"
    if args.config is not None:
        auth = parse_config_file(args.config).auth
        max_ttl, source = auth.max_token_ttl, f"auth.max_token_ttl of {args.config}"
        _key_from_config(args, auth, env)
    if args.key is None:
        raise ValueError("--key is required (or --config FILE with one signing key)")
    if args.admin:
        args.grant = [*(ROOM_ADMIN_GRANTS if args.room else SERVER_ADMIN_GRANTS), *args.grant]
    elif args.room is None:
        raise ValueError("--room is required (or --admin for a server-wide admin token)")
    ttl = parse_ttl(args.ttl)
    if ttl <= max_ttl:
        return []
    message = (
        f"--ttl {args.ttl} ({ttl:g} s) exceeds {source} ({max_ttl:g} s):"
        " the server refuses such a token"
    )
    if args.config is not None:
        raise ValueError(message)
    return [f"warning: {message} (unless its max_token_ttl is raised)"]


def _key_from_config(args: argparse.Namespace, auth: AuthConfig, env: Mapping[str, str]) -> None:
    keys = dict(auth.keys)
    if env.get("KEYROOM_KEYS"):  # the server's own precedence: it replaces the file's keys
        keys = parse_keys(env["KEYROOM_KEYS"].split(","), "KEYROOM_KEYS")
    if args.key is None:
        if len(keys) != 1:
            ids = ", ".join(keys) or "none"
            raise ValueError(f"--key: choose one of the config's signing keys ({ids})")
        args.key = next(iter(keys))
    if args.secret or args.private_key or env.get("KEYROOM_SECRET"):
        return
    if args.key in keys:
        args.secret = keys[args.key]
    elif args.key in auth.public_keys:
        raise ValueError(f"--key {args.key}: a public key; sign with --private-key FILE")
    else:
        raise ValueError(f"--key {args.key}: not in {args.config} ({', '.join(keys) or 'none'})")
