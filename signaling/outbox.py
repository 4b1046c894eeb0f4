"""Frames waiting for a client's socket, bounded in frames and bytes.

A client that stops reading makes the server hold every frame meant for it: its own replies and
every room event (on a busy room, tens per second, and 64 KiB offers). Unbounded, one such client
grew the server by hundreds of MiB in seconds. Past either bound the outbox refuses, forgets
what it held, and the owner ends the session (`too_slow`). Pure: no socket, no loop.
"""

from __future__ import annotations

from collections import deque

MAX_FRAMES = 1000
MAX_BYTES = 2 * 1024 * 1024


class Outbox:
    def __init__(self, max_frames: int = MAX_FRAMES, max_bytes: int = MAX_BYTES) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.bytes = 0
        self.overflowed = False
        # Text frames (keyroom's JSON) or binary ones (LiveKit's protobuf).
        self._frames: deque[str | bytes] = deque()

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, text: str | bytes) -> bool:
        """Queue `text`; False (and everything dropped) when it does not fit."""
        if self.overflowed:
            return False
        if len(self._frames) >= self.max_frames or self.bytes + len(text) > self.max_bytes:
            self.overflowed = True
            self._frames.clear()
            self.bytes = 0
            return False
        self._frames.append(text)
        self.bytes += len(text)
        return True

    def pop(self) -> str | bytes | None:
        if not self._frames:
            return None
        text = self._frames.popleft()
        self.bytes -= len(text)
        return text
