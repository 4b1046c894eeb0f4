"""A publisher's RTP ingress: which published track each incoming packet belongs to.

The hot path: called synchronously from the datagram callback with plaintext RTP. One dict lookup
by SSRC finds the track; an SSRC the offer did not announce is learnt from the MID header
extension (sections without `a=ssrc`, e.g. Firefox). Every refused packet is counted by reason.

Uplink loss (sfu/uplinknack.py): each video SSRC's sequence numbers are tracked; a gap calls
`on_gap` (the owner schedules NACKs), a duplicate is dropped. The publisher's RTX stream
(sfu/rtx.py) is unwrapped onto its media SSRC and goes through the same path, so a repaired
packet is forwarded once, late, like a reordered one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping

from sfu import rtx
from sfu.forwarder import AUDIO_LEVEL, CodecInfo, PublishedTrack
from sfu.metrics import FORWARD_SAMPLE_MASK, forward_timer_start, forward_timer_stop
from sfu.redtrack import RedFanout
from sfu.retransmit import trace
from sfu.rtp import MalformedPacket, RtpInfo, get_extension, parse_rtp
from sfu.simulcast import Layer, learn_layer
from sfu.stats import DropReason, Stats
from sfu.uplinknack import GAP, REPAIR, RESTART, UplinkNacks

# SSRCs of unpublished tracks still recognised (their late packets count as no_right).
MAX_FORGOTTEN_SSRCS = 64


class Ingress:
    def __init__(self, tracks: Mapping[str, PublishedTrack], stats: Stats) -> None:
        # The publisher's current tracks (its own dict, read live).
        self._tracks = tracks
        self.stats = stats
        # None: an SSRC known but not forwarded (an unpublished track, a publisher's RTX).
        # A simulcast track's SSRCs map to its layers, which forward like a track; a RED
        # track's SSRC to its RedFanout, which unwraps for the track (sfu/redtrack.py).
        self._tracks_by_ssrc: dict[int, PublishedTrack | Layer | RedFanout | None] = {}
        self._tracks_by_mid: dict[str, PublishedTrack] = {}
        self._mid_ext: int | None = None
        self._forgotten: deque[int] = deque()
        # Video SSRC -> its loss tracker; RTX SSRC -> the track it repairs.
        self.nacks: dict[int, UplinkNacks] = {}
        self._rtx: dict[int, PublishedTrack] = {}
        # Called when a new uplink gap wants NACKs (the owner arms its timer).
        self.on_gap: Callable[[], None] = _nothing
        # An uplink repair arrived: its owner tells the stream's tracker when (the repair RTT).
        self.on_repair: Callable[[UplinkNacks], None] = _ignore_repair

    def on_rtp(self, data: bytes) -> None:
        stats = self.stats
        try:
            info = parse_rtp(data)
        except MalformedPacket:
            stats.drop(DropReason.MALFORMED)
            return
        try:
            track = self._tracks_by_ssrc[info.ssrc]
        except KeyError:
            repaired = self._rtx.get(info.ssrc)
            if repaired is not None:
                self._on_rtx(data, info, repaired)
                return
            learnt = self._learn_ssrc(data, info)
            if isinstance(learnt, DropReason):
                stats.drop(learnt)
                return
            track = learnt
        if track is None:
            stats.drop(DropReason.NOT_GRANTED)
            return
        nacks = self.nacks.get(info.ssrc)
        if nacks is not None:
            arrival = nacks.on_packet(info.sequence)
            if arrival and not self._unusual(arrival, track, info):
                return
        counted = stats.packets_in = stats.packets_in + 1
        size = len(data)
        stats.bytes_in += size
        # 1 packet in 64 is timed (keyroom_forward_seconds); the others read no clock.
        sent = (
            track.forward(data, info)
            if counted & FORWARD_SAMPLE_MASK
            else _timed(track, data, info)
        )
        if sent:
            stats.packets_out += sent
            stats.bytes_out += sent * size

    def _unusual(
        self, arrival: int, track: PublishedTrack | Layer | RedFanout, info: RtpInfo
    ) -> bool:
        """Whether to forward a packet that was not the next in sequence."""
        if trace.isEnabledFor(logging.DEBUG):
            trace.debug(
                "uplink %d wall=%.3f ssrc=%d seq=%d", arrival, time.time(), info.ssrc, info.sequence
            )
        if arrival == GAP:
            self.on_gap()
        elif arrival == REPAIR:
            self.on_repair(self.nacks[info.ssrc])
        elif arrival == RESTART:
            track.request_keyframe()
        else:
            self.stats.drop(DropReason.DUPLICATE)
            return False
        return True

    def _on_rtx(self, data: bytes, info: RtpInfo, track: PublishedTrack) -> None:
        codec = track.codec
        if track.ssrc is None or codec is None or info.payload_type != codec.rtx_payload_type:
            self.stats.drop(DropReason.MALFORMED)
            return
        original = rtx.unwrap(data, info, track.ssrc, codec.payload_type)
        if original is None:
            self.stats.drop(DropReason.RTX_PROBE)
            return
        self.stats.rtx_received += 1
        self.on_rtp(original)

    def _watch_loss(self, track: PublishedTrack, ssrc: int) -> None:
        if track.kind == "video":
            self.nacks.setdefault(ssrc, UplinkNacks())

    def _learn_ssrc(
        self, data: bytes, info: RtpInfo
    ) -> PublishedTrack | Layer | RedFanout | DropReason:
        if self._mid_ext is None:
            return DropReason.UNKNOWN_SSRC
        mid = get_extension(data, info, self._mid_ext)
        if mid is None:
            return DropReason.UNKNOWN_SSRC
        track = self._tracks_by_mid.get(mid.decode("ascii", "replace"))
        if track is None or track.sid not in self._tracks:
            return DropReason.UNKNOWN_SSRC
        if track.layers:
            layer = learn_layer(track.layers, track.simulcast, data, info)
            if isinstance(layer, Layer):
                self._tracks_by_ssrc[info.ssrc] = layer
                self._watch_loss(track, info.ssrc)
            return layer
        if track.ssrc is not None:
            return DropReason.UNKNOWN_SSRC
        codec = track.codec
        if codec is not None and info.payload_type == codec.rtx_payload_type:
            # An SDP without SSRCs (simulcast by rid): its RTX stream (padding probes first)
            # names the same MID; it is not the media stream.
            return DropReason.UNKNOWN_SSRC
        track.ssrc = info.ssrc
        self._tracks_by_ssrc[info.ssrc] = track.red or track
        self._watch_loss(track, info.ssrc)
        return track.red or track

    def bind(
        self,
        track: PublishedTrack,
        mid: str,
        ssrc: int | None,
        rtx_ssrc: int | None,
        codec: CodecInfo,
        extensions: dict[int, str],
    ) -> None:
        """A media section of the publisher's offer carries `track`."""
        track.mid = mid
        track.codec = codec
        track.extensions = extensions
        track.audio_level_id = next(
            (i for i, uri in extensions.items() if uri == AUDIO_LEVEL), None
        )
        self._tracks_by_mid[mid] = track
        self._mid_ext = next(
            (i for i, uri in extensions.items() if uri.endswith("sdes:mid")), self._mid_ext
        )
        if codec.red_payload_type is not None and track.red is None and not track.layers:
            # Kept once made: its RED subscribers stay attached across renegotiations.
            track.red = RedFanout(track, self.stats)
            if track.ssrc is not None:
                self._tracks_by_ssrc[track.ssrc] = track.red
        if ssrc is not None and track.ssrc is None and not track.layers:
            track.ssrc = ssrc
            self._tracks_by_ssrc[ssrc] = track.red or track
            self._watch_loss(track, ssrc)
        if rtx_ssrc is not None and track.rtx_ssrc is None:
            track.rtx_ssrc = rtx_ssrc
            if codec.rtx_payload_type is not None:
                self._rtx[rtx_ssrc] = track
            else:
                # RTX announced but not negotiated (no apt to repair): its packets are refused.
                self._tracks_by_ssrc[rtx_ssrc] = None

    def forget(self, track: PublishedTrack) -> None:
        if track.mid is not None:
            self._tracks_by_mid.pop(track.mid, None)
        layer_ssrcs = [layer.ssrc for layer in track.layers]
        for ssrc in dict.fromkeys((track.ssrc, track.rtx_ssrc, *layer_ssrcs)):
            if ssrc is not None:
                self.nacks.pop(ssrc, None)
                self._rtx.pop(ssrc, None)
                # Keep the SSRC known so later packets count as "unpublished", not "unknown";
                # the most recent ones only, so a publisher that churns grows nothing.
                self._tracks_by_ssrc[ssrc] = None
                self._forgotten.append(ssrc)
        while len(self._forgotten) > MAX_FORGOTTEN_SSRCS:
            old = self._forgotten.popleft()
            if self._tracks_by_ssrc.get(old, 0) is None:
                del self._tracks_by_ssrc[old]


def _nothing() -> None:
    pass


def _ignore_repair(nacks: UplinkNacks) -> None:
    pass


def _timed(track: PublishedTrack | Layer | RedFanout, data: bytes, info: RtpInfo) -> int:
    started = forward_timer_start(0)
    sent = track.forward(data, info)
    forward_timer_stop(started)
    return sent
