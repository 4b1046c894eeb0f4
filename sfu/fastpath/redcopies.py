"""The compiled loop of a RED audio stream (sfu/redtrack.py): the publisher's RED packets, as
they came, to the subscribers that negotiated RED.

A `Copies` like a track's (sfu/fastpath/steady.py), with RED's one difference: the block
headers name the subscriber's Opus payload type where it differs from the publisher's (aiortc
offers Opus as 96, Chromium sends it as 111), which `kr_fanout` renames per copy (`kr_red`,
sfu/fastpath/_payload_source.py). Down-tracks not steady take RedFanout's Python path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from sfu.fastpath.steady import Copies, Steady

if TYPE_CHECKING:
    from sfu.fastpath.batch import FanoutBatch
    from sfu.fastpath.state import SteadyDownTrack
    from sfu.rtp import RtpInfo


class RedStream(Protocol):
    """What of sfu/redtrack.RedFanout this calls (a Protocol: no import cycle)."""

    def send(self, down: Any, data: bytes, info: RtpInfo) -> bool: ...

    def payload_types(self, down: Any) -> tuple[int, int, int]: ...


class RedCopies(Copies):
    """The steady RED subscribers of one track, as a C array forwarded in one call."""

    __slots__ = ("_red",)

    def __init__(self, batch: FanoutBatch, red: RedStream) -> None:
        super().__init__(batch, video=False)
        self._red = red

    def forward(self, data: bytes, info: RtpInfo, downs: Any, version: int) -> int:
        stats = self.batch._stats
        before = stats.fanout_compiled_copies
        sent = super().forward(data, info, downs, version)
        stats.fanout_compiled_red_copies += stats.fanout_compiled_copies - before
        return sent

    def _each(self, down: Any, data: bytes, info: RtpInfo) -> bool:
        return self._red.send(down, data, info)

    def attach(self, down: SteadyDownTrack, found: Steady) -> None:
        super().attach(down, found)
        if down._copies is self:
            copy = self._array[len(self.members) - 1]
            copy.red_pt, copy.red_from, copy.red_to = self._red.payload_types(down)

    def close(self) -> None:
        """Every member back to the Python path (the publisher's payload types changed)."""
        for down in list(self.members):
            self.detach(down)
