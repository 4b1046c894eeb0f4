"""Proof of possession for tokens bound to a client key (`cnf.jkt`, RFC 7800 / RFC 9449 style).

A bound token names the SHA-256 JWK thumbprint (RFC 7638) of its client's public key. Joining
with it takes a proof: a compact JWS whose header carries the public key (`jwk`) and whose
payload carries a server nonce, the hash of the credential it accompanies (`ath`) and the client
kind. The proof's bytes are fixed in docs/protocol.md; signatures are checked here with the
`cryptography` package: ES256 (P-256, raw r||s as JWS and WebCrypto produce) or EdDSA (Ed25519).

Pure: the caller spends the nonce (auth/nonces.py) and compares the key with the token's.
Reasons are fixed strings (audit log only); nothing here echoes the proof or the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from auth.keys import EDDSA, ES256, PrivateKey, private_key_algorithm

PROOF_TYPE = "keyroom-pop+jwt"
MAX_PROOF_CHARS = 2048
JKT_CHARS = 43  # base64url of 32 bytes, unpadded
CLIENT_KIND = re.compile(r"[a-z0-9_-]{1,32}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_P256_COORD = 32

PublicKey = ec.EllipticCurvePublicKey | Ed25519PublicKey


class ProofError(Exception):
    """A refused proof; `reason` is a fixed string for the audit log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Proof:
    """A proof whose signature, key and credential hash checked out; its nonce not yet spent."""

    jkt: str
    nonce: str
    client: str


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ProofError("malformed")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ProofError("malformed") from None


def is_thumbprint(value: object) -> bool:
    """Whether `value` has the shape of a SHA-256 JWK thumbprint (`cnf.jkt`)."""
    return isinstance(value, str) and len(value) == JKT_CHARS and bool(_B64URL.fullmatch(value))


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The public JWK (RFC 7517) of a P-256 or Ed25519 public key: the members RFC 7638 hashes."""
    if isinstance(key, Ed25519PublicKey):
        raw = key.public_bytes_raw()
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url(raw)}
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("EC keys must use curve P-256")
    numbers = key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url(numbers.x.to_bytes(_P256_COORD, "big")),
        "y": b64url(numbers.y.to_bytes(_P256_COORD, "big")),
    }


def _required(jwk: Mapping[str, Any]) -> dict[str, str]:
    """The required members of a public JWK, checked (RFC 7638 section 3.2)."""
    kty = jwk.get("kty")
    names = ("crv", "kty", "x", "y") if kty == "EC" else ("crv", "kty", "x")
    if kty not in ("EC", "OKP"):
        raise ProofError("unsupported_key")
    members = {name: jwk.get(name) for name in names}
    if not all(isinstance(v, str) for v in members.values()):
        raise ProofError("malformed_key")
    if (kty, members["crv"]) not in (("EC", "P-256"), ("OKP", "Ed25519")):
        raise ProofError("unsupported_key")
    return members  # type: ignore[return-value]


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint: the required members, sorted, no whitespace, base64url."""
    members = _required(jwk)
    canonical = orjson.dumps(members, option=orjson.OPT_SORT_KEYS)
    return b64url(hashlib.sha256(canonical).digest())


def thumbprint_of_pem(pem: bytes) -> str:
    """The `cnf.jkt` for a PEM public key (`keyroom token --bind`); raises ValueError."""
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ValueError("not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | Ed25519PublicKey):
        raise ValueError("only EC P-256 and Ed25519 public keys can bind a token")
    return thumbprint(public_jwk(key))


def thumbprint_of_file(path: str) -> str:
    """`thumbprint_of_pem` of a file; errors name the file, never its contents."""
    try:
        with open(path, "rb") as file:
            return thumbprint_of_pem(file.read())
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def credential_hash(credential: str) -> str:
    """`ath`: base64url SHA-256 of the credential the proof accompanies (token or resume token)."""
    return b64url(hashlib.sha256(credential.encode()).digest())


def _key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    members = _required(jwk)
    x = unb64url(members["x"])
    try:
        if members["kty"] == "OKP":
            return Ed25519PublicKey.from_public_bytes(x)
        y = unb64url(members["y"])
        if len(x) != _P256_COORD or len(y) != _P256_COORD:
            raise ProofError("malformed_key")
        numbers = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        )
        return numbers.public_key()
    except ValueError:  # not a point on the curve, wrong length
        raise ProofError("malformed_key") from None


def _json_part(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(unb64url(text))
    except orjson.JSONDecodeError:
        raise ProofError("malformed") from None
    if not isinstance(value, dict):
        raise ProofError("malformed")
    return value


def _check_signature(key: PublicKey, alg: str, signed: bytes, signature: bytes) -> None:
    try:
        if isinstance(key, Ed25519PublicKey):
            if alg != EDDSA:
                raise ProofError("alg_mismatch")
            key.verify(signature, signed)
            return
        if alg != ES256:
            raise ProofError("alg_mismatch")
        if len(signature) != 2 * _P256_COORD:
            raise ProofError("signature")
        r = int.from_bytes(signature[:_P256_COORD], "big")
        s = int.from_bytes(signature[_P256_COORD:], "big")
        key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ProofError("signature") from None


def verify_proof(proof: object, *, expected_jkt: str, credential: str) -> Proof:
    """The proof's nonce and client kind, once it is signed by the key `expected_jkt` names and
    made for `credential`; raises ProofError. The nonce is the caller's to spend."""
    if not isinstance(proof, str) or not proof.isascii() or len(proof) > MAX_PROOF_CHARS:
        raise ProofError("malformed")
    parts = proof.split(".")
    if len(parts) != 3:
        raise ProofError("malformed")
    header, payload = _json_part(parts[0]), _json_part(parts[1])
    if header.get("typ") != PROOF_TYPE:
        raise ProofError("wrong_type")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise ProofError("malformed_key")
    if thumbprint(jwk) != expected_jkt:
        raise ProofError("wrong_key")
    alg = header.get("alg")
    _check_signature(
        _key_from_jwk(jwk), str(alg), f"{parts[0]}.{parts[1]}".encode(), unb64url(parts[2])
    )
    nonce, client, ath = payload.get("nonce"), payload.get("client"), payload.get("ath")
    if not isinstance(nonce, str) or not nonce:
        raise ProofError("no_nonce")
    if ath != credential_hash(credential):
        raise ProofError("wrong_credential")
    if not isinstance(client, str) or not CLIENT_KIND.fullmatch(client):
        raise ProofError("bad_client_kind")
    return Proof(jkt=expected_jkt, nonce=nonce, client=client)


def make_proof(key: PrivateKey, *, nonce: str, credential: str, client: str) -> str:
    """A proof for `credential` with `nonce`, signed by `key` (the Python client's side)."""
    algorithm = private_key_algorithm(key)
    header = {"typ": PROOF_TYPE, "alg": algorithm, "jwk": public_jwk(key.public_key())}
    payload = {"nonce": nonce, "ath": credential_hash(credential), "client": client}
    signed = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(payload))}"
    if isinstance(key, Ed25519PrivateKey):
        signature = key.sign(signed.encode())
    else:
        r, s = decode_dss_signature(key.sign(signed.encode(), ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(_P256_COORD, "big") + s.to_bytes(_P256_COORD, "big")
    return f"{signed}.{b64url(signature)}"
