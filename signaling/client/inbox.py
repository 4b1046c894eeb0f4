"""Items in arrival order, taken by whoever waits for one that matches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """Items in arrival order; a get() takes the first item that matches, waiting for one."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._changed = asyncio.Event()
        self._closed: BaseException | None = None

    def put(self, item: T) -> None:
        self._items.append(item)
        self._wake()

    def close(self, exc: BaseException) -> None:
        self._closed = exc
        self._wake()

    def _wake(self) -> None:
        # A fresh Event per change: every waiter wakes, rescans, and waits on the next one.
        self._changed.set()
        self._changed = asyncio.Event()

    async def get(self, match: Callable[[T], bool], timeout: float, what: str) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for n, item in enumerate(self._items):
                if match(item):
                    return self._items.pop(n)
            if self._closed is not None:
                raise self._closed
            changed = self._changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no {what} within {timeout} s")
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                raise TimeoutError(f"no {what} within {timeout} s") from None
