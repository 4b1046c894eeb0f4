"""A consumer of a published track's packets as received (a recording): no rewriting, no
keyframe wait. A simulcast track feeds its taps from its top layer."""

from __future__ import annotations

from typing import Protocol

from sfu.rtp import RtpInfo


class Tap(Protocol):
    def packet(self, data: bytes, info: RtpInfo) -> None: ...

    def sender_report(self, ntp: int, rtp_timestamp: int) -> None: ...
