"""The edge of `keyroom doctor`: reads the config and the files it names, stats directories,
binds addresses, verifies the audit chain, probes the URL; the judging is pure (the other
modules). Run it as the server's user, on the server's host, to see what the server sees."""

from __future__ import annotations

import datetime
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from cryptography import x509

from auth.audit import MIN_KEY_BYTES, audit_key_file, verify_file
from sfu.config import Config, ConfigError, finalize, parse_config_file, parse_keys
from sfu.doctor.certs import certificate_findings, load_certificate, private_key_findings
from sfu.doctor.coturn import coturn_findings
from sfu.doctor.finding import ERROR, Finding, error, info, report, warning
from sfu.doctor.live import live_findings, probe
from sfu.doctor.settings import config_findings, mode_findings, sfu_addresses

AS_SERVER_USER = "run the server (and doctor) as a user that can write it"


def load(path: str, env: Mapping[str, str]) -> tuple[Config, list[Finding]]:
    """The file's options as the server would read them (with KEYROOM_KEYS), every section that
    fails its checks reported (and left at its defaults) instead of stopping at the first.
    Raises ConfigError when the file cannot be read or is not TOML: nothing to check."""
    errors: list[ConfigError] = []
    config = parse_config_file(path, errors)
    if env.get("KEYROOM_KEYS"):
        try:
            keys = parse_keys(env["KEYROOM_KEYS"].split(","), "KEYROOM_KEYS")
            config = replace(config, auth=replace(config.auth, keys=keys))
        except ConfigError as e:
            errors.append(e)
    findings = [Finding(ERROR, "config", f"refused at start: {e}") for e in errors]
    if not errors:
        try:
            finalize(config)
        except ConfigError as e:
            findings.append(Finding(ERROR, "config", f"refused at start: {e}"))
    return config, findings


def bindable(ip: str) -> bool:
    """Whether this machine has `ip` (the kernel lets a socket bind it)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((ip, 0))
    except OSError:
        return False
    return True


def _read(what: str, path: str) -> tuple[bytes | None, list[Finding]]:
    try:
        return Path(path).read_bytes(), []
    except OSError as e:
        return None, [
            error(what, f"{path}: {e.strerror}", "give a file the server's user can read")
        ]


def tls_file_findings(cert_path: str | None, key_path: str | None, now: float) -> list[Finding]:
    """The certificate and key files: readable, the key private to its user, both sound."""
    cert: x509.Certificate | None = None
    key_pem: bytes | None = None
    findings: list[Finding] = []
    if key_path is not None:
        key_pem, findings = _read("server.tls_key", key_path)
        if key_pem is not None:
            findings += mode_findings(key_path, os.stat(key_path).st_mode, secret=True)
    if cert_path is not None:
        cert_pem, problems = _read("server.tls_cert", cert_path)
        findings += problems
        try:
            cert = load_certificate(cert_pem) if cert_pem is not None else None
        except ValueError:
            findings.append(error("server.tls_cert", "not a PEM certificate", "give the PEM chain"))
    if cert is not None:
        findings += certificate_findings("server.tls_cert", cert, now)
        if key_pem is not None:
            findings += private_key_findings("server.tls_key", key_pem, cert)
    return findings


def data_dir_findings(data_dir: str) -> list[Finding]:
    try:
        mode = os.stat(data_dir).st_mode
    except FileNotFoundError:
        return [info("server.data_dir", f"{data_dir} does not exist yet: created on first start")]
    findings = mode_findings(data_dir, mode, secret=False)
    if not os.access(data_dir, os.W_OK):
        findings.append(error("server.data_dir", f"{data_dir} is not writable", AS_SERVER_USER))
    return findings


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _audit_key(key_file: str, log_exists: bool) -> tuple[bytes | None, list[Finding]]:
    if not os.path.exists(key_file):
        if log_exists:
            problem = (
                f"{key_file} is missing: the log cannot be verified, the server will refuse it"
            )
            return None, [
                error("audit.key_file", problem, "restore the key the log was written with")
            ]
        return None, [info("audit.key_file", f"{key_file} is created on first start")]
    findings = mode_findings(key_file, os.stat(key_file).st_mode, secret=True)
    key, problems = _read("audit.key_file", key_file)
    if key is not None and len(key.strip()) < MIN_KEY_BYTES:
        problems.append(
            error(
                "audit.key_file",
                f"shorter than {MIN_KEY_BYTES} bytes: the server refuses it",
                "restore the real key (a new key starts a new log)",
            )
        )
        key = None
    return (key.strip() if key else None), findings + problems


def audit_findings(config: Config) -> list[Finding]:
    """The log's directory and file are writable, and its chain verifies with its key."""
    audit = config.audit
    if audit.path is None:
        return [
            warning(
                "audit.path",
                "not set: audit records go to the log stream only, nothing tamper-evident",
                "set [audit] path",
            )
        ]
    log = Path(audit.path)
    directory = _nearest_existing(log.parent)
    findings = mode_findings(str(directory), directory.stat().st_mode, secret=False)
    target = log if log.exists() else directory
    if not os.access(target, os.W_OK):
        findings.append(error("audit.path", f"{target} is not writable", AS_SERVER_USER))
    key_file = audit_key_file(audit.key_file, config.server.data_dir)
    key, key_findings = _audit_key(key_file, log.exists())
    findings += key_findings
    if key is not None and log.exists():
        findings += chain_findings(audit.path, key)
    return findings


def chain_findings(path: str, key: bytes) -> list[Finding]:
    try:
        result = verify_file(path, key)
    except OSError as e:
        return [error("audit.path", f"{path}: {e.strerror}", AS_SERVER_USER)]
    if not result.intact:
        return [
            error(
                "audit.path",
                f"{path}: chain broken: {result.problems[0]} ({len(result.problems)} problem(s))",
                "keep the file as evidence, find who wrote it, start a new log",
            )
        ]
    sealed = result.last_sealed
    if sealed is None:
        if result.records == 0:
            return [info("audit.path", f"{path}: empty, chain intact")]
        return [
            warning(
                "audit.path",
                f"{path}: {result.records} records, no sealed checkpoint: truncation undetectable",
                "keep [audit] checkpoint_interval short and the checkpoint file beside the log",
            )
        ]
    at = datetime.datetime.fromtimestamp(sealed.ts, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        info(
            "audit.path",
            f"{path}: chain intact, {result.records} records; last sealed position: record"
            f" {sealed.records} at {at}, {max(result.records - sealed.records, 0)} after it",
        )
    ]


def config_file_findings(path: str, config: Config, env: Mapping[str, str]) -> list[Finding]:
    # Keys from KEYROOM_KEYS are not in the file.
    keys_in_file = bool(config.auth.keys) and not env.get("KEYROOM_KEYS")
    holds_secrets = keys_in_file or config.turn.secret or config.metrics.bearer_token
    return mode_findings(path, os.stat(path).st_mode, secret=bool(holds_secrets))


def coturn_file_findings(path: str, config: Config) -> list[Finding]:
    text, findings = _read("--coturn", path)
    if text is None:
        return findings
    dev = config.server.dev
    lines = text.decode(errors="replace").splitlines()
    sfu = sfu_addresses(config, dev)
    return coturn_findings(path, lines, sfu, dev=dev, secret=config.turn.secret)


def check_config(
    path: str, coturn: str | None, env: Mapping[str, str]
) -> tuple[Config, list[Finding]]:
    config, findings = load(path, env)
    server = config.server
    bound = {ip: bindable(ip) for ip in config.rtc.ips}
    findings += config_findings(config, bound)
    findings += config_file_findings(path, config, env)
    findings += tls_file_findings(server.tls_cert, server.tls_key, time.time())
    findings += data_dir_findings(server.data_dir)
    findings += audit_findings(config)
    if coturn is not None:
        findings += coturn_file_findings(coturn, config)
    return config, findings


def doctor(
    config_path: str | None,
    url: str | None,
    *,
    coturn: str | None = None,
    cafile: str | None = None,
    timeout: float = 5.0,
    env: Mapping[str, str] = os.environ,
) -> tuple[list[str], int]:
    """The lines to print and the exit status (0: no error; 1: errors). Raises ConfigError when
    the config file cannot be read."""
    findings: list[Finding] = []
    leeway = None
    if config_path is not None:
        config, findings = check_config(config_path, coturn, env)
        leeway = config.auth.leeway
    if url is not None:
        url = url.rstrip("/")
        findings += live_findings(probe(url, cafile, timeout), time.time(), leeway)
    return report(findings)
