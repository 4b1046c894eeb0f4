"""The operator's X25519 key pair and the per-recording data key wrapped for its public key.

A fresh ephemeral X25519 key agrees a secret with the operator's public key; HKDF-SHA256 (bound
to both public keys) turns it into a key-encryption key that seals the 32-byte data key with
AES-256-GCM. The server keeps nothing that unwraps it: only the private key's holder can.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

WRAP_ALG = "X25519-HKDF-SHA256-A256GCM"
WRAP_INFO = b"keyroom recording key wrap v1"
DATA_KEY_BYTES = 32


class RecordingKeyError(Exception):
    """A key that cannot be read or does not open this recording."""


def generate() -> tuple[bytes, bytes]:
    """A new key pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    private = X25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private_pem, public_pem(private.public_key())


def public_pem(key: X25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(key: X25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def _pem_text(value: str) -> bytes:
    """PEM given inline or as the path of a file holding it."""
    if "-----BEGIN" in value:
        return value.encode()
    try:
        return Path(value).read_bytes()
    except OSError as e:
        raise RecordingKeyError(f"{value}: {e.strerror}") from None


def load_public(value: str) -> X25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_pem_text(value))
    except ValueError:
        raise RecordingKeyError("not a PEM public key") from None
    if not isinstance(key, X25519PublicKey):
        raise RecordingKeyError("not an X25519 public key (make one: keyroom recording keygen)")
    return key


def load_private(value: str) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_pem_text(value), password=None)
    except (ValueError, TypeError):
        raise RecordingKeyError("not an unencrypted PEM private key") from None
    if not isinstance(key, X25519PrivateKey):
        raise RecordingKeyError("not an X25519 private key (make one: keyroom recording keygen)")
    return key


def _kek(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    hkdf = HKDF(SHA256(), 32, salt=ephemeral + recipient, info=WRAP_INFO)
    return hkdf.derive(shared)


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def wrap(data_key: bytes, recipient: X25519PublicKey) -> dict[str, Any]:
    """The header's `key` object: the data key sealed for `recipient`."""
    ephemeral = X25519PrivateKey.generate()
    eph_raw, rcpt_raw = _raw(ephemeral.public_key()), _raw(recipient)
    kek = _kek(ephemeral.exchange(recipient), eph_raw, rcpt_raw)
    # A single-use key: a fixed nonce is safe.
    sealed = AESGCM(kek).encrypt(bytes(12), data_key, WRAP_ALG.encode())
    return {
        "alg": WRAP_ALG,
        "recipient": fingerprint(recipient),
        "ephemeral": base64.b64encode(eph_raw).decode(),
        "wrapped": base64.b64encode(sealed).decode(),
    }


def unwrap(key_info: Any, private: X25519PrivateKey) -> bytes:
    if not isinstance(key_info, dict) or key_info.get("alg") != WRAP_ALG:
        raise RecordingKeyError("the header names no key wrapping this version knows")
    mine = fingerprint(private.public_key())
    if key_info.get("recipient") != mine:
        raise RecordingKeyError(
            f"wrong private key: the recording is for key {key_info.get('recipient')},"
            f" this one is {mine}"
        )
    try:
        eph_raw = base64.b64decode(key_info["ephemeral"], validate=True)
        sealed = base64.b64decode(key_info["wrapped"], validate=True)
        ephemeral = X25519PublicKey.from_public_bytes(eph_raw)
        kek = _kek(private.exchange(ephemeral), eph_raw, _raw(private.public_key()))
        data_key = AESGCM(kek).decrypt(bytes(12), sealed, WRAP_ALG.encode())
    except (KeyError, ValueError, TypeError, InvalidTag):
        raise RecordingKeyError("wrong private key: the data key does not unwrap") from None
    if len(data_key) != DATA_KEY_BYTES:
        raise RecordingKeyError("the wrapped data key has the wrong size")
    return data_key


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_BYTES)
