"""A list that counts its changes, so readers holding a derived view know when to rebuild it."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class VersionedList(list[T]):
    """`version` moves with every append, remove or clear, and with `changed()` for changes of
    the elements' own state that a derived view depends on (a track's down-tracks: who is in
    it, or what layer one aims at, so a simulcast layer knows when to re-read its subscribers)."""

    version = 0

    def changed(self) -> None:
        self.version += 1

    def append(self, item: T) -> None:
        self.version += 1
        super().append(item)

    def remove(self, item: T) -> None:
        self.version += 1
        super().remove(item)

    def clear(self) -> None:
        self.version += 1
        super().clear()
