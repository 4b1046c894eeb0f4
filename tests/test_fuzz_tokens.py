"""Fuzzing token verification (auth/tokens.py) beyond tests/test_tokens.py.

test_tokens.py fuzzes claim values of HS256 tokens through `verify`. Here: random strings,
random JWT-shaped strings (any header, any payload, any signature), tokens correctly signed by
pyjwt with HS256, ES256 and EdDSA whose header and claims hold random JSON, roles, and
`verify_join` on all of them. Whatever the input, the verifier returns Claims that keep the
protocol's rules or raises `TokenError` with a reason, never anything else, and never a reason
that shows the token or the secret.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import event, given
from hypothesis import strategies as st

from auth.keys import KeyTable
from auth.tokens import Claims, TokenError, TokenVerifier
from tests.fuzzing import fuzz

SECRET = "fuzz-secret-value-" + "x" * 48
NOW = 1_700_000_000.0
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def keys() -> KeyTable:
    table = KeyTable.from_secrets({"hs": SECRET})
    for key_id, private in (("ec", EC_KEY), ("ed", ED_KEY)):
        pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        table.add_public_key(key_id, pem)
    return table


VERIFIER = TokenVerifier(
    keys(),
    roles={"speaker": {"canPublish": True}, "viewer": {"canPublish": False, "hidden": True}},
)
ALGORITHMS: dict[str, tuple[str, str | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey]]
ALGORITHMS = {"hs": ("HS256", SECRET), "ec": ("ES256", EC_KEY), "ed": ("EdDSA", ED_KEY)}

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["", "hs", "ec", "ed", "none", "HS256", "room1", "alice", "speaker"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
TIMES = st.one_of(
    st.floats(NOW - 7200, NOW + 7200),
    st.sampled_from([NOW, NOW + 3600, NOW - 61, NOW + 61, 0, -1, 2**63, float("nan")]),
    JSON,
)
CLAIM_NAMES = ["sub", "name", "metadata", "role", "jti", "iat", "nbf", "exp", "video", "aud", "iss"]
VIDEO = st.dictionaries(
    st.sampled_from(
        ["room", "roomJoin", "roomAdmin", "roomCreate", "roomList", "canPublish",
         "canSubscribe", "canPublishData", "canPublishSources", "canUpdateOwnMetadata", "hidden",
         "recorder"]
    ),
    st.one_of(st.booleans(), st.just("room1"), JSON),
    max_size=6,
)  # fmt: skip


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def checked(token: Any, *, join: bool) -> Claims | None:
    """The verifier's answer, checked: Claims that keep the rules, or a TokenError."""
    try:
        claims = (VERIFIER.verify_join if join else VERIFIER.verify)(token, NOW)
    except TokenError as exc:
        reason = exc.reason
        assert reason and reason == str(exc) and SECRET not in reason
        # A JWT-shaped token is never echoed (a random word may be a reason's own word).
        assert not (isinstance(token, str) and "." in token and len(token) > 16 and token in reason)
        event(f"refused: {reason.split(':')[0]}")
        return None
    event("accepted")
    assert isinstance(claims.name, str) and isinstance(claims.metadata, str)
    assert claims.key_id in ALGORITHMS
    assert claims.identity is None or 0 < len(claims.identity) <= 128
    assert claims.exp + VERIFIER.leeway >= NOW
    if join:
        assert claims.identity is not None and claims.room is not None
        assert claims.grant.room_join
    return claims


@fuzz(300)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=50), JSON), st.booleans())
def test_random_values_are_refused_with_token_error(token: Any, join: bool) -> None:
    checked(token, join=join)


PARTS = st.one_of(
    JSON.map(lambda v: b64(json.dumps(v).encode())),
    st.binary(max_size=40).map(b64),
    st.text(alphabet="ABCabc012-_=.+/ ", max_size=30),
)
HEADERS = st.fixed_dictionaries(
    {"alg": st.one_of(st.sampled_from(["HS256", "ES256", "EdDSA", "none", "HS512"]), JSON)},
    optional={"kid": st.one_of(st.sampled_from(list(ALGORITHMS)), JSON), "typ": JSON, "crit": JSON},
).map(lambda h: b64(json.dumps(h).encode()))


@fuzz(300)
@given(st.lists(st.one_of(PARTS, HEADERS), min_size=1, max_size=4), st.booleans())
def test_random_jwt_shaped_strings_are_refused_with_token_error(
    parts: list[str], join: bool
) -> None:
    checked(".".join(parts), join=join)


@st.composite
def signed_tokens(draw: st.DrawFn) -> str:
    """A token pyjwt signs correctly with one of the verifier's keys, holding random values."""
    key_id = draw(st.sampled_from(list(ALGORITHMS)))
    algorithm, key = ALGORITHMS[key_id]
    payload: dict[str, Any] = {
        "sub": "alice",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 3600,
        "video": {"room": "room1", "roomJoin": True, **draw(VIDEO)},
    }
    for name in draw(st.lists(st.sampled_from(CLAIM_NAMES), max_size=4, unique=True)):
        if draw(st.integers(0, 4)) == 0:
            payload.pop(name, None)
        elif name in ("iat", "nbf", "exp"):
            payload[name] = draw(TIMES)
        elif name == "role":
            payload[name] = draw(st.one_of(st.sampled_from(["speaker", "viewer", "admin"]), JSON))
        else:
            payload[name] = draw(JSON)
    headers = {"kid": key_id, **draw(st.dictionaries(st.sampled_from(["typ", "cty", "x"]), JSON))}
    if draw(st.integers(0, 5)) == 0:
        del headers["kid"]
        payload["iss"] = draw(st.one_of(st.sampled_from(list(ALGORITHMS)), JSON))
    # Signed as bytes: pyjwt's own `encode` refuses some claim shapes a hostile minter can sign.
    return jwt.api_jws.encode(json.dumps(payload).encode(), key, algorithm, headers=headers)


@fuzz(400)
@given(signed_tokens(), st.booleans())
def test_signed_tokens_with_random_claims_give_claims_or_token_error(
    token: str, join: bool
) -> None:
    checked(token, join=join)


@fuzz(200)
@given(signed_tokens(), st.integers(0, 400), st.sampled_from(["x", "A", ".", "=", "\x00"]))
def test_a_signed_token_changed_anywhere_is_refused_or_unchanged(
    token: str, at: int, char: str
) -> None:
    at = min(at, len(token))
    changed = token[:at] + char + token[at + 1 :]
    claims = checked(changed, join=False)
    if claims is not None and changed != token:
        # Base64url can carry the same bytes in more than one spelling of its last character.
        signature = token.rsplit(".", 1)[-1]
        assert at >= len(token) - len(signature), (token, changed)
