"""Certificate and private-key checks, pure over their bytes and `now` (Unix seconds)."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from sfu.doctor.finding import Finding, error, info, warning

EXPIRY_WARNING_DAYS = 30
MIN_RSA_BITS = 2048
# The curves browsers accept in a server certificate.
GOOD_CURVES = ("secp256r1", "secp384r1", "secp521r1")
WEAK_HASHES = ("md5", "sha1")
RENEW = "renew the certificate (certbot renew, or your CA) and reload the server (SIGHUP)"


def load_certificate(data: bytes) -> x509.Certificate:
    """The first certificate of a PEM file (the server's own), or a DER certificate."""
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _day(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def certificate_findings(what: str, cert: x509.Certificate, now: float) -> list[Finding]:
    """Validity (expired, expiring within 30 days, not yet valid), key and signature strength."""
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    findings: list[Finding] = []
    if end <= moment:
        findings.append(error(what, f"certificate expired on {_day(end)}", RENEW))
    elif end - moment < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        days = (end - moment).days
        findings.append(warning(what, f"certificate expires in {days} day(s), {_day(end)}", RENEW))
    else:
        findings.append(info(what, f"certificate valid until {_day(end)}"))
    if start > moment:
        findings.append(
            error(what, f"certificate not valid before {_day(start)}", "check this host's clock")
        )
    findings += public_key_findings(what, cert.public_key())
    digest = cert.signature_hash_algorithm
    if digest is not None and digest.name in WEAK_HASHES:
        findings.append(
            error(what, f"certificate signed with {digest.name}", "reissue it signed with SHA-256")
        )
    return findings


def public_key_findings(what: str, key: CertificatePublicKeyTypes) -> list[Finding]:
    reissue = f"reissue with an EC P-256 key or RSA of at least {MIN_RSA_BITS} bits"
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return [error(what, f"RSA key of {key.key_size} bits", reissue)]
    if isinstance(key, dsa.DSAPublicKey):
        return [error(what, "DSA key: no browser accepts it", reissue)]
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in GOOD_CURVES:
        return [warning(what, f"EC key on curve {key.curve.name}", reissue)]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return [error(what, "EdDSA certificate: browsers do not accept it", reissue)]
    return []


def private_key_findings(what: str, key_pem: bytes, cert: x509.Certificate) -> list[Finding]:
    """The key parses without a passphrase (the server has none to give) and matches `cert`."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        # Never quote the parser's message: it may echo key material.
        return [
            error(
                what,
                "not an unencrypted PEM private key",
                "give the PEM key of the certificate, without a passphrase",
            )
        ]
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
        return [
            error(
                what,
                "the key does not belong to server.tls_cert",
                "give the key the certificate was issued for",
            )
        ]
    return []
