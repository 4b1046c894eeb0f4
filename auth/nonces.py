"""Proof-of-possession nonces (RFC 9449 section 8 style): fresh, short-lived, single use.

Sans-I/O: `now` is passed in. The store is bounded: when it is full the oldest outstanding nonce
is dropped (its client asks for another), so a flood of nonce requests costs bounded memory.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict

NONCE_BYTES = 18  # 24 base64url characters


class NonceStore:
    def __init__(self, ttl: float, max_outstanding: int) -> None:
        if ttl <= 0 or max_outstanding <= 0:
            raise ValueError("ttl and max_outstanding must be positive")
        self.ttl = ttl
        self.max_outstanding = max_outstanding
        # nonce -> expiry, oldest first (issued in time order, so expiries are ordered too)
        self._nonces: OrderedDict[str, float] = OrderedDict()

    def issue(self, now: float) -> str:
        """A fresh nonce, valid until `now + ttl`, for one proof."""
        self._expire(now)
        while len(self._nonces) >= self.max_outstanding:
            self._nonces.popitem(last=False)
        nonce = secrets.token_urlsafe(NONCE_BYTES)
        self._nonces[nonce] = now + self.ttl
        return nonce

    def spend(self, nonce: str, now: float) -> bool:
        """True once for a nonce issued here and not yet expired; False ever after."""
        expires = self._nonces.pop(nonce, None)
        return expires is not None and expires > now

    def __len__(self) -> int:
        return len(self._nonces)

    def _expire(self, now: float) -> None:
        while self._nonces:
            nonce, expires = next(iter(self._nonces.items()))
            if expires > now:
                return
            del self._nonces[nonce]
