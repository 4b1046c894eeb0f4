"""Access control that holds across nodes, behind the single-process interfaces.

`ClusterAuthStore` is the node's SQLite store (auth/store.py) that also tells the cluster what
it decides: a revocation is written to Redis and announced on the bus, a spent single-use token
id is written to Redis. Admission keeps asking the local store synchronously: the cluster keeps
it a replica (the bus, a look-up before each join, a full copy after a reconnect).

`ClusterBrake` is the brute-force brake (auth/brake.py) with the failures counted in Redis too:
each failure's count comes back with the cluster-wide total for that address, so an address
spreading its guesses over nodes is braked once the cluster has seen `max_failures` of them.
"""

from __future__ import annotations

from typing import Protocol

from auth.brake import FailureBrake
from auth.store import AuthStore


class Replica(Protocol):
    """Where the shared decisions go (signaling/cluster/node.py)."""

    def revoked(self, room: str, identity: str, revoked_at: float, expires_at: float) -> None: ...

    def jti_used(self, jti: str, expires_at: float) -> None: ...

    def failed(self, key: str, now: float) -> None: ...


class ClusterAuthStore(AuthStore):
    replica: Replica | None = None

    def revoke(self, room: str, identity: str, *, now: float, keep_for: float) -> None:
        super().revoke(room, identity, now=now, keep_for=keep_for)
        if self.replica is not None:
            self.replica.revoked(room, identity, now, now + keep_for)

    def copy_revocation(
        self, room: str, identity: str, revoked_at: float, expires_at: float
    ) -> None:
        """A revocation another node made: kept here, not announced again."""
        if not self.is_revoked(room, identity, revoked_at, revoked_at):
            super().revoke(room, identity, now=revoked_at, keep_for=expires_at - revoked_at)

    def use_jti(self, jti: str, *, expires_at: float, now: float) -> bool:
        spent = super().use_jti(jti, expires_at=expires_at, now=now)
        if spent and self.replica is not None:
            self.replica.jti_used(jti, expires_at)
        return spent

    def copy_jti(self, jti: str, expires_at: float, now: float) -> None:
        """A token id another node spent."""
        super().use_jti(jti, expires_at=expires_at, now=now)


class ClusterBrake(FailureBrake):
    replica: Replica | None = None

    def __init__(self, max_failures: int = 10, window: float = 60.0) -> None:
        super().__init__(max_failures, window)
        # key -> (cluster-wide failures, until when that count holds)
        self._cluster: dict[str, tuple[int, float]] = {}

    def blocked(self, key: str, now: float) -> bool:
        if super().blocked(key, now):
            return True
        count, until = self._cluster.get(key, (0, 0.0))
        if until <= now:
            self._cluster.pop(key, None)
            return False
        return count >= self.max_failures

    def failure(self, key: str, now: float) -> None:
        super().failure(key, now)
        if self.replica is not None:
            self.replica.failed(key, now)

    def cluster_count(self, key: str, count: int, until: float) -> None:
        """What Redis answered for `key`: its failures in the cluster until `until`."""
        if len(self._cluster) >= self.max_keys and key not in self._cluster:
            del self._cluster[next(iter(self._cluster))]
        self._cluster[key] = (count, until)
