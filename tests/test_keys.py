"""KeyTable: one algorithm per key, short-secret refusal, and no secret in any message."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from auth.keys import EDDSA, ES256, HS256, KeyTable

SECRET = "k3y-" + "s" * 40
SHORT_SECRET = "tiny-secret"


def public_pem(private_key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def test_from_secrets_gives_hs256_keys() -> None:
    table = KeyTable.from_secrets({"k1": SECRET, "k2": SECRET + "2"})
    assert len(table) == 2 and "k1" in table and "nope" not in table
    assert sorted(table) == ["k1", "k2"]
    key = table.get("k1")
    assert key is not None and key.algorithm == HS256 and key.material == SECRET.encode()
    assert table.get("nope") is None


def test_short_secret_refused_without_allow_short() -> None:
    with pytest.raises(ValueError, match="shorter than 32 bytes") as exc:
        KeyTable.from_secrets({"k1": SHORT_SECRET})
    assert SHORT_SECRET not in str(exc.value)


def test_secret_length_counts_bytes() -> None:
    # 16 two-byte characters are 32 bytes: long enough.
    KeyTable.from_secrets({"k1": "é" * 16})
    with pytest.raises(ValueError):
        KeyTable.from_secrets({"k1": "s" * 31})


def test_short_secret_allowed_when_asked() -> None:
    table = KeyTable.from_secrets({"k1": SHORT_SECRET}, allow_short=True)
    assert "k1" in table


def test_empty_secret_refused_even_with_allow_short() -> None:
    with pytest.raises(ValueError):
        KeyTable.from_secrets({"k1": ""}, allow_short=True)


def test_repr_never_shows_secrets() -> None:
    table = KeyTable.from_secrets({"k1": SECRET})
    table.add_secret("k2", SHORT_SECRET, allow_short=True)
    for text in (repr(table), str(table), repr(table.get("k1")), repr(table.get("k2"))):
        assert SECRET not in text and SHORT_SECRET not in text
    assert repr(table) == "KeyTable({'k1': HS256, 'k2': HS256})"


def test_duplicate_key_id_refused() -> None:
    table = KeyTable.from_secrets({"k1": SECRET})
    with pytest.raises(ValueError, match="twice") as exc:
        table.add_secret("k1", SECRET)
    assert SECRET not in str(exc.value)


@pytest.mark.parametrize("key_id", ["", "x" * 129, "a\nb", 7])
def test_bad_key_ids_refused(key_id: object) -> None:
    with pytest.raises(ValueError, match="key ids"):
        KeyTable().add_secret(key_id, SECRET)  # type: ignore[arg-type]


def test_ec_p256_public_key_is_es256() -> None:
    table = KeyTable()
    table.add_public_key("ec", public_pem(ec.generate_private_key(ec.SECP256R1())))
    key = table.get("ec")
    assert key is not None and key.algorithm == ES256
    assert repr(table) == "KeyTable({'ec': ES256})"


def test_ed25519_public_key_is_eddsa() -> None:
    table = KeyTable()
    table.add_public_key("ed", public_pem(ed25519.Ed25519PrivateKey.generate()).decode())
    key = table.get("ed")
    assert key is not None and key.algorithm == EDDSA


def test_other_ec_curves_refused() -> None:
    with pytest.raises(ValueError, match="P-256"):
        KeyTable().add_public_key("ec", public_pem(ec.generate_private_key(ec.SECP384R1())))


def test_rsa_public_key_refused() -> None:
    pem = rsa.generate_private_key(65537, 2048).public_key()
    with pytest.raises(ValueError, match="only EC P-256 and Ed25519"):
        KeyTable().add_public_key(
            "rsa", pem.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )


def test_private_key_pem_refused_without_quoting_it() -> None:
    private_pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    with pytest.raises(ValueError, match="not a PEM public key") as exc:
        KeyTable().add_public_key("ed", private_pem)
    body = private_pem.decode().splitlines()[1]
    assert body not in str(exc.value)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_garbage_pem_refused() -> None:
    with pytest.raises(ValueError, match="not a PEM public key"):
        KeyTable().add_public_key("x", b"not a key")
