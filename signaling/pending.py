"""Sockets not yet admitted: upgraded to a WebSocket, no join or resume accepted yet.

Anyone can open them without a token, so they are counted per client address and in all, and an
upgrade beyond either cap is refused before any WebSocket state exists. A slot is released once
its session is admitted or the socket ends, whichever comes first.
"""

from __future__ import annotations

from collections import Counter

# Refusal reasons, as /metrics labels them (keyroom_connections_refused_total{reason}).
PER_IP = "per_ip"
TOTAL = "total"


class PendingFull(Exception):
    """No slot for this address: `reason` is PER_IP or TOTAL."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PendingSlot:
    """One pending socket's place; `release` is idempotent."""

    def __init__(self, table: PendingConnections, address: str) -> None:
        self._table: PendingConnections | None = table
        self._address = address

    def release(self) -> None:
        if self._table is not None:
            self._table._release(self._address)
            self._table = None


class PendingConnections:
    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._by_address: Counter[str] = Counter()
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def admit(self, address: str) -> PendingSlot:
        """A slot for one more pending socket from `address`; raises PendingFull."""
        if self._by_address[address] >= self.max_per_address:
            raise PendingFull(PER_IP)
        if self._total >= self.max_total:
            raise PendingFull(TOTAL)
        self._by_address[address] += 1
        self._total += 1
        return PendingSlot(self, address)

    def _release(self, address: str) -> None:
        self._total -= 1
        self._by_address[address] -= 1
        if self._by_address[address] == 0:
            del self._by_address[address]  # the table holds only addresses with sockets open
