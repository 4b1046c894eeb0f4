"""Revocations and spent single-use token ids, persisted across restarts (SQLite, embedded).

Every call is synchronous and short: on the event loop a check-and-insert cannot interleave with
another join, which is what makes single-use tokens race-safe under concurrent joins.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class AuthStore:
    def __init__(self, path: str | None) -> None:
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path or ":memory:", isolation_level=None)
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS revocations (
                room TEXT NOT NULL, identity TEXT NOT NULL,
                revoked_at REAL NOT NULL, expires_at REAL NOT NULL,
                PRIMARY KEY (room, identity));
            CREATE TABLE IF NOT EXISTS used_jtis (
                jti TEXT PRIMARY KEY, expires_at REAL NOT NULL);
            """
        )

    def revoke(self, room: str, identity: str, *, now: float, keep_for: float) -> None:
        """Refuse `identity`'s tokens for `room` issued before `now`, for `keep_for` seconds
        (the longest a token can live: after that every such token has expired anyway)."""
        self._db.execute(
            "INSERT INTO revocations VALUES (?, ?, ?, ?) ON CONFLICT (room, identity) DO UPDATE"
            " SET revoked_at = excluded.revoked_at, expires_at = excluded.expires_at",
            (room, identity, now, now + keep_for),
        )

    def is_revoked(self, room: str, identity: str, issued_at: float | None, now: float) -> bool:
        row = self._db.execute(
            "SELECT revoked_at FROM revocations WHERE room = ? AND identity = ? AND expires_at > ?",
            (room, identity, now),
        ).fetchone()
        # A token without iat/nbf cannot prove it is newer than the revocation.
        return row is not None and (issued_at is None or issued_at <= row[0])

    def jti_spent(self, jti: str, now: float) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM used_jtis WHERE jti = ? AND expires_at > ?", (jti, now)
        ).fetchone()
        return row is not None

    def use_jti(self, jti: str, *, expires_at: float, now: float) -> bool:
        """Spend a token id; False if it was spent before."""
        self._db.execute("DELETE FROM used_jtis WHERE expires_at <= ?", (now,))
        try:
            self._db.execute("INSERT INTO used_jtis VALUES (?, ?)", (jti, expires_at))
        except sqlite3.IntegrityError:
            return False
        return True

    def close(self) -> None:
        self._db.close()
