"""Brute-force brake: counts refusals per client address; callers ask it only for attempts that
already failed, so a braked address's valid tokens still get through (signaling/admission.py).

Time is passed in; a key is blocked while it has `max_failures` refusals in the last `window`
seconds.
"""

from __future__ import annotations

from collections import deque


class FailureBrake:
    def __init__(
        self, max_failures: int = 10, window: float = 60.0, max_keys: int = 100_000
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, key: str, now: float) -> bool:
        failures = self._failures.get(key)
        if failures is None:
            return False
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return False
        return len(failures) >= self.max_failures

    def failure(self, key: str, now: float) -> None:
        if key not in self._failures and len(self._failures) >= self.max_keys:
            # Bounded memory under a spray of keys: forget the oldest-touched key.
            del self._failures[next(iter(self._failures))]
        failures = self._failures.setdefault(key, deque(maxlen=self.max_failures))
        failures.append(now)
