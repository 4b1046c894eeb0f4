"""The server's key table: key id -> verification key, each with exactly one algorithm.

Fixing the algorithm per key is what stops algorithm confusion (an HS256 token "signed" with an
EC public key as the HMAC secret): the verifier only ever asks pyjwt for the key's own algorithm.
Secrets never appear in a repr, str or exception message of anything here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ec import (
    SECP256R1,
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

HS256 = "HS256"
ES256 = "ES256"
EDDSA = "EdDSA"
ALGORITHMS = (HS256, ES256, EDDSA)

MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash output
MAX_KEY_ID_CHARS = 128

KeyMaterial = bytes | EllipticCurvePublicKey | Ed25519PublicKey
PrivateKey = EllipticCurvePrivateKey | Ed25519PrivateKey


@dataclass(frozen=True)
class Key:
    key_id: str
    algorithm: str
    material: KeyMaterial = field(repr=False)


def _check_key_id(key_id: object) -> str:
    if not isinstance(key_id, str) or not 0 < len(key_id) <= MAX_KEY_ID_CHARS:
        raise ValueError(f"key ids must be strings of 1..{MAX_KEY_ID_CHARS} characters")
    if not key_id.isprintable():
        raise ValueError("key ids must be printable")
    return key_id


class KeyTable:
    """Key id -> Key; lookups are by the token's `kid` (or `iss`). Never changed once built:
    a reload (SIGHUP) builds a new table and swaps it in whole."""

    def __init__(self) -> None:
        self._keys: dict[str, Key] = {}

    @classmethod
    def from_secrets(cls, secrets: Mapping[str, str], *, allow_short: bool = False) -> KeyTable:
        """HS256 keys from `{key id: secret}`. See `add_secret` for `allow_short`."""
        table = cls()
        for key_id, secret in secrets.items():
            table.add_secret(key_id, secret, allow_short=allow_short)
        return table

    @classmethod
    def from_config(
        cls, secrets: Mapping[str, str], public_keys: Mapping[str, str | bytes]
    ) -> KeyTable:
        """HS256 secrets and PEM public keys by key id (the `[auth]` section); one table."""
        table = cls.from_secrets(secrets)
        for key_id, pem in public_keys.items():
            table.add_public_key(key_id, pem)
        return table

    def add_secret(self, key_id: str, secret: str | bytes, *, allow_short: bool = False) -> None:
        """Add an HS256 shared secret. Secrets under 32 bytes are refused unless `allow_short`:
        only for development and for compatibility tests with short, well-known secrets (such as
        LiveKit's dev `secret`); a short HMAC secret can be brute-forced from a single token."""
        _check_key_id(key_id)
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes) or not secret:
            raise ValueError(f"key {key_id!r}: the secret must be a non-empty string")
        if len(secret) < MIN_SECRET_BYTES and not allow_short:
            raise ValueError(f"key {key_id!r}: the secret is shorter than {MIN_SECRET_BYTES} bytes")
        self._add(Key(key_id, HS256, secret))

    def add_public_key(self, key_id: str, pem: str | bytes) -> None:
        """Add a PEM public key: ES256 for an EC P-256 key, EdDSA for an Ed25519 key."""
        _check_key_id(key_id)
        if isinstance(pem, str):
            pem = pem.encode()
        try:
            public_key = load_pem_public_key(pem)
        except (ValueError, TypeError):
            # `from None`: the parser's message or chained traceback could quote the input.
            raise ValueError(f"key {key_id!r}: not a PEM public key") from None
        if isinstance(public_key, EllipticCurvePublicKey):
            if not isinstance(public_key.curve, SECP256R1):
                raise ValueError(f"key {key_id!r}: EC keys must use curve P-256 (ES256)")
            self._add(Key(key_id, ES256, public_key))
        elif isinstance(public_key, Ed25519PublicKey):
            self._add(Key(key_id, EDDSA, public_key))
        else:
            raise ValueError(f"key {key_id!r}: only EC P-256 and Ed25519 public keys are supported")

    def _add(self, key: Key) -> None:
        if key.key_id in self._keys:
            raise ValueError(f"key {key.key_id!r} is defined twice")
        self._keys[key.key_id] = key

    def get(self, key_id: str) -> Key | None:
        return self._keys.get(key_id)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        keys = ", ".join(f"{k.key_id!r}: {k.algorithm}" for k in self._keys.values())
        return f"KeyTable({{{keys}}})"


def load_private_key(pem: bytes) -> PrivateKey:
    """An unencrypted PEM private key that `private_key_algorithm` accepts."""
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        # `from None`: the parser's message or chained traceback could quote the input.
        raise ValueError("not an unencrypted PEM private key") from None
    if not isinstance(key, EllipticCurvePrivateKey | Ed25519PrivateKey):
        raise ValueError("only EC P-256 and Ed25519 private keys are supported")
    private_key_algorithm(key)
    return key


def private_key_algorithm(key: PrivateKey) -> str:
    """The one algorithm `key` signs with: ES256 for EC P-256, EdDSA for Ed25519 (the rule of
    `add_public_key`, so the server verifies what this signs)."""
    if isinstance(key, Ed25519PrivateKey):
        return EDDSA
    if not isinstance(key.curve, SECP256R1):
        raise ValueError("EC keys must use curve P-256 (ES256)")
    return ES256
