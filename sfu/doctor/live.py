"""A running server, as its clients see it: `probe` fetches (the I/O), the rest judges (pure)."""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sfu.doctor.certs import certificate_findings, load_certificate
from sfu.doctor.finding import Finding, error, info, warning

SKEW_WARNING = 5.0
SKEW_ERROR = 60.0  # the most auth.leeway can absorb
CLOCK_FIX = "run NTP (chrony or systemd-timesyncd) on both hosts"


@dataclass(frozen=True)
class Answer:
    status: int
    date: str | None  # the Date header
    body: bytes
    local_time: float  # this host's Unix time halfway through the request


@dataclass
class Probe:
    url: str
    failure: str | None = None  # nothing answered at all
    healthz: Answer | None = None
    metrics: Answer | None = None
    cert_der: bytes | None = None  # the certificate the handshake presented
    trust_failure: str | None = None  # why a verifying client refuses it; None: trusted


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _get(connect: Callable[[], http.client.HTTPConnection], path: str) -> Answer:
    connection = connect()
    try:
        before = time.time()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        after = time.time()
        return Answer(response.status, response.getheader("Date"), body, (before + after) / 2)
    finally:
        connection.close()


def _handshake(host: str, port: int, context: ssl.SSLContext, timeout: float) -> bytes | None:
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return tls.getpeercert(binary_form=True)


def probe(url: str, cafile: str | None, timeout: float) -> Probe:
    """GET /healthz and /metrics (without a bearer) at `url`; over https, the certificate as
    presented and whether a client trusting the system's CAs (or `cafile`) accepts it."""
    parts = urlsplit(url)
    host, base = parts.hostname or "", parts.path.rstrip("/")
    result = Probe(url)
    try:
        if parts.scheme == "https":
            port = parts.port or 443
            # Unverified first: an expired or untrusted certificate is a finding, not a stop.
            lenient = ssl.create_default_context()
            lenient.check_hostname = False
            lenient.verify_mode = ssl.CERT_NONE
            result.cert_der = _handshake(host, port, lenient, timeout)
            try:
                _handshake(host, port, ssl.create_default_context(cafile=cafile), timeout)
            except ssl.SSLCertVerificationError as e:
                result.trust_failure = e.verify_message or str(e)

            def connect() -> http.client.HTTPConnection:
                return http.client.HTTPSConnection(host, port, timeout=timeout, context=lenient)
        else:
            port = parts.port or 80

            def connect() -> http.client.HTTPConnection:
                return http.client.HTTPConnection(host, port, timeout=timeout)

        result.healthz = _get(connect, base + "/healthz")
        result.metrics = _get(connect, base + "/metrics")
    except (OSError, http.client.HTTPException) as e:
        result.failure = str(e) or type(e).__name__
    return result


def scheme_findings(url: str) -> list[Finding]:
    parts = urlsplit(url)
    if parts.scheme == "https" or _loopback(parts.hostname or ""):
        return []
    return [
        error(
            url,
            "plain HTTP beyond loopback: tokens and SDP cross the network in clear",
            "serve TLS ([server] tls_cert/tls_key) or put a TLS proxy in front",
        )
    ]


def healthz_findings(url: str, answer: Answer) -> list[Finding]:
    status = ""
    try:
        status = str(json.loads(answer.body).get("status", ""))
    except (ValueError, AttributeError):
        pass
    if answer.status == 200 and status in ("ok", "full"):
        return [info(url + "/healthz", f"answers {status}")]
    return [
        error(
            url + "/healthz",
            f"answered {answer.status} {status or answer.body[:40]!r}",
            "check the server's log",
        )
    ]


def metrics_answer_findings(url: str, answer: Answer) -> list[Finding]:
    if answer.status in (401, 403):
        return []
    if answer.status == 200:
        return [
            error(
                url + "/metrics",
                "answers without a bearer token: room and traffic counts for anyone",
                "set [metrics] bearer_token",
            )
        ]
    return [info(url + "/metrics", f"answered {answer.status} without a bearer token")]


def skew_findings(url: str, answer: Answer, leeway: float | None) -> list[Finding]:
    """The server's Date against this host's clock: tokens' exp and nbf are judged by it."""
    if answer.date is None:
        return [warning(url, "no Date header: clock skew not checked", "compare clocks by hand")]
    try:
        server_time = email.utils.parsedate_to_datetime(answer.date).timestamp()
    except (TypeError, ValueError):
        return [warning(url, f"unreadable Date header {answer.date!r}", "compare clocks by hand")]
    # The header is truncated to the second: the server's clock read somewhere in the next one.
    skew = server_time + 0.5 - answer.local_time
    problem = f"server clock {skew:+.1f} s from this host's"
    if abs(skew) > SKEW_ERROR or (leeway is not None and abs(skew) > leeway):
        return [error(url, problem + ": valid tokens refused or expired ones accepted", CLOCK_FIX)]
    if abs(skew) > SKEW_WARNING:
        return [warning(url, problem, CLOCK_FIX)]
    return []


def live_certificate_findings(probe: Probe, now: float) -> list[Finding]:
    if probe.cert_der is None:
        return []
    findings = certificate_findings(probe.url, load_certificate(probe.cert_der), now)
    if probe.trust_failure is not None:
        findings.append(
            error(
                probe.url,
                f"clients refuse the certificate: {probe.trust_failure}",
                "serve a certificate from a CA clients trust, with the full chain"
                " (or give --cafile for a private CA)",
            )
        )
    return findings


def live_findings(probe: Probe, now: float, leeway: float | None) -> list[Finding]:
    """All judgements of one probe; `leeway` from the config when one was given."""
    findings = scheme_findings(probe.url)
    if probe.failure is not None:
        return [
            *findings,
            error(
                probe.url,
                f"no answer: {probe.failure}",
                "check the URL, the server and the firewall",
            ),
        ]
    findings += live_certificate_findings(probe, now)
    if probe.healthz is not None:
        findings += healthz_findings(probe.url, probe.healthz)
        findings += skew_findings(probe.url, probe.healthz, leeway)
    if probe.metrics is not None:
        findings += metrics_answer_findings(probe.url, probe.metrics)
    return findings
