"""Which simulcast layer one down-track forwards, and where the subscriber's stream continues.

The subscriber sees one stream (one SSRC, one sequence, one timestamp line) whatever layer it
comes from. A switch happens only at a keyframe of the target layer (its delta frames would not
decode), and there the rewriter is rebased: the keyframe's first packet follows the last packet
sent in sequence, one frame later in time, and its VP8 PictureID/TL0PICIDX follow the last ones.
Until then the current layer keeps flowing, so a switch costs the subscriber no frame. A paused
down-track (target -1) forwards nothing and resumes, like a switch, at a keyframe.

Sans-I/O: the caller passes each packet's layer and bytes; `set_target` says whether a keyframe
must be requested from the publisher.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sfu.keyframe import is_keyframe
from sfu.rtp import MalformedPacket, RtpInfo, parse_rtp
from sfu.rtprewrite import RtpRewriter
from sfu.vp8 import NO_DESCRIPTOR, Vp8Descriptor, Vp8Munger, read_descriptor

# Timestamp step across a switch: one frame at 30 fps on the 90 kHz video clock. The layers'
# timestamps are unrelated, so the gap between their frames is taken as one frame.
FRAME_TICKS = 3000
PAUSED = -1
# Packets of the current layer older than the switch point are refused (they would reuse
# sequence numbers already sent); the bar moves with the stream so wrap-around never trips it.
# A packet of the current layer less than FLOOR_MOVE ahead of it passes without admit() (the
# hot path: the caller checks that inline).
_FLOOR_LAG = 0x2000
FLOOR_MOVE = 0x4000
# Each switch at DEBUG: the benchmark's timeline (loadtest/simulcastbench.py).
log = logging.getLogger(__name__)


class LayerSwitch:
    __slots__ = (
        "current",
        "target",
        "floor",
        "munger",
        "switches",
        "last_sent",
        "_mime",
        "_switched",
    )

    def __init__(
        self, mime_type: str, target: int, switched: Callable[[], None] = lambda: None
    ) -> None:
        # The layer being forwarded, PAUSED before the first keyframe and while paused.
        self.current = PAUSED
        self.target = target
        # Input sequence number of the switch point (of the current layer).
        self.floor = 0
        self.munger = Vp8Munger() if mime_type.lower() == "video/vp8" else None
        self.switches = 0
        # The last media packet sent (output): where the PictureID numbering continues from.
        self.last_sent = b""
        self._mime = mime_type
        # Told of each switch: the layer left no longer needs this down-track's packets.
        self._switched = switched

    def set_target(self, layer: int) -> bool:
        """Aim at `layer` (PAUSED: stop now). True when a keyframe of it must be requested."""
        if layer == self.target and (layer == self.current or layer == PAUSED):
            return False
        self.target = layer
        if layer == PAUSED:
            self.current = PAUSED
            return False
        return layer != self.current

    def wants(self, layer: int) -> bool:
        """Whether packets of `layer` may be forwarded (current) or switched to (target)."""
        return layer == self.current or layer == self.target

    @property
    def waiting(self) -> bool:
        """Whether a keyframe of the target layer is awaited."""
        return self.target != PAUSED and self.target != self.current

    def admit(self, layer: int, data: bytes, info: RtpInfo, rewriter: RtpRewriter) -> bool:
        """Whether to send the packet (renumbered by `munger` where its key is set). Needed
        for packets of another layer, or of the current one not within FLOOR_MOVE after
        `floor`: behind the switch point, or far enough ahead to move it."""
        if layer != self.current:
            if layer != self.target or not is_keyframe(
                self._mime, data[info.payload_start : info.payload_end]
            ):
                return False
            log.debug(
                "switch %d->%d ssrc=%08x seq=%d", self.current, layer, info.ssrc, info.sequence
            )
            self.current = layer
            self.floor = info.sequence
            self.switches += 1
            self._switched()
            rewriter.rebase(info.sequence, info.timestamp, FRAME_TICKS)
            if self.munger is not None:
                self.munger.rebase(data, info.payload_start, info.payload_end, self._last_desc())
            return True
        ahead = (info.sequence - self.floor) & 0xFFFF
        if ahead >= 0x8000:
            return False
        if ahead > FLOOR_MOVE:
            self.floor = (info.sequence - _FLOOR_LAG) & 0xFFFF
        return True

    def _last_desc(self) -> Vp8Descriptor:
        last = self.last_sent
        if not last:
            return NO_DESCRIPTOR
        try:
            info = parse_rtp(last)
        except MalformedPacket:
            return NO_DESCRIPTOR
        return read_descriptor(last, info.payload_start, info.payload_end)

    def unsent(self, layer: int, info: RtpInfo) -> None:
        """The packet admit() passed was not sent: a switch keyframe lost that way (transport
        not up yet) is waited for again, as deltas after it would not decode."""
        if layer == self.current and info.sequence == self.floor:
            self.current = PAUSED
