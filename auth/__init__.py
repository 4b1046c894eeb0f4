"""Access control: token verification, grants and the policy that checks them (sans-I/O)."""

from auth.grants import SOURCE_KIND, SOURCES, VideoGrant
from auth.keys import KeyTable
from auth.policy import Decision
from auth.tokens import Claims, TokenError, TokenVerifier, mint_token

__all__ = [
    "SOURCES",
    "SOURCE_KIND",
    "Claims",
    "Decision",
    "KeyTable",
    "TokenError",
    "TokenVerifier",
    "VideoGrant",
    "mint_token",
]
