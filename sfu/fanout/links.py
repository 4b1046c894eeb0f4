"""What the forwarder calls on the fan-out workers' side (sfu/fanout/pool.py implements it)."""

from __future__ import annotations

from typing import Protocol


class Feed(Protocol):
    """A track's packets to fan-out workers (`TrackFeed`)."""

    def __call__(self, data: bytes) -> None: ...
    def sender_report(self, ntp: int, rtp_timestamp: int) -> None: ...
    def restart(self) -> None: ...


class Remote(Protocol):
    """A down-track a fan-out worker sends (`RemoteDown`)."""

    def retransmit(self, sequence_numbers: tuple[int, ...]) -> tuple[int, int]: ...
    def pause(self, paused: bool, waiting: bool) -> None: ...
