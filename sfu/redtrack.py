"""A published audio track whose publisher sends RED (sfu/red.py): one unwrap per input packet,
two kinds of subscribers.

The track itself, its down-tracks, recordings and audio levels see plain Opus (the primary
block, same sequence number and timestamp: no gap); subscribers that negotiated RED get the
packet as it came, their payload types in its block headers. Packets the publisher sends as
plain Opus go to both. The ingress hands a RED track's SSRC to this object instead of the
track (sfu/ingress.py); subscribers attach to it when their answer accepted RED
(sfu/subscribing.py).

With the compiled fan-out, RED subscribers in their steady state are forwarded by their own
compiled loop (sfu/fastpath/redcopies.py), as a track's down-tracks are; the rest by `send`.

With fan-out workers (sfu/fanout/), the track's feed gets each packet as it came, here, and
the worker splits it with a RedFanout of its own; the RED subscribers a worker sends
(`down.remote`) are left out of this process's copies, as the track leaves out its own.
"""

from __future__ import annotations

from typing import Any, Protocol

from sfu.fastpath.redcopies import RedCopies
from sfu.fastpath.steady import REFRESH, adopt
from sfu.red import RedPayload, read_red, retarget, unwrap
from sfu.rtp import RtpInfo, parse_rtp
from sfu.stats import DropReason, Stats
from sfu.versionedlist import VersionedList


class _Track(Protocol):
    """What of sfu/forwarder.PublishedTrack this reads (a Protocol: no import cycle)."""

    codec: Any
    muted: bool
    feed: Any  # to fan-out workers (sfu/fanout/links.Feed), or None

    def forward(self, data: bytes, info: RtpInfo) -> int: ...

    def request_keyframe(self) -> None: ...


class RedFanout:
    """The forwarding of a track negotiated with RED (`track.codec.red_payload_type`)."""

    def __init__(self, track: _Track, stats: Stats) -> None:
        self.track = track
        self.stats = stats  # the publisher's: RED received, malformed RED dropped
        # RED subscribers' down-tracks (sfu/forwarder.DownTrack), and each one's Opus payload
        # type, which their block headers name instead of the publisher's.
        self.downs: VersionedList[Any] = VersionedList()
        self.opus: dict[Any, int] = {}
        self.copies: RedCopies | None = None  # steady ones, forwarded by compiled code
        self._tick = 0  # packets until the next look for steady down-tracks
        self._codec: Any = None  # the codec `copies` was made for
        # The packet being sent (None: plain Opus), and its block headers per Opus payload type.
        self._red: RedPayload | None = None
        self._patches: dict[int, bytes] = {}
        # With fan-out workers: (downs.version, the down-tracks this process sends).
        self._local: tuple[int, list[Any]] = (-1, [])

    def attach(self, down: Any, opus_pt: int) -> None:
        self.detach(down)
        self.downs.append(down)
        self.opus[down] = opus_pt

    def detach(self, down: Any) -> None:
        if down in self.opus:
            if self.copies is not None and down._copies is self.copies:
                self.copies.detach(down)
            self.downs.remove(down)
            del self.opus[down]

    def request_keyframe(self) -> None:
        self.track.request_keyframe()

    def forward(self, data: bytes, info: RtpInfo) -> int:
        """Forward one packet of the track's SSRC; the number of copies sent."""
        track = self.track
        codec = track.codec
        if codec is None or info.payload_type != codec.red_payload_type:
            if track.feed is not None and not track.muted:
                track.feed(data)
            return track.forward(data, info) + self._send_red(data, info, None)
        red = read_red(data, info.payload_start, info.payload_end)
        if red is None or red.primary_pt != codec.payload_type:
            self.stats.drop(DropReason.MALFORMED_RED)
            return 0
        self.stats.red_received += 1
        if track.feed is not None and not track.muted:
            track.feed(data)  # as it came: the workers split it themselves
        opus = unwrap(data, info, red)
        sent = track.forward(opus, parse_rtp(opus))
        if not self.downs or track.muted:
            return sent
        return sent + self._send_red(data, info, red)

    def _send_red(self, data: bytes, info: RtpInfo, red: RedPayload | None) -> int:
        track = self.track
        if track.muted or track.codec is None:
            return 0
        self._red = red
        if self._patches:
            self._patches.clear()
        copies, downs = self.copies, self.downs
        version = downs.version
        if track.feed is not None:  # the workers send theirs
            if self._local[0] != version:
                self._local = (version, [d for d in downs if not d.remote])
            downs = self._local[1]  # type: ignore[assignment]
        if copies is not None and track.codec is not self._codec:  # renegotiated: made again
            self._adopt(downs)
            copies = self.copies
        if copies is not None:
            return copies.forward(data, info, downs, version)
        sent = 0
        for down in downs:
            if self.send(down, data, info):
                sent += 1
        self._tick -= 1
        if self._tick <= 0:
            self._adopt(downs)
        return sent

    def _adopt(self, downs: list[Any]) -> None:
        """A compiled loop for the steady RED subscribers, made for the track's codec."""
        self._tick = REFRESH
        if self.copies is not None:
            self.copies.close()
        self._codec = self.track.codec
        copies = adopt(downs, make=lambda batch: RedCopies(batch, self))
        self.copies = copies if isinstance(copies, RedCopies) else None

    def send(self, down: Any, data: bytes, info: RtpInfo) -> bool:
        """The packet being forwarded to one RED subscriber, by the Python path."""
        rewriter, sink = down._rewriter, down.sink
        if rewriter is None or sink is None:
            return False
        red, opus_pt, own_pt = self._red, self.opus[down], self.track.codec.payload_type
        if red is None or opus_pt == own_pt:
            out = rewriter.rewrite(data, info)
        else:
            patch = self._patches.get(opus_pt)
            if patch is None:
                patch = self._patches[opus_pt] = retarget(data, info, red, {own_pt: opus_pt})
            out = rewriter.rewrite(data, info, patch, red.blocks_start)
        return out is not None and bool(sink.send(out))

    def payload_types(self, down: Any) -> tuple[int, int, int]:
        """(the publisher's RED payload type, its Opus one, the subscriber's Opus one): what
        the compiled loop renames in a RED packet's block headers for `down`."""
        codec = self.track.codec
        red_pt = 0xFF if codec.red_payload_type is None else codec.red_payload_type  # 0xFF: none
        return red_pt, codec.payload_type, self.opus[down]
