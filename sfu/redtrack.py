"""A published audio track whose publisher sends RED (sfu/red.py): one unwrap per input packet,
two kinds of subscribers.

The track itself, its down-tracks, recordings and audio levels see plain Opus (the primary
block, same sequence number and timestamp: no gap); subscribers that negotiated RED get the
packet as it came, their payload types in its block headers. Packets the publisher sends as
plain Opus go to both. The ingress hands a RED track's SSRC to this object instead of the
track (sfu/ingress.py); subscribers attach to it when their answer accepted RED
(sfu/subscribing.py).
"""

from __future__ import annotations

from typing import Any, Protocol

from sfu.red import RedPayload, read_red, retarget, unwrap
from sfu.rtp import RtpInfo, parse_rtp
from sfu.stats import DropReason, Stats


class _Track(Protocol):
    """What of sfu/forwarder.PublishedTrack this reads (a Protocol: no import cycle)."""

    codec: Any
    muted: bool

    def forward(self, data: bytes, info: RtpInfo) -> int: ...

    def request_keyframe(self) -> None: ...


class RedFanout:
    """The forwarding of a track negotiated with RED (`track.codec.red_payload_type`)."""

    def __init__(self, track: _Track, stats: Stats) -> None:
        self.track = track
        self.stats = stats  # the publisher's: RED received, malformed RED dropped
        # RED subscribers' down-tracks (sfu/forwarder.DownTrack) and the subscriber's Opus
        # payload type, which their block headers name instead of the publisher's.
        self.downs: list[tuple[Any, int]] = []

    def attach(self, down: Any, opus_pt: int) -> None:
        self.detach(down)
        self.downs.append((down, opus_pt))

    def detach(self, down: Any) -> None:
        self.downs = [entry for entry in self.downs if entry[0] is not down]

    def request_keyframe(self) -> None:
        self.track.request_keyframe()

    def forward(self, data: bytes, info: RtpInfo) -> int:
        """Forward one packet of the track's SSRC; the number of copies sent."""
        track = self.track
        codec = track.codec
        if codec is None or info.payload_type != codec.red_payload_type:
            return track.forward(data, info) + self._send_red(data, info, None)
        red = read_red(data, info.payload_start, info.payload_end)
        if red is None or red.primary_pt != codec.payload_type:
            self.stats.drop(DropReason.MALFORMED_RED)
            return 0
        self.stats.red_received += 1
        opus = unwrap(data, info, red)
        sent = track.forward(opus, parse_rtp(opus))
        if not self.downs or track.muted:
            return sent
        return sent + self._send_red(data, info, red)

    def _send_red(self, data: bytes, info: RtpInfo, red: RedPayload | None) -> int:
        track = self.track
        if track.muted or track.codec is None:
            return 0
        own_pt = track.codec.payload_type
        sent = 0
        patches: dict[int, bytes] = {}  # by the subscribers' Opus payload type: one each
        for down, opus_pt in self.downs:
            rewriter, sink = down.rewriter, down.sink
            if rewriter is None or sink is None:
                continue
            if red is None or opus_pt == own_pt:
                out = rewriter.rewrite(data, info)
            else:
                patch = patches.get(opus_pt)
                if patch is None:
                    patch = patches[opus_pt] = retarget(data, info, red, {own_pt: opus_pt})
                out = rewriter.rewrite(data, info, patch, red.blocks_start)
            if out is not None and sink.send(out):
                sent += 1
        return sent
