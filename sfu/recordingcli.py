"""`keyroom recording keygen | verify | export` (docs/recording.md)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

PROG = "keyroom recording"
EXPORT_LOG_SUFFIX = ".exports"  # the default export audit log: beside [audit] path


def _fail(message: str, status: int = 1) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return status


def _keygen(args: argparse.Namespace) -> int:
    from sfu.recording import keys

    private_pem, public_pem = keys.generate()
    try:
        fd = os.open(args.private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        return _fail(f"{args.private}: {e.strerror}", 2)
    with os.fdopen(fd, "wb") as file:
        file.write(private_pem)
    with open(args.public, "wb") as file:
        file.write(public_pem)
    print(f"private key: {args.private} (keep it off the server)")
    print(f"public key:  {args.public} (set [recording] public_key to it)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from sfu.recording.container import RecordingFormatError
    from sfu.recording.reader import verify

    try:
        with open(args.file, "rb") as file:
            result = verify(file, allow_partial=args.partial)
    except OSError as e:
        return _fail(f"{args.file}: {e.strerror}")
    except RecordingFormatError as e:
        return _fail(f"{args.file}: BROKEN: {e}")
    header = result.header
    state = "complete" if result.complete else "INCOMPLETE (no final chunk; complete ones intact)"
    print(
        f"{args.file}: OK: recording {header.get('id')} of room {header.get('room')},"
        f" {result.chunks} chunks, {state}"
        + (", end-to-end encrypted media" if header.get("e2ee") else "")
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    """Export, with the attempt on the audit trail (`--audit`, or beside the configured log)."""
    from auth.audit import AuditKeyError
    from auth.auditchain import AuditChainBroken
    from sfu.config import ConfigError

    try:
        audit = _open_audit(args)
    except (ConfigError, AuditKeyError, AuditChainBroken) as e:
        return _fail(f"audit log: {e}", 2)
    except OSError as e:
        return _fail(f"audit log: {e.filename}: {e.strerror}", 2)
    status, reason = _export_file(args)
    if audit is not None:
        audit.record(
            "recording_export",
            recording=_recording_id(args.file),
            file=str(args.file),
            operator=args.operator or getpass.getuser(),
            outcome="exported" if status == 0 else "failed",
            reason=reason,
            output=str(args.output),
        )
        audit.close()
    return status


def _recording_id(file: str) -> str | None:
    """The id in the file's clear header (readable without a key), None if it has none."""
    from sfu.recording.container import RecordingFormatError
    from sfu.recording.reader import read_header

    try:
        with open(file, "rb") as stream:
            rid = read_header(stream)[0].get("id")
    except (OSError, RecordingFormatError):
        return None
    return str(rid)[:64] if rid is not None else None


def _open_audit(args: argparse.Namespace) -> Any:
    """The AuditLog `export` appends to, or None without `--audit` and `--config`.

    The default is the configured log's own sibling (PATH.exports), not PATH itself: a running
    server holds PATH's chain in memory, and a second writer there would break it."""
    from auth.audit import AuditLog, audit_key_file, load_or_create_key
    from sfu.config import parse_config_file

    if args.audit is None and args.config is None:
        return None
    config = parse_config_file(args.config)
    path = args.audit
    if path is None:
        if config.audit.path is None:
            return None
        path = config.audit.path + EXPORT_LOG_SUFFIX
    key_file = args.audit_key or audit_key_file(config.audit.key_file, config.server.data_dir)
    return AuditLog(path, load_or_create_key(key_file))


def _export_file(args: argparse.Namespace) -> tuple[int, str]:
    """(exit status, reason for the audit record)."""
    from sfu.recording import keys
    from sfu.recording.container import RecordingFormatError
    from sfu.recording.export import ExportError, collect, export
    from sfu.recording.reader import decrypt

    try:
        private = keys.load_private(args.key)
        with open(args.file, "rb") as file:
            header, records = decrypt(file, private, allow_partial=args.partial)
            tracks, stopped = collect(records)
        cryptor: Any = None
        if args.e2ee_passphrase is not None:
            from signaling.client.e2ee import FrameCryptor

            cryptor = FrameCryptor.from_passphrase(args.e2ee_passphrase, str(header.get("room")))
        streams = export(tracks, args.output, cryptor=cryptor)
    except OSError as e:
        reason = f"{e.filename or args.file}: {e.strerror}"
        return _fail(reason), reason
    except (RecordingFormatError, keys.RecordingKeyError, ExportError) as e:
        return _fail(f"{args.file}: {e}"), str(e)
    if header.get("e2ee"):
        print("note: end-to-end encrypted room; frames decrypted with the given E2EE passphrase")
    for s in streams:
        if "skipped" in s:
            print(f"{s['kind']} {s['sid']} of {s['identity']}: left out, {s['skipped']}")
            continue
        print(
            f"{s['kind']} {s['sid']} of {s['identity']}: {s['codec']}, {s['frames']} frames,"
            f" starts at {s['start']:.3f} s, {s['dropped']} incomplete frames left out"
        )
    print(f"wrote {args.output}" + (f" (recording stopped: {stopped})" if stopped else ""))
    return 0, "e2ee frames decrypted" if cryptor is not None else "exported"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "recording", help="encrypted recordings", description="Encrypted recording tools."
    )
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    keygen = verbs.add_parser(
        "keygen",
        help="make the operator's X25519 key pair",
        description="Write a new private key (mode 0600, never overwritten) and its public key.",
    )
    keygen.add_argument("--private", default="recording-private.pem", help="private key file")
    keygen.add_argument("--public", default="recording-public.pem", help="public key file")
    keygen.set_defaults(handler=_keygen)
    verify = verbs.add_parser(
        "verify",
        help="check a recording's integrity (no key needed)",
        description="Exit 0 if every chunk is intact and in place and the final one is there;"
        " 1 naming the first broken chunk otherwise.",
    )
    verify.add_argument("file")
    verify.add_argument(
        "--partial", action="store_true", help="accept a file cut short after a whole chunk"
    )
    verify.set_defaults(handler=_verify)
    export = verbs.add_parser(
        "export",
        help="decrypt and remux to WebM/Matroska/Ogg (no re-encoding)",
        description="Decrypt with the operator's private key and remux with PyAV; .ogg keeps"
        " the audio only.",
    )
    export.add_argument("file")
    export.add_argument("--key", required=True, help="the private key PEM file")
    export.add_argument("-o", "--output", required=True, help="out.webm, out.mkv or out.ogg")
    export.add_argument("--e2ee-passphrase", help="the room's E2EE passphrase (E2EE rooms)")
    export.add_argument(
        "--partial", action="store_true", help="export the complete chunks of an unfinished file"
    )
    export.add_argument(
        "--audit",
        metavar="FILE",
        help="append a recording_export audit record to this chained log (default with"
        f" --config: [audit] path + {EXPORT_LOG_SUFFIX})",
    )
    export.add_argument("--config", metavar="FILE", help="the server's TOML config")
    export.add_argument(
        "--audit-key", metavar="FILE", help="audit key (default: [audit] key_file or data_dir's)"
    )
    export.add_argument("--operator", help="who exports, for the audit (default: the OS user)")
    export.set_defaults(handler=_export)
