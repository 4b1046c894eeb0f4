"""The `keyroom` command: `serve` runs the SFU, `token` mints an access token.

Each subcommand is one `_add_<name>` function that registers its parser and the function to run,
so later commands (audit verify, turn-config, loadtest, bench) slot in beside these.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sfu import fastpathcli, incidentcli
from sfu.config import LOG_LEVELS, Config, ConfigError, load_config, parse_keys
from sfu.recordingcli import add_parser as add_recording_command

if TYPE_CHECKING:
    from auth.keys import PrivateKey

PROG = "keyroom"
Handler = Callable[[argparse.Namespace], int]


def _fail(message: str) -> int:
    # The same shape and exit status as argparse's own usage errors.
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _serve_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Map the flags that were given onto config keys; absent flags leave the file's value."""
    server: dict[str, Any] = {}
    if args.host is not None:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    if args.dev:
        server["dev"] = True
    if args.allow_origin:
        server["allowed_origins"] = args.allow_origin
    if args.insecure_plaintext:
        server["insecure_plaintext"] = True
    if args.log_level is not None:
        server["log_level"] = args.log_level
    overrides: dict[str, dict[str, Any]] = {"server": server}
    if args.rtc_ip:
        overrides["rtc"] = {"ips": args.rtc_ip}
    if args.key:
        overrides["auth"] = {"keys": parse_keys(args.key, "--key")}
    if args.redis:
        overrides["cluster"] = {"redis_url": args.redis}
    return overrides


def _serve(args: argparse.Namespace) -> int:
    from sfu import workers

    def source() -> Config:
        # The same sources in the same order: SIGHUP re-reads the file for the signing keys.
        overrides = _serve_overrides(args)
        config = load_config(args.config, overrides, os.environ)
        if args.worker is None:
            return config
        mine = workers.worker_overrides(config, *workers.parse_worker(args.worker))
        return load_config(args.config, _merged(overrides, mine), os.environ)

    try:
        config = source()
        workers.check_workers(config, args.workers)
    except ConfigError as e:
        return _fail(str(e))
    if args.workers > 1:
        return workers.supervise(workers.without_workers(sys.argv[1:]), args.workers)
    # Imported here so `keyroom token` and config errors never pay for the media stack's import.
    # run_server sets up logging and, in dev mode, prints the dev key and a join link.
    from signaling.server import run_server

    return run_server(config, source)


def _merged(
    base: dict[str, dict[str, Any]], more: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    return {s: {**base.get(s, {}), **more.get(s, {})} for s in base.keys() | more.keys()}


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("serve", help="run the SFU", description="Run the SFU.")
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: $KEYROOM_CONFIG)")
    p.add_argument("--host", help="signaling address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="signaling port (default 7880)")
    p.add_argument(
        "--rtc-ip",
        action="append",
        metavar="IP",
        help="address to bind media to and advertise; repeatable (default in --dev: 127.0.0.1)",
    )
    p.add_argument(
        "--key",
        action="append",
        metavar="KEY=SECRET",
        help="token signing key; repeatable (also $KEYROOM_KEYS=k1=s1,k2=s2)",
    )
    p.add_argument(
        "--dev",
        action="store_true",
        help="loopback-only development mode: plaintext allowed, a dev key is generated",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="browser origin allowed to open /rtc besides the server's own; repeatable",
    )
    p.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="allow plain HTTP/WS on a non-loopback address (behind a TLS-terminating proxy)",
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    p.add_argument("--redis", metavar="URL", help="join the cluster on this Redis ([cluster])")
    from sfu.workers import add_arguments

    add_arguments(p)
    p.set_defaults(handler=_serve)


def _signing_key(args: argparse.Namespace) -> str | PrivateKey:
    """The secret (HS256) or the private key (ES256, EdDSA) to sign with; raises ValueError."""
    from auth.keys import load_private_key

    if args.private_key is not None:
        if args.secret:
            raise ValueError("give --secret or --private-key, not both")
        try:
            with open(args.private_key, "rb") as file:
                return load_private_key(file.read())
        except OSError as e:
            raise ValueError(f"{args.private_key}: {e.strerror}") from None
        except ValueError as e:
            raise ValueError(f"{args.private_key}: {e}") from None
    secret = args.secret or os.environ.get("KEYROOM_SECRET")
    if not secret:
        raise ValueError(
            "no secret: use --secret SECRET or the KEYROOM_SECRET environment variable,"
            " or --private-key FILE"
        )
    return secret


def _token(args: argparse.Namespace) -> int:
    # Imported here: auth.tokens is only needed by this command.
    from auth.keybinding import thumbprint_of_file
    from auth.tokens import mint_token, parse_grant_overrides, parse_ttl
    from sfu import tokenconfig

    try:
        for warning in tokenconfig.prepare(args, os.environ):
            print(f"{PROG}: {warning}", file=sys.stderr)
        signing_key = _signing_key(args)
        ttl = parse_ttl(args.ttl)
        grants = parse_grant_overrides(args.grant)
        token = mint_token(
            key_id=args.key,
            secret=signing_key,
            identity=args.identity,
            room=args.room,
            ttl=ttl,
            now=time.time(),
            name=args.name,
            metadata=args.metadata,
            role=args.role,
            grants=grants or None,
            bind=thumbprint_of_file(args.bind) if args.bind else None,
        )
    except (ValueError, ConfigError) as e:
        return _fail(str(e))
    print(token)
    return 0


def _add_token(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "token",
        help="mint an access token",
        description="Mint an access token and print it alone on one line: HS256 with a secret,"
        " ES256 or EdDSA with a private key (the algorithm follows the key).",
    )
    p.add_argument("--key", help="key id (the token's kid and iss); required without --config")
    p.add_argument(
        "--secret",
        help="HS256 secret of the key; prefer $KEYROOM_SECRET (arguments are visible in ps)",
    )
    p.add_argument(
        "--private-key",
        metavar="FILE",
        help="PEM private key (EC P-256: ES256, Ed25519: EdDSA) whose public key the server"
        " has as [auth] public_keys.KEY",
    )
    p.add_argument("--identity", required=True, help="participant identity (sub)")
    p.add_argument("--room", help="room the token admits to (video.room); required but --admin")
    p.add_argument(
        "--ttl", default="6h", help="lifetime: seconds, or 90s, 10m, 6h, 1d (default 6h)"
    )
    p.add_argument("--role", help="server-side role name the grants expand from")
    p.add_argument("--name", default="", help="display name")
    p.add_argument("--metadata", default="", help="opaque participant metadata")
    p.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a video grant, e.g. canPublish=false; repeatable",
    )
    from sfu.tokenconfig import add_arguments

    add_arguments(p)
    p.add_argument(
        "--bind",
        metavar="PUBKEY.pem",
        help="bind the token to this client public key (cnf.jkt): joining needs its private key",
    )
    p.set_defaults(handler=_token)


def _loadtest(args: argparse.Namespace) -> int:
    # Imported here: the load tester pulls in the client and media stack.
    from loadtest.cli import run_loadtest

    return run_loadtest(args)


def _add_loadtest(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from loadtest.cli import add_loadtest_arguments

    p = commands.add_parser(
        "loadtest",
        help="drive a server with cheap publishers and subscribers and report",
        description="Run a load-test scenario (by default against a dev server it spawns).",
    )
    add_loadtest_arguments(p)
    p.set_defaults(handler=_loadtest)


def _bench(args: argparse.Namespace) -> int:
    from loadtest.cli import run_bench

    return run_bench(args)


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from loadtest.cli import add_bench_arguments

    p = commands.add_parser(
        "bench",
        help="forwarding micro-benchmark: CPU per output packet against the floor",
        description="Drive the forwarding core in-process and compare it to protect + sendto.",
    )
    add_bench_arguments(p)
    p.set_defaults(handler=_bench)


def _turn_config(args: argparse.Namespace) -> int:
    from auth.turn import turn_config_lines
    from sfu.config import parse_config_file

    try:
        config = parse_config_file(args.config or os.environ.get("KEYROOM_CONFIG") or None)
    except ConfigError as e:
        return _fail(str(e))
    if config.turn.secret is None:
        return _fail("turn.secret: not set in the config file")
    dev = args.dev or config.server.dev
    # The SFU as a relay reaches it: its bound addresses, and its 1:1 NAT addresses.
    ips = (*config.rtc.ips, *config.rtc.public_ips) or (("127.0.0.1",) if dev else ())
    # The secret is the point of this output: write it to a file only coturn can read.
    print("\n".join(turn_config_lines(config.turn.secret, config.turn.realm, ips, dev)))
    return 0


def _add_turn_config(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "turn-config",
        help="print coturn config lines matching [turn]",
        description="Print the turnserver.conf lines matching this config's [turn] section.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: $KEYROOM_CONFIG)")
    p.add_argument("--dev", action="store_true", help="loopback test setup: allow loopback peers")
    p.set_defaults(handler=_turn_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="keyroom WebRTC SFU")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_token(commands)
    _add_turn_config(commands)
    _add_loadtest(commands)
    _add_bench(commands)
    _add_audit(commands)
    _add_doctor(commands)
    from sfu import reloadcli

    reloadcli.add_parser(commands)
    incidentcli.add_parser(commands)
    add_recording_command(commands)
    fastpathcli.add_parser(commands)
    from loadtest.cli import add_soak_command
    from loadtest.simulcastbench import add_parser as add_simulcast_bench

    add_soak_command(commands)
    add_simulcast_bench(commands)
    return parser


def _audit_verify(args: argparse.Namespace) -> int:
    from auth.audit import audit_key_file, verify_file
    from sfu.config import parse_config_file

    try:
        # The file's own options only: an auditor needs no signing keys.
        config = parse_config_file(args.config or os.environ.get("KEYROOM_CONFIG") or None)
        key_file = args.key_file or audit_key_file(config.audit.key_file, config.server.data_dir)
        with open(key_file, "rb") as file:
            key = file.read().strip()
        result = verify_file(args.file, key, args.checkpoints)
    except ConfigError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"{e.filename}: {e.strerror}")
    for line in result.report(args.file):
        print(line)
    return 0 if result.intact else 1


def _add_audit(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("audit", help="audit log tools", description="Audit log tools.")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    verify = verbs.add_parser(
        "verify",
        help="check an audit log's chain and its sealed checkpoints",
        description="Exit 0 if every record is authentic and links to the one before it, and the"
        " log still reaches its last sealed checkpoint; 1 with the first break and a count of the"
        " rest if a record was edited, removed, reordered or the log truncated.",
    )
    verify.add_argument("file", help="the [audit] path file")
    verify.add_argument(
        "--config", metavar="FILE", help="the server's TOML config: finds the audit key"
    )
    verify.add_argument(
        "--key-file", help="the audit key (default: [audit] key_file, else data_dir/audit.key)"
    )
    verify.add_argument(
        "--checkpoints", metavar="FILE", help="checkpoint file (default: FILE.checkpoints)"
    )
    verify.set_defaults(handler=_audit_verify)
    incidentcli.add_audit_verbs(verbs)


def _add_doctor(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from sfu.doctor.command import add_doctor_arguments, run_doctor

    p = commands.add_parser(
        "doctor",
        help="check a deployment as an auditor would and print what to fix",
        description="Check a config file, the files it names and a running server; one line per"
        " finding; exit 1 if any is an error, else 0 (see docs/doctor.md).",
    )
    add_doctor_arguments(p)
    p.set_defaults(handler=run_doctor)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)
