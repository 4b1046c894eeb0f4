"""Token verification: every attack of PROTOCOL section 1 is refused with a precise reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit import api as livekit_api

from auth.keys import KeyTable
from auth.tokens import (
    Claims,
    TokenError,
    TokenVerifier,
    mint_token,
    parse_grant_overrides,
    parse_ttl,
)

KEY = "k1"
# 64 bytes and more: pyjwt warns about shorter HS512 keys, used in one test.
SECRET = "super-secret-value-" + "x" * 48
OTHER_SECRET = "another-secret-value-" + "y" * 48
NOW = 1_700_000_000.0
HOUR = 3600.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_token(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT built without pyjwt, so that tokens pyjwt refuses to make can be tested."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = (
        b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{b64(signature)}"


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": KEY,
        "sub": "alice",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + HOUR,
        "name": "Alice",
        "video": {"room": "r1", "roomJoin": True},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers={"kid": KEY, **headers})


def verifier(**options: Any) -> TokenVerifier:
    return TokenVerifier(KeyTable.from_secrets({KEY: SECRET}), **options)


def refusal(token: str, *, now: float = NOW, join: bool = False, **options: Any) -> str:
    v = verifier(**options)
    with pytest.raises(TokenError) as exc:
        (v.verify_join if join else v.verify)(token, now)
    message = str(exc.value)
    # Nothing secret or token-shaped ever reaches a message.
    assert SECRET not in message and (not token or token not in message)
    assert exc.value.reason == message
    return exc.value.reason


# --- accepted tokens ----------------------------------------------------------------------


def test_mint_verify_round_trip() -> None:
    token = mint_token(
        key_id=KEY,
        secret=SECRET,
        identity="alice",
        room="r1",
        ttl=600,
        now=NOW,
        name="Alice",
        metadata='{"team":"a"}',
        role="speaker",
        grants={"canPublish": False, "canPublishSources": ["microphone"]},
        jti="t-1",
    )
    assert jwt.get_unverified_header(token)["kid"] == KEY
    # The role exists on the server and allows what the token asks for.
    c = verifier(roles={"speaker": {"canPublishSources": ["microphone"]}}).verify_join(token, NOW)
    assert (c.identity, c.room, c.name, c.metadata, c.role) == (
        "alice",
        "r1",
        "Alice",
        '{"team":"a"}',
        "speaker",
    )
    assert (c.key_id, c.jti, c.iat, c.nbf, c.exp) == (KEY, "t-1", NOW, NOW, NOW + 600)
    assert c.grant.room_join and c.grant.room == "r1"
    assert not c.grant.can_publish and c.grant.can_publish_sources == ("microphone",)
    assert c.raw_claims["iss"] == KEY


def test_minted_tokens_get_a_random_jti() -> None:
    mint: dict[str, Any] = dict(key_id=KEY, secret=SECRET, identity="a", room="r1", ttl=60, now=NOW)
    first = verifier().verify(mint_token(**mint), NOW).jti
    second = verifier().verify(mint_token(**mint), NOW).jti
    assert first and second and first != second


def test_livekit_sdk_token_verifies() -> None:
    token = (
        livekit_api.AccessToken(KEY, SECRET)
        .with_identity("bob")
        .with_name("Bob")
        .with_grants(livekit_api.VideoGrants(room_join=True, room="r1", can_publish=False))
        .to_jwt()
    )
    # The SDK reads the real clock, so this test does too.
    c = verifier().verify_join(token, time.time())
    assert (c.identity, c.name, c.room, c.key_id) == ("bob", "Bob", "r1", KEY)
    assert c.grant.can_publish is False and c.grant.can_subscribe is True
    assert c.grant.to_permissions()["canPublish"] is False


def test_livekit_admin_token_without_identity() -> None:
    token = (
        livekit_api.AccessToken(KEY, SECRET)
        .with_grants(livekit_api.VideoGrants(room_list=True))
        .to_jwt()
    )
    c = verifier().verify(token, time.time())
    assert c.identity is None and c.room is None and c.grant.room_list


def test_key_found_by_iss_without_kid() -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert verifier().verify(token, NOW).key_id == KEY


def test_optional_claims_absent() -> None:
    c = verifier().verify(sign(claims(sub=None, name=None, iat=None, nbf=None, video=None)), NOW)
    assert (c.identity, c.name, c.metadata, c.room, c.role, c.jti) == (
        None,
        "",
        "",
        None,
        None,
        None,
    )
    assert (c.iat, c.nbf) == (None, None)


def test_es256_token_verifies() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    table = KeyTable()
    table.add_public_key("ec", public_pem(private))
    token = jwt.encode(claims(iss="ec"), private, algorithm="ES256", headers={"kid": "ec"})
    assert TokenVerifier(table).verify_join(token, NOW).key_id == "ec"


def test_eddsa_token_verifies() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    table = KeyTable()
    table.add_public_key("ed", public_pem(private))
    token = jwt.encode(claims(), private, algorithm="EdDSA", headers={"kid": "ed"})
    assert TokenVerifier(table).verify_join(token, NOW).identity == "alice"


def public_pem(private: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


# --- algorithm and key attacks ------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_refused(alg: str) -> None:
    token = hand_token({"alg": alg, "typ": "JWT", "kid": KEY}, claims(), key=None)
    assert refusal(token) == "alg_not_allowed"
    # Refused before any key lookup, whatever key it names.
    unknown = hand_token({"alg": alg, "kid": "k9"}, claims(), key=None)
    assert refusal(unknown) == "alg_not_allowed"


def test_hs_es_confusion_refused() -> None:
    """An HS256 token "signed" with the ES256 key's public PEM as HMAC secret."""
    pem = public_pem(ec.generate_private_key(ec.SECP256R1()))
    table = KeyTable()
    table.add_public_key("ec", pem)
    token = hand_token({"alg": "HS256", "kid": "ec"}, claims(iss="ec"), key=pem)
    with pytest.raises(TokenError) as exc:
        TokenVerifier(table).verify(token, NOW)
    assert exc.value.reason == "alg_not_allowed"


def test_other_hmac_algorithm_refused_for_hs256_key() -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS512", headers={"kid": KEY})
    assert refusal(token) == "alg_not_allowed"


def test_es256_token_signed_by_another_key_refused() -> None:
    table = KeyTable()
    table.add_public_key("ec", public_pem(ec.generate_private_key(ec.SECP256R1())))
    intruder = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims(), intruder, algorithm="ES256", headers={"kid": "ec"})
    with pytest.raises(TokenError) as exc:
        TokenVerifier(table).verify(token, NOW)
    assert exc.value.reason == "signature"


def test_unknown_kid_refused() -> None:
    assert refusal(sign(claims(), kid="k2")) == "unknown_key"


def test_kid_wins_over_a_known_iss() -> None:
    assert refusal(sign(claims(iss=KEY), kid="someone-else")) == "unknown_key"


def test_no_kid_and_unknown_iss_refused() -> None:
    assert refusal(jwt.encode(claims(iss="k9"), SECRET, algorithm="HS256")) == "unknown_key"


def test_no_kid_and_no_iss_refused() -> None:
    assert refusal(jwt.encode(claims(iss=None), SECRET, algorithm="HS256")) == "unknown_key"


def test_wrong_secret_refused() -> None:
    assert refusal(sign(claims(), secret=OTHER_SECRET)) == "signature"


def test_tampered_payload_refused() -> None:
    header, _, signature = sign(claims()).split(".")
    forged = b64(
        json.dumps(claims(video={"room": "r1", "roomJoin": True, "roomAdmin": True})).encode()
    )
    assert refusal(f"{header}.{forged}.{signature}") == "signature"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b", "...", "é.é.é"])
def test_malformed_refused(token: str) -> None:
    assert refusal(token) == "malformed"


def test_non_string_token_refused() -> None:
    with pytest.raises(TokenError, match="malformed"):
        verifier().verify(b"abc", NOW)  # type: ignore[arg-type]


def test_payload_must_be_an_object() -> None:
    header = b64(json.dumps({"alg": "HS256", "kid": KEY}).encode())
    body = b64(b"[1, 2]")
    mac = hmac.new(SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    assert refusal(f"{header}.{body}.{b64(mac)}") == "malformed"


# --- time ---------------------------------------------------------------------------------


def test_no_exp_refused() -> None:
    assert refusal(sign(claims(exp=None))) == "missing_exp"


def test_expired_refused() -> None:
    assert refusal(sign(claims()), now=NOW + 2 * HOUR) == "expired"


def test_leeway_boundaries_after_exp() -> None:
    token = sign(claims())
    exp = NOW + HOUR
    assert verifier().verify(token, exp + 59).identity == "alice"
    assert verifier().verify(token, exp + 60).identity == "alice"
    assert refusal(token, now=exp + 60.5) == "expired"
    assert refusal(token, now=exp + 61) == "expired"
    assert refusal(token, now=exp + 1, leeway=0) == "expired"


def test_nbf_in_future_refused_beyond_leeway() -> None:
    token = sign(claims(nbf=NOW + 600, exp=NOW + HOUR))
    assert verifier().verify(token, NOW + 600 - 59).identity == "alice"
    assert refusal(token, now=NOW + 600 - 61) == "not_yet_valid"
    assert refusal(token, now=NOW) == "not_yet_valid"


def test_iat_in_future_refused() -> None:
    assert refusal(sign(claims(nbf=None, iat=NOW + 600))) == "iat_in_future"


def test_leeway_above_60_refused() -> None:
    with pytest.raises(ValueError, match="leeway"):
        verifier(leeway=61)
    with pytest.raises(ValueError, match="leeway"):
        verifier(leeway=-1)


def test_hand_made_token_verifies() -> None:
    # Control for the tests below that hand-make tokens pyjwt would not encode.
    token = hand_token({"alg": "HS256", "kid": KEY}, claims(), SECRET.encode())
    assert verifier().verify(token, NOW).identity == "alice"


def test_exp_null_is_missing() -> None:
    token = hand_token({"alg": "HS256", "kid": KEY}, {**claims(), "exp": None}, SECRET.encode())
    assert refusal(token) == "missing_exp"


# NaN would pass every time comparison; json.dumps writes NaN and Infinity, json.loads reads them.
@pytest.mark.parametrize("value", ["soon", True, [1], float("nan"), float("inf")])
def test_exp_must_be_a_finite_number(value: Any) -> None:
    token = hand_token({"alg": "HS256", "kid": KEY}, {**claims(), "exp": value}, SECRET.encode())
    assert refusal(token) == "bad_claims: exp must be a finite number"


@pytest.mark.parametrize("name", ["nbf", "iat"])
def test_nbf_and_iat_must_be_numbers(name: str) -> None:
    assert refusal(sign(claims(**{name: "now"}))) == f"bad_claims: {name} must be a finite number"


def test_ttl_above_max_refused() -> None:
    # A second of slack (livekit-api's 6 h tokens can span 6 h 1 s), not two.
    assert verifier().verify(sign(claims(nbf=NOW, exp=NOW + 6 * HOUR + 1)), NOW)
    assert refusal(sign(claims(exp=NOW + 6 * HOUR + 2))) == "ttl_too_long"
    assert verifier().verify(sign(claims(exp=NOW + 6 * HOUR)), NOW).exp == NOW + 6 * HOUR
    assert refusal(sign(claims(exp=NOW + 2 * HOUR)), max_ttl=HOUR) == "ttl_too_long"


def test_ttl_measured_from_nbf_then_iat_then_now() -> None:
    # nbf wins over iat: a token valid from nbf for 1 h is fine however old its iat.
    assert verifier(max_ttl=HOUR).verify(sign(claims(iat=NOW - 5 * HOUR)), NOW)
    assert refusal(sign(claims(nbf=NOW - 2 * HOUR)), max_ttl=2 * HOUR) == "ttl_too_long"
    assert refusal(sign(claims(nbf=None, iat=NOW - 2 * HOUR)), max_ttl=2 * HOUR) == "ttl_too_long"
    no_start = sign(claims(nbf=None, iat=None, exp=NOW + 2 * HOUR))
    assert refusal(no_start, max_ttl=HOUR) == "ttl_too_long"
    assert verifier(max_ttl=HOUR).verify(no_start, NOW + HOUR + 1)


# --- sizes --------------------------------------------------------------------------------


def test_oversize_token_refused() -> None:
    token = sign(claims(metadata="m" * 6000))
    assert verifier(max_token_bytes=len(token), max_metadata_bytes=8192).verify(token, NOW)
    reason = refusal(token, max_token_bytes=len(token) - 1, max_metadata_bytes=8192)
    assert reason == "too_large"


def test_default_max_token_size_is_8_kib() -> None:
    token = sign(claims(metadata="m" * 7000))
    assert len(token) > 8192
    assert refusal(token, max_metadata_bytes=100_000) == "too_large"


def test_name_capped_in_utf8_bytes() -> None:
    assert verifier().verify(sign(claims(name="n" * 256)), NOW).name == "n" * 256
    assert verifier().verify(sign(claims(name="é" * 128)), NOW)
    # 129 characters, 258 bytes.
    assert refusal(sign(claims(name="é" * 129))) == "name_too_large"
    assert refusal(sign(claims(name="n" * 11)), max_name_bytes=10) == "name_too_large"


def test_metadata_capped() -> None:
    assert verifier().verify(sign(claims(metadata="m" * 4096)), NOW)
    assert refusal(sign(claims(metadata="m" * 4097))) == "metadata_too_large"


# --- claim shapes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"name": 5}, "bad_claims: name must be a string"),
        ({"metadata": {"a": 1}}, "bad_claims: metadata must be a string"),
        ({"sub": 42}, "bad_claims: sub must be a string"),
        ({"role": ["admin"]}, "bad_claims: role must be a string"),
        ({"role": "a\nb"}, "bad_claims: role must be 1..128 printable characters"),
        ({"jti": 7}, "bad_claims: jti must be a string"),
        ({"jti": "j" * 257}, "bad_claims: jti must be 1..256 characters"),
        ({"aud": "other-service"}, "bad_claims: aud: tokens for another audience are refused"),
        ({"video": "r1"}, "bad_claims: video must be an object"),
        (
            {"video": {"room": "r1", "roomJoin": "true"}},
            "bad_claims: video.roomJoin must be true or false",
        ),
        (
            {"video": {"room": "r1", "canPublishSources": ["CAMERA"]}},
            "bad_claims: video.canPublishSources may only contain camera, microphone,"
            " screen_share, screen_share_audio",
        ),
    ],
)
def test_bad_claim_shapes_refused(overrides: dict[str, Any], reason: str) -> None:
    assert refusal(sign(claims(**overrides))) == reason


@pytest.mark.parametrize("identity", ["x" * 129, "a\tb", "new\nline", "\x00"])
def test_bad_identity_refused(identity: str) -> None:
    reason = refusal(sign(claims(sub=identity)))
    assert reason == "bad_claims: identity must be 1..128 printable characters"


def test_identity_of_128_chars_accepted() -> None:
    assert verifier().verify(sign(claims(sub="i" * 128)), NOW).identity == "i" * 128


@pytest.mark.parametrize("room", ["*", "room-*", "r?", "x" * 129, "a\nb"])
def test_wildcard_or_bad_room_refused(room: str) -> None:
    reason = refusal(sign(claims(video={"room": room, "roomJoin": True})))
    assert reason.startswith("bad_claims: video.room must")


def test_room_exposed_exactly_for_the_caller_to_compare() -> None:
    # Checking the room against a request is the caller's job; the claim is kept byte for byte.
    c = verifier().verify(sign(claims(video={"room": "Café", "roomJoin": True})), NOW)
    assert c.room == "Café" and c.room != "café"


def test_join_needs_identity() -> None:
    assert refusal(sign(claims(sub=None)), join=True) == "no_identity"
    assert refusal(sign(claims(sub="")), join=True) == "no_identity"


def test_join_needs_room_join() -> None:
    token = sign(claims(video={"room": "r1", "roomAdmin": True}))
    assert refusal(token, join=True) == "no_room_join"
    assert verifier().verify(token, NOW).grant.room_admin


def test_join_needs_room() -> None:
    assert refusal(sign(claims(video={"roomJoin": True})), join=True) == "no_room"


# --- secret hygiene -----------------------------------------------------------------------


def test_claims_repr_has_no_raw_claims_or_secret() -> None:
    token = sign(claims(metadata="private-metadata-value", jti="j1"))
    c = verifier().verify(token, NOW)
    text = repr(c)
    assert SECRET not in text and token not in text
    assert "raw_claims" not in text
    assert isinstance(c, Claims)


def test_mint_errors_never_show_the_secret() -> None:
    bad_inputs: list[dict[str, Any]] = [
        {"ttl": 0},
        {"ttl": float("nan")},
        {"identity": ""},
        {"room": "r*"},
        {"grants": {"canPublish": "yes"}},
        {"grants": {"canPublishSources": ["webcam"]}},
        {"role": ""},
    ]
    for bad in bad_inputs:
        args: dict[str, Any] = dict(
            key_id=KEY, secret=SECRET, identity="a", room="r1", ttl=60, now=NOW
        )
        args.update(bad)
        with pytest.raises(ValueError) as exc:
            mint_token(**args)
        assert SECRET not in str(exc.value)


def test_mint_admin_token_without_room_or_identity() -> None:
    token = mint_token(
        key_id=KEY,
        secret=SECRET,
        identity=None,
        room=None,
        ttl=60,
        now=NOW,
        grants={"roomList": True, "roomJoin": False},
    )
    c = verifier().verify(token, NOW)
    assert c.identity is None and c.room is None and c.grant.room_list
    assert "sub" not in c.raw_claims and "room" not in c.raw_claims["video"]


# --- CLI helpers --------------------------------------------------------------------------


def test_parse_grant_overrides() -> None:
    assert parse_grant_overrides(
        ["canPublish=false", "canPublishSources=camera, microphone", "roomAdmin=TRUE"]
    ) == {
        "canPublish": False,
        "canPublishSources": ["camera", "microphone"],
        "roomAdmin": True,
    }
    assert parse_grant_overrides(["canPublishSources="]) == {"canPublishSources": []}
    assert parse_grant_overrides([]) == {}


@pytest.mark.parametrize(
    "item, message",
    [
        ("canFly=true", "unknown grant 'canFly'"),
        ("room=r2", "unknown grant 'room'"),
        ("canPublish", "expected NAME=VALUE"),
        ("canPublish=maybe", "expected true or false"),
        ("canPublishSources=camera,webcam", "may only contain"),
    ],
)
def test_parse_grant_overrides_refuses(item: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_grant_overrides([item])


def test_parse_grant_overrides_refuses_repeats() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse_grant_overrides(["canPublish=true", "canPublish=false"])


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("10m", 600), ("1h", 3600), ("3600", 3600), ("1d", 86400), ("1.5h", 5400)],
)
def test_parse_ttl(text: str, seconds: float) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5m", "10x", "h", "1 h 2", "nan"])
def test_parse_ttl_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)


# --- odd input never escapes as anything but TokenError -----------------------------------


def test_lone_surrogate_in_token_is_malformed() -> None:
    assert refusal(sign(claims()) + "\ud800") == "malformed"


def test_lone_surrogate_in_name_refused() -> None:
    # json.dumps writes "\ud800" as an escape, which json.loads turns back into a lone surrogate.
    token = hand_token({"alg": "HS256", "kid": KEY}, claims(name="a\ud800"), SECRET.encode())
    assert refusal(token) == "bad_claims: name must be valid Unicode"


def test_int_beyond_float_range_refused() -> None:
    token = hand_token({"alg": "HS256", "kid": KEY}, claims(exp=10**400), SECRET.encode())
    assert refusal(token) == "bad_claims: exp must be a finite number"


def test_int_with_too_many_digits_is_malformed() -> None:
    # Python refuses to parse ints of over 4300 digits; that must not escape as ValueError.
    header = b64(json.dumps({"alg": "HS256", "kid": KEY}).encode())
    body = b64(
        json.dumps(claims()).replace(f'"exp": {NOW + HOUR}', '"exp": ' + "9" * 4400).encode()
    )
    mac = hmac.new(SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    assert refusal(f"{header}.{body}.{b64(mac)}") == "malformed"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
CLAIM_NAMES = st.sampled_from(
    ["sub", "name", "metadata", "role", "jti", "iat", "nbf", "exp", "video", "aud", "iss"]
)
VIDEO_NAMES = st.sampled_from(["room", "roomJoin", "canPublish", "canPublishSources", "hidden"])


@settings(max_examples=300, deadline=None)
@given(
    overrides=st.dictionaries(CLAIM_NAMES, JSON, max_size=4),
    video=st.dictionaries(VIDEO_NAMES, JSON, max_size=3),
)
def test_signed_garbage_gives_claims_or_token_error(
    overrides: dict[str, Any], video: dict[str, Any]
) -> None:
    payload = {**claims(), "video": {"room": "r1", "roomJoin": True, **video}, **overrides}
    token = hand_token({"alg": "HS256", "kid": KEY}, payload, SECRET.encode())
    try:
        c = verifier().verify(token, NOW)
    except TokenError as e:
        assert e.reason and SECRET not in e.reason
    else:
        assert isinstance(c.name, str) and isinstance(c.metadata, str)
        assert c.identity is None or 0 < len(c.identity) <= 128
