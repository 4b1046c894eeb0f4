"""Tokens bound to a client key (issue 15): thumbprints, proofs, nonces, and the admission of
bound tokens on join, resume and refresh, in-process with time passed in."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from auth.keybinding import (
    ProofError,
    b64url,
    make_proof,
    public_jwk,
    thumbprint,
    thumbprint_of_pem,
    unb64url,
    verify_proof,
)
from auth.keys import KeyTable, PrivateKey
from auth.nonces import NonceStore
from auth.tokens import TokenError, TokenVerifier, mint_token
from signaling.admin import admin_view
from signaling.messages import Join, Refresh, Resume
from signaling.state import ServerState
from tests.conftest import KEY_ID, SECRET
from tests.signaling_helpers import NOW, WALL, audit, close_all, make_state, session, token


def p256() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jkt(key: PrivateKey) -> str:
    return thumbprint(public_jwk(key.public_key()))


# -- thumbprints and proofs (pure) ----------------------------------------------------------------


def test_rfc7638_thumbprint_example() -> None:
    # RFC 7638 section 3.1 hashes an RSA key; RFC 8037 appendix A.3 gives this Ed25519 one.
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    assert thumbprint({**jwk, "kid": "ignored", "use": "sig"}) == thumbprint(jwk)


def test_thumbprint_of_pem_matches_the_jwk() -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    assert thumbprint_of_pem(pem) == jkt(key)
    with pytest.raises(ValueError, match="not a PEM public key"):
        thumbprint_of_pem(b"nonsense")


@pytest.mark.parametrize("make_key", [p256, Ed25519PrivateKey.generate])
def test_a_proof_verifies_for_its_key_and_credential_only(make_key: object) -> None:
    key = make_key()  # type: ignore[operator]
    proof = make_proof(key, nonce="n1", credential="tok", client="python")
    checked = verify_proof(proof, expected_jkt=jkt(key), credential="tok")
    assert (checked.nonce, checked.client) == ("n1", "python")
    with pytest.raises(ProofError, match="wrong_key"):
        verify_proof(proof, expected_jkt=jkt(p256()), credential="tok")
    with pytest.raises(ProofError, match="wrong_credential"):
        verify_proof(proof, expected_jkt=jkt(key), credential="another token")


def test_a_proof_signed_by_another_key_with_the_right_jwk_is_refused() -> None:
    key, thief = p256(), p256()
    forged = make_proof(thief, nonce="n", credential="t", client="python")
    header, payload, signature = forged.split(".")
    header_json = json.loads(unb64url(header))
    header_json["jwk"] = public_jwk(key.public_key())  # claims the rightful key
    tampered = f"{b64url(json.dumps(header_json).encode())}.{payload}.{signature}"
    with pytest.raises(ProofError, match="signature"):
        verify_proof(tampered, expected_jkt=jkt(key), credential="t")


@pytest.mark.parametrize(
    "proof",
    ["", "a.b", "a.b.c.d", "é.b.c", "x" * 5000, "e30.e30.", "bm90IGpzb24.e30.AA"],
)
def test_malformed_proofs_are_refused_without_a_crash(proof: str) -> None:
    with pytest.raises(ProofError):
        verify_proof(proof, expected_jkt="A" * 43, credential="t")


def test_alg_must_match_the_key_type() -> None:
    key = Ed25519PrivateKey.generate()
    proof = make_proof(key, nonce="n", credential="t", client="python")
    header, rest = proof.split(".", 1)
    claims = json.loads(unb64url(header))
    claims["alg"] = "ES256"
    with pytest.raises(ProofError, match="alg_mismatch"):
        verify_proof(
            f"{b64url(json.dumps(claims).encode())}.{rest}", expected_jkt=jkt(key), credential="t"
        )


def test_nonces_are_single_use_and_short_lived() -> None:
    store = NonceStore(ttl=30, max_outstanding=3)
    first = store.issue(100.0)
    assert store.spend(first, 110.0)
    assert not store.spend(first, 110.0)  # replay
    late = store.issue(100.0)
    assert not store.spend(late, 131.0)  # expired
    assert not store.spend("never-issued", 100.0)
    many = [store.issue(200.0) for _ in range(5)]
    assert len(store) == 3  # bounded: the oldest went
    assert not store.spend(many[0], 200.0) and store.spend(many[-1], 200.0)


def test_tokens_carry_and_check_cnf_jkt() -> None:
    verifier = TokenVerifier(KeyTable.from_secrets({KEY_ID: SECRET}))
    key = p256()
    bound = mint_token(
        key_id=KEY_ID, secret=SECRET, identity="a", room="r", ttl=60, now=WALL, bind=jkt(key)
    )
    assert verifier.verify(bound, WALL).jkt == jkt(key)
    plain = mint_token(key_id=KEY_ID, secret=SECRET, identity="a", room="r", ttl=60, now=WALL)
    assert verifier.verify(plain, WALL).jkt is None
    with pytest.raises(ValueError, match="thumbprint"):
        mint_token(key_id=KEY_ID, secret=SECRET, identity="a", room="r", ttl=60, now=WALL, bind="x")
    import jwt

    for cnf in ({"jkt": "short"}, "string", {"x5t#S256": "A" * 43}):
        odd = jwt.encode(
            {"sub": "a", "exp": WALL + 60, "iat": WALL, "cnf": cnf,
             "video": {"roomJoin": True, "room": "r"}},
            SECRET, algorithm="HS256", headers={"kid": KEY_ID},
        )  # fmt: skip
        with pytest.raises(TokenError, match="bad_claims: cnf"):
            verifier.verify(odd, WALL)


# -- admission ------------------------------------------------------------------------------


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[ServerState]:
    state = make_state(tmp_path, server={"resume_window": 30.0})
    yield state
    await close_all(state)


def proof_for(state: ServerState, key: PrivateKey, credential: str, client: str = "python") -> str:
    return make_proof(key, nonce=state.nonces.issue(WALL), credential=credential, client=client)


def refusal_details(state: ServerState, event: str = "join_refused") -> list[str]:
    return [r.get("detail", r["reason"]) for r in audit(state) if r["event"] == event]


async def test_the_rightful_client_joins_and_the_admin_view_shows_bound(state: ServerState) -> None:
    key = p256()
    bound = token("alice", bind=jkt(key))
    alice, wire = session(state)
    outcome = alice.start(Join(token=bound, proof=proof_for(state, key, bound), req=1), NOW, WALL)
    assert outcome.accepted, wire.frames
    assert alice.participant is not None
    view = admin_view(alice.participant)
    assert view["bound"] is True and view["client_kind"] == "python"
    bob, _ = session(state)
    assert bob.start(Join(token=token("bob"), req=1), NOW, WALL).accepted  # bearer: unchanged
    assert bob.participant is not None and admin_view(bob.participant)["bound"] is False


async def test_no_key_wrong_key_and_replayed_proof_are_refused_and_audited(
    state: ServerState,
) -> None:
    key = p256()
    bound = token("alice", bind=jkt(key))
    attempts = {
        "no key": Join(token=bound, req=1),
        "wrong key": Join(token=bound, proof=proof_for(state, p256(), bound), req=1),
        "made-up nonce": Join(
            token=bound, proof=make_proof(key, nonce="guess", credential=bound, client="python")
        ),
    }
    # Distinct addresses: the audit log sums up repeated refusals from one address.
    for n, (name, attempt) in enumerate(attempts.items()):
        s, wire = session(state, peer=f"198.51.100.{n}")
        outcome = s.start(attempt, NOW, WALL)
        assert not outcome.accepted, name
        assert wire.frames == [
            {
                "type": "error",
                "code": "unauthorized",
                "message": "unauthorized",
                **({"req": 1} if attempt.req else {}),
            }
        ], name
        assert wire.close_code == 4401
    # The rightful client's proof, used once, then replayed by someone who copied it.
    proof = proof_for(state, key, bound)
    rightful, _ = session(state)
    assert rightful.start(Join(token=bound, proof=proof, req=1), NOW, WALL).accepted
    copy, wire = session(state, peer="198.51.100.9")
    assert not copy.start(Join(token=bound, proof=proof, req=1), NOW, WALL).accepted
    records = [r for r in audit(state) if r["event"] == "join_refused"]
    assert {r["reason"] for r in records} == {"pop_failed"}
    assert [r["detail"] for r in records] == [
        "no_proof",
        "wrong_key",
        "nonce_unknown_or_spent",
        "nonce_unknown_or_spent",
    ]
    assert all(r["identity"] == "alice" and r["room"] == "room1" for r in records)


async def test_an_expired_nonce_is_refused(state: ServerState) -> None:
    key = p256()
    bound = token("alice", bind=jkt(key))
    proof = proof_for(state, key, bound)
    s, _ = session(state)
    late = WALL + state.config.security.nonce_ttl + 1
    assert not s.start(Join(token=bound, proof=proof, req=1), NOW, late).accepted


async def test_require_bound_tokens_per_room_and_per_role(tmp_path: Path) -> None:
    state = make_state(tmp_path, limits={"require_bound_tokens": True})
    try:
        s, _ = session(state)
        assert not s.start(Join(token=token("bearer"), req=1), NOW, WALL).accepted
        assert refusal_details(state) == ["unbound_token"]
        key = Ed25519PrivateKey.generate()
        bound = token("alice", bind=jkt(key))
        s, _ = session(state)
        assert s.start(
            Join(token=bound, proof=proof_for(state, key, bound), req=1), NOW, WALL
        ).accepted
    finally:
        await close_all(state)


async def test_clients_grant_narrows_publishing_to_proven_client_kinds(state: ServerState) -> None:
    key = p256()
    browser_only = token("alice", bind=jkt(key), grants={"clients": ["browser"]})
    s, wire = session(state)
    assert s.start(
        Join(token=browser_only, proof=proof_for(state, key, browser_only), req=1), NOW, WALL
    ).accepted
    assert wire.frames[0]["participant"]["permissions"]["canPublish"] is False
    s2, wire2 = session(state)
    again = token("bob", bind=jkt(key), grants={"clients": ["browser"]})
    assert s2.start(
        Join(token=again, proof=proof_for(state, key, again, "browser"), req=1), NOW, WALL
    ).accepted
    assert wire2.frames[0]["participant"]["permissions"]["canPublish"] is True
    # A bearer token cannot prove any kind: it may not publish under such a grant.
    s3, wire3 = session(state)
    assert s3.start(
        Join(token=token("carol", grants={"clients": ["python"]}), req=1), NOW, WALL
    ).accepted
    assert wire3.frames[0]["participant"]["permissions"]["canPublish"] is False


async def test_resume_of_a_bound_session_proves_the_key_again(state: ServerState) -> None:
    key = p256()
    bound = token("alice", bind=jkt(key))
    alice, _ = session(state)
    assert alice.start(
        Join(token=bound, proof=proof_for(state, key, bound), req=1), NOW, WALL
    ).accepted
    resume_token = alice.resume_token
    await alice.finish(NOW + 1)
    thief, wire = session(state)
    assert not thief.start(Resume(resume_token=resume_token, req=1), NOW + 2, WALL + 2).accepted
    assert wire.frames[0]["code"] == "unauthorized"
    assert len(state.parking) == 1  # still parked for its rightful client
    back, wire = session(state)
    proof = proof_for(state, key, resume_token)
    assert back.start(
        Resume(resume_token=resume_token, proof=proof, req=1), NOW + 3, WALL + 3
    ).accepted
    assert back.binding is not None and back.binding.jkt == jkt(key)
    assert refusal_details(state, "resume_refused") == ["no_proof"]


async def test_refresh_keeps_the_binding(state: ServerState) -> None:
    key, other = p256(), p256()
    bound = token("alice", bind=jkt(key))
    alice, wire = session(state)
    assert alice.start(
        Join(token=bound, proof=proof_for(state, key, bound), req=1), NOW, WALL
    ).accepted
    same_key = token("alice", bind=jkt(key), wall=WALL + 10)
    await alice.handle(Refresh(token=same_key, req=2), NOW + 10, WALL + 10)
    assert wire.frames[-1] == {"type": "ok", "req": 2}
    await alice.handle(Refresh(token=token("alice", wall=WALL + 11), req=3), NOW + 11, WALL + 11)
    assert wire.frames[-1]["code"] == "unauthorized"  # a bearer token cannot drop the binding
    new_key = token("alice", bind=jkt(other), wall=WALL + 12)
    await alice.handle(Refresh(token=new_key, req=4), NOW + 12, WALL + 12)
    assert wire.frames[-1]["code"] == "unauthorized"  # another key without its proof
    proof = proof_for(state, other, new_key)
    await alice.handle(Refresh(token=new_key, proof=proof, req=5), NOW + 13, WALL + 13)
    assert wire.frames[-1] == {"type": "ok", "req": 5}
    assert alice.binding is not None and alice.binding.jkt == jkt(other)
    # The second refusal from this address is summed up at the window's end (auth/auditrate.py).
    assert refusal_details(state, "refresh_refused") == ["binding_dropped"]
