"""Server-minted refreshed tokens: what LiveKit's `SignalResponse.refresh_token` carries.

A LiveKit SDK keeps the last token the server gave it and uses it to reconnect (resume or a full
rejoin). keyroom mints one so that a reconnect still works when the application's token was
single use (its `jti` is spent) and carries the session's current rights after an admin changed
them. It never extends anything: the same `exp`, the same `iat`/`nbf` (a revocation or an admin
decision compares against when the application issued its token, so the refreshed token is
refused, and narrowed, exactly when the original would be), the same role and key binding, and a
grant no wider than the application's token (an admin's live upgrade lasts for its session only,
auth/policy.py). Each refreshed token has a fresh `jti`: in a room of single-use tokens it can be
spent once, like the application's.

It is signed with the key that signed the application's token, when that is an HS256 secret the
server holds (LiveKit's own server signs with the API secret): every node that admits the
original admits the refreshed token, and revoking that key (`keyroom key revoke`) refuses both.
keyroom holds only the public half of ES256/EdDSA keys and never mints under them: for such
tokens nothing is minted and the SDK keeps the application's token (docs/livekit.md).
"""

from __future__ import annotations

import secrets
from typing import Any

import jwt

from auth.grants import BOOL_CLAIMS, CLIENTS_CLAIM, SOURCES_CLAIM, VideoGrant
from auth.keys import HS256, KeyTable
from auth.policy import narrowed_grant
from auth.tokens import Claims


def video_claim(grant: VideoGrant) -> dict[str, Any]:
    """`grant` as the camelCase `video` claim it parses from (VideoGrant.from_claim)."""
    video: dict[str, Any] = {name: getattr(grant, field) for name, field in BOOL_CLAIMS.items()}
    if grant.room is not None:
        video["room"] = grant.room
    if grant.can_publish_sources is not None:
        video[SOURCES_CLAIM] = list(grant.can_publish_sources)
    if grant.clients is not None:
        video[CLIENTS_CLAIM] = list(grant.clients)
    return video


def refreshed_token(
    claims: Claims,
    current: VideoGrant,
    keys: KeyTable,
    now: float,
    *,
    name: str,
    metadata: str,
) -> str | None:
    """A token for the session admitted with `claims` whose rights are now `current`, with the
    participant's current `name` and `metadata`; None when the server cannot sign one (not an
    HS256 key it holds) or the token has no time left."""
    key = keys.get(claims.key_id)
    if key is None or key.algorithm != HS256 or not isinstance(key.material, bytes):
        return None
    if claims.identity is None or claims.room is None or now >= claims.exp:
        return None
    grant = narrowed_grant(claims.grant, current.to_permissions())
    payload: dict[str, Any] = {
        "iss": claims.key_id,
        "sub": claims.identity,
        "exp": claims.exp,
        "jti": secrets.token_urlsafe(16),
        "name": name,
        "metadata": metadata,
        "video": video_claim(grant),
    }
    for field in ("iat", "nbf", "role"):
        if getattr(claims, field) is not None:
            payload[field] = getattr(claims, field)
    if claims.jkt is not None:
        payload["cnf"] = {"jkt": claims.jkt}
    return jwt.encode(payload, key.material, algorithm=HS256, headers={"kid": claims.key_id})
