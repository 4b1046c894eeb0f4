"""A sink that keeps what the forwarding core sends, for tests without sockets."""

from __future__ import annotations


class ListSink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.sent.append(data)
        return True
