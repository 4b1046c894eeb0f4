"""Revocations, spent single-use token ids and the admins' decisions about an identity (live
permission downgrades, mutes), persisted across restarts (SQLite, embedded).

Every call is synchronous and short: on the event loop a check-and-insert cannot interleave with
another join, which is what makes single-use tokens race-safe under concurrent joins.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ALL_ROOMS = "*"  # a revocation of an identity in every room


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
            CREATE TABLE IF NOT EXISTS narrowed_grants (
                room TEXT NOT NULL, identity TEXT NOT NULL,
                decided_at REAL NOT NULL, expires_at REAL NOT NULL, permissions TEXT NOT NULL,
                PRIMARY KEY (room, identity));
            CREATE TABLE IF NOT EXISTS admin_mutes (
                room TEXT NOT NULL, identity TEXT NOT NULL, source TEXT NOT NULL,
                decided_at REAL NOT NULL, expires_at REAL NOT NULL,
                PRIMARY KEY (room, identity, source));
            CREATE TABLE IF NOT EXISTS revoked_keys (
                key_id TEXT PRIMARY KEY, revoked_at REAL NOT NULL);
            """
        )
        # Asked on every admission: kept in memory, written through.
        self._revoked_keys = {
            row[0] for row in self._db.execute("SELECT key_id FROM revoked_keys").fetchall()
        }

    def revoke(self, room: str, identity: str, *, now: float, keep_for: float) -> None:
        """Refuse `identity`'s tokens for `room` issued before `now`, for `keep_for` seconds
        (the longest a token can live: after that every such token has expired anyway)."""
        self._db.execute(
            "INSERT INTO revocations VALUES (?, ?, ?, ?) ON CONFLICT (room, identity) DO UPDATE"
            " SET revoked_at = excluded.revoked_at, expires_at = excluded.expires_at",
            (room, identity, now, now + keep_for),
        )

    def is_revoked(self, room: str, identity: str, issued_at: float | None, now: float) -> bool:
        """Whether `identity`'s token for `room` issued at `issued_at` is revoked, for that room
        or for every room (`ALL_ROOMS`, which no room name can be: wildcards are refused)."""
        row = self._db.execute(
            "SELECT MAX(revoked_at) FROM revocations WHERE room IN (?, ?) AND identity = ?"
            " AND expires_at > ?",
            (room, ALL_ROOMS, identity, now),
        ).fetchone()
        row = None if row is None or row[0] is None else row
        # A token without iat/nbf cannot prove it is newer than the revocation.
        return row is not None and (issued_at is None or issued_at <= row[0])

    def revoke_key(self, key_id: str, *, now: float) -> bool:
        """Refuse every token signed with `key_id` from now on, for good (a compromised key is
        not trusted again: rotate to a new key id). False if it was revoked already."""
        if key_id in self._revoked_keys:
            return False
        self._db.execute("INSERT OR IGNORE INTO revoked_keys VALUES (?, ?)", (key_id, now))
        self._revoked_keys.add(key_id)
        return True

    def key_revoked(self, key_id: str) -> bool:
        return key_id in self._revoked_keys

    def revocations(self, now: float) -> list[tuple[str, str, float, float]]:
        """Every revocation in force: (room, identity, revoked_at, expires_at)."""
        return [
            (str(r), str(i), float(at), float(until))
            for r, i, at, until in self._db.execute(
                "SELECT room, identity, revoked_at, expires_at FROM revocations"
                " WHERE expires_at > ?",
                (now,),
            )
        ]

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

    # -- decisions: an admin's live changes stick for the tokens issued before them -----------
    # Kept `keep_for` seconds (the longest a token can live), like revocations. A token issued
    # after a decision is the application's new decision: admitting it forgets the older ones.

    def narrow(
        self, room: str, identity: str, permissions: Mapping[str, Any], *, now: float,
        keep_for: float,
    ) -> None:  # fmt: skip
        """Remember the live permissions an admin left `identity` with (auth.policy)."""
        self._db.execute("DELETE FROM narrowed_grants WHERE expires_at <= ?", (now,))
        self._db.execute(
            "INSERT INTO narrowed_grants VALUES (?, ?, ?, ?, ?) ON CONFLICT (room, identity)"
            " DO UPDATE SET decided_at = excluded.decided_at, expires_at = excluded.expires_at,"
            " permissions = excluded.permissions",
            (room, identity, now, now + keep_for, json.dumps(dict(permissions))),
        )

    def narrowing(self, room: str, identity: str) -> dict[str, Any] | None:
        """The live permissions an admin left `identity` with, if a decision is in force."""
        row = self._db.execute(
            "SELECT permissions FROM narrowed_grants WHERE room = ? AND identity = ?",
            (room, identity),
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def admin_mute(
        self, room: str, identity: str, source: str, muted: bool, *, now: float, keep_for: float
    ) -> None:
        """An admin muted (or unmuted) `identity`'s track of `source`."""
        self._db.execute("DELETE FROM admin_mutes WHERE expires_at <= ?", (now,))
        if not muted:
            self._db.execute(
                "DELETE FROM admin_mutes WHERE room = ? AND identity = ? AND source = ?",
                (room, identity, source),
            )
            return
        self._db.execute(
            "INSERT INTO admin_mutes VALUES (?, ?, ?, ?, ?) ON CONFLICT (room, identity, source)"
            " DO UPDATE SET decided_at = excluded.decided_at, expires_at = excluded.expires_at",
            (room, identity, source, now, now + keep_for),
        )

    def admin_muted(self, room: str, identity: str, source: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM admin_mutes WHERE room = ? AND identity = ? AND source = ?",
            (room, identity, source),
        ).fetchone()
        return row is not None

    def forget_decisions(
        self, room: str, identity: str, issued_at: float | None, now: float
    ) -> None:
        """A token of `identity` issued at `issued_at` is admitted: decisions taken before it
        was issued are superseded by it, and expired ones are gone. A token without iat/nbf
        cannot prove it is newer than any decision."""
        newer = -1.0 if issued_at is None else issued_at
        for table in ("narrowed_grants", "admin_mutes"):
            self._db.execute(
                f"DELETE FROM {table} WHERE room = ? AND identity = ?"  # noqa: S608
                " AND (decided_at < ? OR expires_at <= ?)",
                (room, identity, newer, now),
            )

    def close(self) -> None:
        self._db.close()
