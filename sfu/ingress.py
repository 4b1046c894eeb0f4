"""A publisher's RTP ingress: which published track each incoming packet belongs to.

The hot path: called synchronously from the datagram callback with plaintext RTP. One dict lookup
by SSRC finds the track; an SSRC the offer did not announce is learnt from the MID header
extension (sections without `a=ssrc`, e.g. Firefox). Every refused packet is counted by reason.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from sfu.forwarder import AUDIO_LEVEL, CodecInfo, PublishedTrack
from sfu.metrics import forward_timer_start, forward_timer_stop
from sfu.rtp import MalformedPacket, RtpInfo, get_extension, parse_rtp
from sfu.stats import DropReason, Stats

# SSRCs of unpublished tracks still recognised (their late packets count as no_right).
MAX_FORGOTTEN_SSRCS = 64


class Ingress:
    def __init__(self, tracks: Mapping[str, PublishedTrack], stats: Stats) -> None:
        # The publisher's current tracks (its own dict, read live).
        self._tracks = tracks
        self.stats = stats
        # None: an SSRC known but not forwarded (an unpublished track, a publisher's RTX).
        self._tracks_by_ssrc: dict[int, PublishedTrack | None] = {}
        self._tracks_by_mid: dict[str, PublishedTrack] = {}
        self._mid_ext: int | None = None
        self._forgotten: deque[int] = deque()

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
            track = self._learn_ssrc(data, info)
            if track is None:
                stats.drop(DropReason.UNKNOWN_SSRC)
                return
        if track is None:
            stats.drop(DropReason.NOT_GRANTED)
            return
        stats.packets_in += 1
        stats.bytes_in += len(data)
        before = track.counters.packets_out
        started = forward_timer_start(stats.packets_in)
        track.forward(data, info)
        forward_timer_stop(started)
        stats.packets_out += track.counters.packets_out - before
        stats.bytes_out += (track.counters.packets_out - before) * len(data)

    def _learn_ssrc(self, data: bytes, info: RtpInfo) -> PublishedTrack | None:
        if self._mid_ext is None:
            return None
        mid = get_extension(data, info, self._mid_ext)
        if mid is None:
            return None
        track = self._tracks_by_mid.get(mid.decode("ascii", "replace"))
        if track is None or track.ssrc is not None or track.sid not in self._tracks:
            return None
        codec = track.codec
        if codec is not None and info.payload_type == codec.rtx_payload_type:
            # An SDP without SSRCs (simulcast by rid): its RTX stream (padding probes first)
            # names the same MID; it is not the media stream.
            return None
        track.ssrc = info.ssrc
        self._tracks_by_ssrc[info.ssrc] = track
        return track

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
        if ssrc is not None and track.ssrc is None:
            track.ssrc = ssrc
            self._tracks_by_ssrc[ssrc] = track
        if rtx_ssrc is not None and track.rtx_ssrc is None:
            track.rtx_ssrc = rtx_ssrc
            # keyroom does not NACK publishers: their RTX stream only carries padding probes.
            self._tracks_by_ssrc[rtx_ssrc] = None

    def forget(self, track: PublishedTrack) -> None:
        if track.mid is not None:
            self._tracks_by_mid.pop(track.mid, None)
        for ssrc in (track.ssrc, track.rtx_ssrc):
            if ssrc is not None:
                # Keep the SSRC known so later packets count as "unpublished", not "unknown";
                # the most recent ones only, so a publisher that churns grows nothing.
                self._tracks_by_ssrc[ssrc] = None
                self._forgotten.append(ssrc)
        while len(self._forgotten) > MAX_FORGOTTEN_SSRCS:
            old = self._forgotten.popleft()
            if self._tracks_by_ssrc.get(old, 0) is None:
                del self._tracks_by_ssrc[old]
