"""Access tokens (PROTOCOL section 1): verification, minting, and the CLI's parsing helpers.

Sans-I/O: the current time is always passed in. A refusal raises TokenError whose `reason` is
for logs and the audit trail only; the client is told `unauthorized`, nothing more. Reasons and
messages are built from fixed strings and field names, never from the token or a key.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jwt

from auth import displaytext
from auth.grants import (
    BOOL_CLAIMS,
    CLIENTS_CLAIM,
    SOURCES_CLAIM,
    VideoGrant,
    apply_role,
    check_clients,
    check_room_name,
    check_sources,
)
from auth.keybinding import is_thumbprint
from auth.keys import HS256, KeyTable, PrivateKey, private_key_algorithm

MAX_LEEWAY = 60.0
MAX_IDENTITY_CHARS = 128
MAX_ROLE_CHARS = 128
MAX_JTI_CHARS = 256

# pyjwt checks the signature and the algorithm; the claims are checked here, against the `now`
# passed in, so that every refusal has one precise reason.
_DECODE_OPTIONS: Any = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}


class TokenError(Exception):
    """A refused token. `reason` is precise (for logs); it never holds the token or a secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    """A verified token. `identity` and `room` may be None for admin-only tokens."""

    identity: str | None
    name: str
    metadata: str
    room: str | None
    grant: VideoGrant
    key_id: str
    jti: str | None
    iat: float | None
    nbf: float | None
    exp: float
    role: str | None
    # `cnf.jkt`: the thumbprint of the client key this token is bound to (auth/keybinding.py).
    jkt: str | None = None
    raw_claims: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )

    @property
    def issued_at(self) -> float | None:
        """When the token was issued (`iat`, else `nbf`): what a revocation compares against."""
        return self.iat if self.iat is not None else self.nbf


def _bad(message: str) -> TokenError:
    return TokenError(f"bad_claims: {message}")


def _optional_str(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"{name} must be a string")
    try:
        value.encode()  # JSON allows lone surrogates ("\ud800"); nothing downstream can send them
    except UnicodeEncodeError:
        raise _bad(f"{name} must be valid Unicode") from None
    return value


def _optional_time(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int subclass; NaN would pass every time comparison, so only finite numbers.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{name} must be a finite number")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond float range
        raise _bad(f"{name} must be a finite number") from None
    if not math.isfinite(seconds):
        raise _bad(f"{name} must be a finite number")
    return seconds


def _confirmation(claims: Mapping[str, Any]) -> str | None:
    """The bound key's thumbprint (`cnf.jkt`), if the token is bound."""
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    if not isinstance(cnf, Mapping) or not is_thumbprint(cnf.get("jkt")):
        raise _bad("cnf must be an object with jkt, a SHA-256 JWK thumbprint")
    jkt: str = cnf["jkt"]
    return jkt


def _check_identity(identity: object) -> str:
    if not isinstance(identity, str):
        raise ValueError("identity must be a string")
    if not 0 < len(identity) <= MAX_IDENTITY_CHARS or not identity.isprintable():
        raise ValueError(f"identity must be 1..{MAX_IDENTITY_CHARS} printable characters")
    return identity


def _check_role(role: object) -> str:
    if not isinstance(role, str) or not 0 < len(role) <= MAX_ROLE_CHARS or not role.isprintable():
        raise ValueError(f"role must be 1..{MAX_ROLE_CHARS} printable characters")
    return role


# livekit-api reads the clock twice when it mints (nbf, then exp): across a second boundary its
# default 6 h token spans 6 h and 1 s. A second of slack on `max_ttl` admits it.
TTL_SLACK = 1.0


class TokenVerifier:
    """Verifies tokens against a KeyTable; limits default to PROTOCOL section 1."""

    def __init__(
        self,
        keys: KeyTable,
        *,
        max_ttl: float = 6 * 3600,
        leeway: float = 60,
        max_token_bytes: int = 8192,
        max_name_bytes: int = 256,
        max_metadata_bytes: int = 4096,
        roles: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be 0..{MAX_LEEWAY:g} seconds")
        if not max_ttl > 0:
            raise ValueError("max_ttl must be positive")
        if min(max_token_bytes, max_name_bytes, max_metadata_bytes) <= 0:
            raise ValueError("size limits must be positive")
        self.keys = keys
        self.max_ttl = float(max_ttl)
        self.leeway = float(leeway)
        self.max_token_bytes = max_token_bytes
        self.max_name_bytes = max_name_bytes
        self.max_metadata_bytes = max_metadata_bytes
        # Server-side roles ([roles.NAME]) a token may name; each is checked here, at start-up.
        self.roles = dict(roles or {})
        for role_name, role_grant in self.roles.items():
            try:
                VideoGrant.from_claim(role_grant)
            except ValueError as e:
                raise ValueError(f"roles.{role_name}: {e}") from None

    def verify(self, token: str, now: float) -> Claims:
        """Verify signature, algorithm, times and claim shapes; raise TokenError if refused."""
        if not isinstance(token, str):
            raise TokenError("malformed")
        if len(token) > self.max_token_bytes:
            raise TokenError("too_large")
        # A compact JWS is ASCII; checking here also keeps odd strings away from pyjwt's encode().
        if not token.isascii():
            raise TokenError("malformed")
        key_id, claims = self._decode(token)
        return self._claims(key_id, claims, now)

    def verify_join(self, token: str, now: float) -> Claims:
        """`verify`, plus what joining needs: an identity, `video.roomJoin` and `video.room`."""
        claims = self.verify(token, now)
        if claims.identity is None:
            raise TokenError("no_identity")
        if not claims.grant.room_join:
            raise TokenError("no_room_join")
        if claims.room is None:
            raise TokenError("no_room")
        return claims

    def _decode(self, token: str) -> tuple[str, dict[str, Any]]:
        """Return the key id and the claims of a token whose signature is valid."""
        try:
            header = jwt.get_unverified_header(token)
            # Unverified, only to find the key by `iss` when there is no `kid` (LiveKit SDKs).
            key_id = (
                header["kid"]
                if "kid" in header
                else jwt.decode(token, options={"verify_signature": False}).get("iss")
            )
        except jwt.PyJWTError:
            raise TokenError("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise TokenError("alg_not_allowed")
        if not isinstance(key_id, str):
            raise TokenError("unknown_key")
        key = self.keys.get(key_id)
        if key is None:
            raise TokenError("unknown_key")
        if alg != key.algorithm:
            raise TokenError("alg_not_allowed")
        try:
            # pyjwt checks the header alg and the signature against this key's one algorithm.
            claims: dict[str, Any] = jwt.decode(
                token, key.material, algorithms=[key.algorithm], options=_DECODE_OPTIONS
            )
        except jwt.InvalidSignatureError:
            raise TokenError("signature") from None
        except jwt.PyJWTError:
            raise TokenError("malformed") from None
        return key_id, claims

    def _times(
        self, claims: dict[str, Any], now: float
    ) -> tuple[float, float | None, float | None]:
        """(exp, nbf, iat), once the token is valid at `now` and does not live too long."""
        exp = _optional_time(claims, "exp")
        if exp is None:
            raise TokenError("missing_exp")
        nbf = _optional_time(claims, "nbf")
        iat = _optional_time(claims, "iat")
        if exp + self.leeway < now:
            raise TokenError("expired")
        if nbf is not None and nbf - self.leeway > now:
            raise TokenError("not_yet_valid")
        # A token "issued in the future" could outlive a revocation keyed on its iat.
        if iat is not None and iat - self.leeway > now:
            raise TokenError("iat_in_future")
        start = nbf if nbf is not None else iat if iat is not None else now
        if exp - start > self.max_ttl + TTL_SLACK:
            raise TokenError("ttl_too_long")
        return exp, nbf, iat

    def _claims(self, key_id: str, claims: dict[str, Any], now: float) -> Claims:
        exp, nbf, iat = self._times(claims, now)
        sub = _optional_str(claims, "sub")
        # Minted by the application, typed by its users, who cannot fix a token: the characters
        # that rewrite terminals and reorder text are removed rather than refused.
        name = displaytext.cleaned(_optional_str(claims, "name") or "")
        metadata = displaytext.cleaned(_optional_str(claims, "metadata") or "", metadata=True)
        role = _optional_str(claims, "role")
        jti = _optional_str(claims, "jti")
        if len(name.encode()) > self.max_name_bytes:
            raise TokenError("name_too_large")
        if len(metadata.encode()) > self.max_metadata_bytes:
            raise TokenError("metadata_too_large")
        if "aud" in claims:
            raise _bad("aud: tokens for another audience are refused")
        jkt = _confirmation(claims)
        if jti is not None and not 0 < len(jti) <= MAX_JTI_CHARS:
            raise _bad(f"jti must be 1..{MAX_JTI_CHARS} characters")
        try:
            # LiveKit SDKs put `sub: ""` in tokens minted without an identity.
            identity = _check_identity(sub) if sub else None
            if role is not None:
                _check_role(role)
            video = claims.get("video", {})
            if role is None:
                grant = VideoGrant.from_claim(video)
            elif role in self.roles and isinstance(video, Mapping):
                grant = apply_role(self.roles[role], video)
            else:
                raise TokenError("unknown_role")
        except ValueError as e:
            raise _bad(str(e)) from None
        return Claims(
            identity=identity,
            name=name,
            metadata=metadata,
            room=grant.room,
            grant=grant,
            key_id=key_id,
            jti=jti,
            iat=iat,
            nbf=nbf,
            exp=exp,
            role=role,
            jkt=jkt,
            raw_claims=MappingProxyType(claims),
        )


def mint_token(
    *,
    key_id: str,
    secret: str | PrivateKey,
    identity: str | None,
    room: str | None,
    ttl: float,
    now: float,
    name: str = "",
    metadata: str = "",
    role: str | None = None,
    grants: dict[str, Any] | None = None,
    jti: str | None = None,
    bind: str | None = None,
) -> str:
    """Mint a token (header kid and claim iss = key_id) valid from `now` for `ttl` s: HS256 with
    a secret string, ES256 or EdDSA with a private key (auth.keys.load_private_key).

    `grants` overrides `video` fields by their camelCase names (see parse_grant_overrides).
    Without `jti` a random one is set, so minted tokens also work where single use is demanded;
    `bind` (a JWK thumbprint) binds the token to that key. ValueError names what is invalid.
    """
    if not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0:
        raise ValueError("ttl must be a positive number of seconds")
    if identity is not None:
        _check_identity(identity)
    if role is not None:
        _check_role(role)
    video: dict[str, Any] = {"roomJoin": True}
    if room is not None:
        video["room"] = check_room_name(room)
    video.update(grants or {})
    VideoGrant.from_claim(video)  # refuse what the verifier would refuse
    claims: dict[str, Any] = {
        "iss": key_id,
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now + ttl),
        "jti": jti if jti is not None else secrets.token_urlsafe(16),
        "name": name,
        "metadata": metadata,
        "video": video,
    }
    if identity is not None:
        claims["sub"] = identity
    if role is not None:
        claims["role"] = role
    claims.update(_cnf(bind) if bind is not None else {})
    algorithm = HS256 if isinstance(secret, str) else private_key_algorithm(secret)
    return jwt.encode(claims, secret, algorithm=algorithm, headers={"kid": key_id})


def _cnf(jkt: str) -> dict[str, dict[str, str]]:
    if not is_thumbprint(jkt):
        raise ValueError("bind must be a SHA-256 JWK thumbprint")
    return {"cnf": {"jkt": jkt}}


def parse_grant_overrides(items: list[str]) -> dict[str, Any]:
    """Turn CLI items like `canPublish=false` or `canPublishSources=camera,microphone` into
    camelCase `video` fields. Raise ValueError on unknown names or bad values."""
    grants: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        value = value.strip()
        if not sep:
            raise ValueError(f"grant {name!r}: expected NAME=VALUE")
        if name in grants:
            raise ValueError(f"grant {name!r} is given twice")
        if name == SOURCES_CLAIM:
            grants[name] = list(check_sources([s.strip() for s in value.split(",") if s.strip()]))
        elif name == CLIENTS_CLAIM:
            grants[name] = list(check_clients([c.strip() for c in value.split(",") if c.strip()]))
        elif name in BOOL_CLAIMS:
            if value.lower() not in ("true", "false"):
                raise ValueError(f"grant {name!r}: expected true or false")
            grants[name] = value.lower() == "true"
        else:
            known = ", ".join([*BOOL_CLAIMS, SOURCES_CLAIM, CLIENTS_CLAIM])
            raise ValueError(f"unknown grant {name!r}; known grants: {known}")
    return grants


_TTL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    """`90s`, `10m`, `1h`, `1d` or plain seconds (`3600`) -> seconds; must be positive."""
    match = _TTL.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"ttl {text!r}: expected seconds or a number with s, m, h or d")
    seconds = float(match[1]) * _TTL_UNITS[match[2]]
    if seconds <= 0:
        raise ValueError("ttl must be positive")
    return seconds
