"""`keyroom doctor`'s checks, each a pure function over the config and data read at the edge:
no sockets here (tests/test_doctor_cli.py runs the command against a real TLS server)."""

from __future__ import annotations

import datetime
import ipaddress
import stat
import time
from dataclasses import replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from auth.turn import turn_config_lines
from sfu.config import (
    AuthConfig,
    Config,
    MetricsConfig,
    NodeConfig,
    RtcConfig,
    ServerConfig,
    TurnConfig,
)
from sfu.doctor.certs import certificate_findings, load_certificate, private_key_findings
from sfu.doctor.coturn import coturn_findings, parse_lines
from sfu.doctor.finding import ERROR, INFO, WARNING, Finding, error, info, report, warning
from sfu.doctor.live import (
    Answer,
    healthz_findings,
    metrics_answer_findings,
    scheme_findings,
    skew_findings,
)
from sfu.doctor.run import chain_findings, load
from sfu.doctor.settings import (
    address_findings,
    key_findings,
    limits_findings,
    metrics_findings,
    mode_findings,
    origin_findings,
    proxy_findings,
    token_findings,
    turn_findings,
)
from tests.test_audit import KEY, write_chain

DAY = 86400.0
TURN_SECRET = "turn-secret-long-enough-0123456789abcdef"
NOW = time.time()


def make_certificate(
    key: CertificateIssuerPrivateKeyTypes | None = None,
    *,
    valid_from: float = NOW - DAY,
    valid_until: float = NOW + 90 * DAY,
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """A self-signed certificate for 127.0.0.1 valid between two Unix times."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyroom-doctor")])
    utc = datetime.UTC
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(valid_from, utc))
        .not_valid_after(datetime.datetime.fromtimestamp(valid_until, utc))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


# Made with `openssl req -x509 -sha1` (cryptography no longer signs with SHA-1; old CAs did).
SHA1_CERTIFICATE = b"""\
-----BEGIN CERTIFICATE-----
MIIBdDCCARqgAwIBAgIUL41pmX8NnvEtxOfsulJwzDyb4gAwCQYHKoZIzj0EATAP
MQ0wCwYDVQQDDARzaGExMCAXDTI2MTIwNjAxMzgyOVoYDzIxMjYxMTEyMDEzODI5
WjAPMQ0wCwYDVQQDDARzaGExMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAED1Lx
PMldpKuGjnOLduUsp8o4n9/eVx5gYOeIgqoqpHRV9XbAd3zzwpKVRvpGBPgQzG1p
119EgbWCPeYwPJsrxqNTMFEwHQYDVR0OBBYEFFIJBKOmD77naksTX8IODZK9a0ku
MB8GA1UdIwQYMBaAFFIJBKOmD77naksTX8IODZK9a0kuMA8GA1UdEwEB/wQFMAMB
Af8wCQYHKoZIzj0EAQNJADBGAiEAgHSSrdeM5gOWjs/QBxI4oMsm3y2YcfYj72aW
dbuA7AQCIQCsxIIjgsIZayoB280xXtzOK/CnbX+qE+Aes9UR8utviA==
-----END CERTIFICATE-----
"""


def key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def severities(findings: list[Finding]) -> list[str]:
    return [f.severity for f in findings]


def problems(findings: list[Finding], severity: str = ERROR) -> str:
    return "\n".join(f.line() for f in findings if f.severity == severity)


# -- findings and the exit status ------------------------------------------------------------------


def test_errors_fail_warnings_alone_do_not_and_errors_come_first() -> None:
    lines, status = report([info("a", "fact"), warning("b", "risky", "fix b")])
    assert status == 0
    assert lines[0].startswith("warning b: risky. Fix: fix b")
    assert lines[-1] == "keyroom doctor: 0 error(s), 1 warning(s)"
    lines, status = report([info("a", "fact"), error("c", "broken", "fix c")])
    assert status == 1
    assert lines[0] == "error   c: broken. Fix: fix c"


# -- certificates ----------------------------------------------------------------------------------


def test_certificate_expired_expiring_and_not_yet_valid() -> None:
    expired, _ = make_certificate(valid_from=NOW - 90 * DAY, valid_until=NOW - DAY)
    assert "certificate expired on" in problems(certificate_findings("c", expired, NOW))
    soon, _ = make_certificate(valid_until=NOW + 10 * DAY)
    findings = certificate_findings("c", soon, NOW)
    assert severities(findings) == [WARNING]
    assert (
        "expires in 9 day(s)" in findings[0].problem
        or "expires in 10 day(s)" in findings[0].problem
    )
    future, _ = make_certificate(valid_from=NOW + DAY)
    assert "not valid before" in problems(certificate_findings("c", future, NOW))


def test_a_sound_certificate_is_a_fact_not_a_finding() -> None:
    cert, _ = make_certificate()
    assert severities(certificate_findings("c", cert, NOW)) == [INFO]


def test_weak_certificate_keys_and_signatures() -> None:
    small, _ = make_certificate(rsa.generate_private_key(65537, 1024))
    assert "RSA key of 1024 bits" in problems(certificate_findings("c", small, NOW))
    curve, _ = make_certificate(ec.generate_private_key(ec.SECP256K1()))
    assert "curve secp256k1" in problems(certificate_findings("c", curve, NOW), WARNING)
    sha1 = load_certificate(SHA1_CERTIFICATE)
    assert "signed with sha1" in problems(certificate_findings("c", sha1, NOW))


def test_private_key_must_match_the_certificate_and_be_unencrypted() -> None:
    cert, key = make_certificate()
    assert private_key_findings("k", key_pem(key), cert) == []
    other = ec.generate_private_key(ec.SECP256R1())
    assert "does not belong" in problems(private_key_findings("k", key_pem(other), cert))
    locked = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    assert "not an unencrypted PEM" in problems(private_key_findings("k", locked, cert))


# -- coturn ----------------------------------------------------------------------------------------


def test_keyroom_turn_config_lines_are_not_an_open_relay() -> None:
    lines = turn_config_lines(TURN_SECRET, "keyroom", ["203.0.113.5"], dev=False)
    assert coturn_findings("t", lines, ["203.0.113.5"], dev=False, secret=TURN_SECRET) == []
    dev = turn_config_lines(TURN_SECRET, "keyroom", ["127.0.0.1"], dev=True)
    assert coturn_findings("t", dev, ["127.0.0.1"], dev=True, secret=TURN_SECRET) == []


OPEN_RELAY = """
# a turnserver.conf copied from a tutorial
listening-port=3478
--use-auth-secret
static-auth-secret = "some-other-secret-of-enough-length-0123"
allowed-peer-ip=10.0.0.0-10.255.255.255
allow-loopback-peers
"""


def test_an_open_relay_config_is_found_line_by_line() -> None:
    findings = coturn_findings(
        "turnserver.conf", OPEN_RELAY.splitlines(), ["10.0.0.5"], dev=False, secret=TURN_SECRET
    )
    text = problems(findings)
    assert "no `denied-peer-ip=0.0.0.0-255.255.255.255`" in text
    assert "allowed-peer-ip=10.0.0.0-10.255.255.255 reaches more than the SFU" in text
    assert "`allow-loopback-peers`" in text
    assert "no `no-multicast-peers`" in text
    assert "static-auth-secret differs from turn.secret" in text
    assert TURN_SECRET not in text and "some-other-secret" not in text
    assert "no `no-cli`" in problems(findings, WARNING)


def test_a_relay_without_authentication_or_a_way_to_the_sfu() -> None:
    lines = ["no-auth", "denied-peer-ip=0.0.0.0-255.255.255.255", "no-multicast-peers"]
    text = problems(coturn_findings("c", lines, ["203.0.113.5"], dev=False, secret=None))
    assert "no authentication" in text
    assert "no allowed-peer-ip: the relay cannot reach the SFU" in text
    assert "no `no-loopback-peers`" in text


def test_coturn_option_forms() -> None:
    assert parse_lines(["# c", "", "--fingerprint", "realm=x", "user a:b", " no-cli "]) == [
        ("fingerprint", ""),
        ("realm", "x"),
        ("user", "a:b"),
        ("no-cli", ""),
    ]


def test_turn_section_secret_length_and_its_generated_lines() -> None:
    config = Config(
        rtc=RtcConfig(ips=("10.0.0.5",), public_ips=("203.0.113.5",)),
        turn=TurnConfig(urls=("turn:turn.example.com:3478",), secret="sixteen-bytes-ok"),
    )
    findings = turn_findings(config)
    assert severities(findings) == [WARNING]
    assert findings[0].what == "turn.secret"
    assert turn_findings(replace(config, turn=replace(config.turn, secret=TURN_SECRET))) == []


# -- the options -----------------------------------------------------------------------------------


def test_advertised_addresses() -> None:
    bound = {"127.0.0.1": True, "10.0.0.5": True, "192.0.2.9": False}
    loopback = address_findings(RtcConfig(ips=("127.0.0.1",)), False, bound)
    assert "loopback address no peer can reach" in problems(loopback)
    assert address_findings(RtcConfig(ips=("127.0.0.1",)), True, bound) == []
    private = address_findings(RtcConfig(ips=("10.0.0.5",)), False, bound)
    assert severities(private) == [WARNING]
    natted = RtcConfig(ips=("10.0.0.5",), public_ips=("93.184.216.34",))
    assert address_findings(natted, False, bound) == []
    absent = address_findings(RtcConfig(ips=("192.0.2.9",)), False, bound)
    assert "192.0.2.9 is not an address of this machine" in problems(absent)


def test_signing_keys() -> None:
    good = "Zx8-pQ2vL0aR7kT4mN1bW6yH3jD9sF5c"
    assert key_findings({"k": good}, {}) == []
    assert "fewer than 10 distinct" in problems(key_findings({"k": "ab" * 16}, {}))
    garbage = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    assert "not a PEM public key" in problems(key_findings({}, {"p": garbage}))
    rsa_pem = (
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert "only EC P-256 and Ed25519" in problems(key_findings({}, {"p": rsa_pem}))
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert key_findings({}, {"p": ec_pem}) == []
    assert "defined twice" in problems(key_findings({"k": good}, {"k": ec_pem}))


def test_origins_proxies_tokens_metrics_and_node_limits() -> None:
    wildcard = ServerConfig(allowed_origins=("https://*.example.com", "http://app.example.com"))
    findings = origin_findings(wildcard)
    assert "a wildcard is no pattern" in problems(findings)
    assert "plain-HTTP page" in problems(findings, WARNING)
    everyone = ServerConfig(trusted_proxies=("0.0.0.0/0", "10.0.0.1"))
    assert len(proxy_findings(everyone)) == 1
    assert "48 h" in problems(token_findings(48 * 3600.0, 60.0), WARNING)
    assert token_findings(6 * 3600.0, 60.0) == []
    assert "/metrics is open" in problems(metrics_findings(Config()))
    assert metrics_findings(Config(server=ServerConfig(dev=True))) == []
    protected = Config(metrics=MetricsConfig(bearer_token="b" * 8 + "e" * 8 + "arer"))
    assert metrics_findings(protected) == []
    assert severities(limits_findings(Config())) == [WARNING]
    assert limits_findings(Config(node=NodeConfig(max_participants=200))) == []


def test_modes() -> None:
    assert "writable by every user" in problems(
        mode_findings("d", stat.S_IFDIR | 0o777, secret=False)
    )
    assert "readable by every user" in problems(
        mode_findings("k", stat.S_IFREG | 0o644, secret=True)
    )
    assert mode_findings("k", stat.S_IFREG | 0o600, secret=True) == []
    assert mode_findings("f", stat.S_IFREG | 0o644, secret=False) == []


def test_every_failing_section_is_reported_and_the_rest_still_checked(tmp_path: Path) -> None:
    path = tmp_path / "keyroom.toml"
    path.write_text('[auth]\nkeys = { k = "short" }\n[server]\nport = "x"\n[node]\nmax_rooms = 5\n')
    config, findings = load(str(path), {})
    text = problems(findings)
    assert "auth.keys.k: HS256 secret is shorter than 32 bytes" in text
    assert "server.port" in text
    assert "short" not in text.replace("shorter", "")  # the secret itself is never shown
    assert config.node.max_rooms == 5
    # A file the server would refuse as a whole (start-up rules) is reported too.
    path.write_text('[server]\nhost = "0.0.0.0"\n')
    _, findings = load(str(path), {"KEYROOM_KEYS": "k=" + "x1" * 20})
    assert "rtc.ips: no media address" in problems(findings)


# -- the audit chain -------------------------------------------------------------------------------


def test_audit_chain_reports_the_last_sealed_position_and_a_break(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    write_chain(log, 3)
    (finding,) = chain_findings(str(log), KEY)
    assert finding.severity == INFO
    assert "chain intact, 3 records; last sealed position: record 3" in finding.problem
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n")  # the tail cut off
    assert "chain broken" in problems(chain_findings(str(log), KEY))


# -- a running server's answers --------------------------------------------------------------------


def http_date(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def answer(status: int = 200, body: bytes = b'{"status": "ok"}', skew: float = 0.0) -> Answer:
    return Answer(status, http_date(NOW + skew), body, NOW)


def test_clock_skew() -> None:
    assert skew_findings("u", answer(), None) == []
    assert severities(skew_findings("u", answer(skew=10), None)) == [WARNING]
    assert severities(skew_findings("u", answer(skew=-120), None)) == [ERROR]
    # Past the configured leeway, tokens are judged wrongly even under a minute of skew.
    assert severities(skew_findings("u", answer(skew=30), 10.0)) == [ERROR]
    assert severities(skew_findings("u", replace(answer(), date=None), None)) == [WARNING]


def test_scheme_health_and_metrics_answers() -> None:
    assert "plain HTTP beyond loopback" in problems(scheme_findings("http://sfu.example.com"))
    assert scheme_findings("http://127.0.0.1:7880") == []
    assert scheme_findings("https://sfu.example.com") == []
    assert severities(healthz_findings("u", answer())) == [INFO]
    assert severities(healthz_findings("u", answer(503, b'{"status": "draining"}'))) == [ERROR]
    assert "without a bearer token" in problems(metrics_answer_findings("u", answer(200, b"")))
    assert metrics_answer_findings("u", answer(401, b"")) == []


def test_findings_never_show_a_secret() -> None:
    config = Config(
        auth=AuthConfig(keys={"k": "ab" * 16}),
        turn=TurnConfig(urls=("turn:t:3478",), secret="sixteen-bytes-ok"),
    )
    text = "\n".join(
        f.line() for f in [*key_findings(config.auth.keys, {}), *turn_findings(config)]
    )
    assert "ab" * 16 not in text and "sixteen-bytes-ok" not in text
