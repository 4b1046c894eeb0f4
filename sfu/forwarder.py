"""The forwarding core: published tracks and their per-subscriber down-tracks.

No sockets and no clock here: packets come in as plaintext bytes with their parsed header, go out
through a `Sink` (the subscriber's DTLS transport in the server, a counter in benchmarks), and
time is passed in. This is the part `loadtest/` benchmarks.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sfu.fanout.links import Feed
from sfu.fastpath.state import SteadyDownTrack
from sfu.fastpath.steady import REFRESH, Copies, adopt
from sfu.keyframe import KeyframeThrottle, is_keyframe
from sfu.layerswitch import FLOOR_MOVE, PAUSED, LayerSwitch
from sfu.packetcache import PacketCache
from sfu.padding import padding_packet
from sfu.receivestats import ReceiveStats
from sfu.redtrack import RedFanout
from sfu.retransmit import RetransmitBudget, resend
from sfu.rtcp import build_sr
from sfu.rtp import RtpInfo, get_extension, parse_rtp
from sfu.rtprewrite import RtpRewriter
from sfu.rtx import RtxStream
from sfu.sdpinfo import SimulcastOffer
from sfu.simulcast import Layer
from sfu.tap import Tap
from sfu.twcc import URI as TRANSPORT_CC
from sfu.versionedlist import VersionedList

SDES_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


class Sink(Protocol):
    def send(self, data: bytes) -> bool: ...


def no_keyframe_source() -> None:
    """A track not (or no longer) published has nobody to ask for a keyframe."""


@dataclass(frozen=True)
class CodecInfo:
    """One negotiated codec of a publisher's media section."""

    mime_type: str
    clock_rate: int
    payload_type: int
    parameters: dict[str, object] = field(default_factory=dict)
    rtx_payload_type: int | None = None
    red_payload_type: int | None = None  # RED over this codec (sfu/redtrack.py)


@dataclass
class ForwardingCounters:
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0


class PublishedTrack:
    """A track a participant publishes: learns its SSRC and codec, fans packets out."""

    feed: Feed | None = None  # to fan-out workers (sfu/fanout/): they send `remote` down-tracks
    _local: tuple[int, list[DownTrack]] = (-1, [])  # (down_tracks.version, local ones)
    copies: Copies | None = None  # steady down-tracks, forwarded by compiled code (sfu/fastpath)
    _tick = 0  # input packets until the next look for steady down-tracks
    red: RedFanout | None = None  # its RED subscribers, when the publisher sends RED
    red_wanted = True  # False: the publisher asked for no RED (add_track `disable_red`)

    def __init__(
        self,
        *,
        sid: str,
        cid: str,
        kind: str,
        source: str,
        name: str,
        publisher_sid: str,
        muted: bool = False,
        keyframe_interval: float = 0.5,
        encryption: str = "none",
    ) -> None:
        self.sid = sid
        self.cid = cid
        self.kind = kind
        self.source = source
        self.name = name
        self.publisher_sid = publisher_sid
        self.muted = muted
        self.encryption = encryption  # "e2ee": the publisher encrypts its frames (PROTOCOL 7)
        self.codec: CodecInfo | None = None
        self.mid: str | None = None
        self.ssrc: int | None = None
        self.rtx_ssrc: int | None = None
        self.extensions: dict[int, str] = {}  # publisher-side id -> URI, from the answer
        self.down_tracks: VersionedList[DownTrack] = VersionedList()
        self.last_sender_report: tuple[int, int] | None = None
        self.throttle = KeyframeThrottle(keyframe_interval)
        self.counters = ForwardingCounters()
        self.receive = ReceiveStats()
        # Publisher-side id of the audio-level extension (RFC 6464), and the loudness it carried
        # since the last active-speaker round: sum of (127 - level) and how many packets.
        self.audio_level_id: int | None = None
        self.loudness = 0
        self.loudness_packets = 0
        self.bitrate = 0  # received, measured by the publisher's RTCP feedback once a second
        # Asks the publisher for a keyframe (throttled there): set by the publishing side.
        self.request_keyframe: Callable[[], None] = no_keyframe_source
        self.taps: list[Tap] = []  # recordings of this track (sfu/recording/)
        # Simulcast layers, lowest quality first ([] for a single-layer track), and their offer.
        self.layers: list[Layer] = []
        self.simulcast: SimulcastOffer | None = None

    def reroute(self) -> None:
        """Give each simulcast layer its route: the down-tracks that forward or await it (a
        layer's packet visits those only). A layer calls this when `down_tracks.version` moved
        since its route was made."""
        downs = self.down_tracks
        for layer in self.layers:
            layer.route = [d for d in downs if d.layers is not None and d.layers.wants(layer.index)]
            layer.route_version = downs.version

    def keyframe_ssrcs(self) -> list[int]:
        """The SSRCs a keyframe request names. Simulcast: the layers a down-track waits for, else
        those being forwarded (a decoder asked): a keyframe costs every subscriber of its layer,
        and the publisher's uplink, so layers nobody needs are not asked. A recording records
        every layer: all are asked then."""
        if not self.layers:
            return [] if self.ssrc is None else [self.ssrc]
        switches = [d.layers for d in self.down_tracks if d.layers is not None]
        wanted = {s.target for s in switches if s.waiting} or {s.current for s in switches}
        if any(layer.taps for layer in self.layers):
            wanted.update(layer.index for layer in self.layers)
        return [x.ssrc for x in self.layers if x.ssrc is not None and x.index in wanted]

    def set_simulcast(self, offer: SimulcastOffer) -> None:
        """The publisher's section offers these layers (kept when a later offer repeats them)."""
        if self.simulcast is None or self.simulcast.rids != offer.rids:
            self.layers = [Layer(self, i, rid, self.counters) for i, rid in enumerate(offer.rids)]
        self.simulcast = offer

    @property
    def mime_type(self) -> str:
        return self.codec.mime_type if self.codec else ""

    @property
    def bound(self) -> bool:
        """Whether a media section of the publisher's SDP carries this track."""
        return self.codec is not None

    def forward(self, data: bytes, info: RtpInfo) -> int:
        """Forward one of the track's packets to its down-tracks; the number sent."""
        counters = self.counters
        counters.packets_in += 1
        counters.bytes_in += len(data)
        self.receive.update(info.sequence)
        if self.audio_level_id is not None:
            level = get_extension(data, info, self.audio_level_id)
            if level:
                self.loudness += 127 - (level[0] & 0x7F)
                self.loudness_packets += 1
        if self.muted:
            return 0
        for tap in self.taps:
            tap.packet(data, info)
        downs = self.down_tracks
        if self.feed is not None:
            if self.red is None:  # a RED track's packets were fed as they came (redtrack.py)
                self.feed(data)
            if self._local[0] != downs.version:
                self._local = (downs.version, [d for d in downs if not d.remote])
            downs = self._local[1]  # type: ignore[assignment]
        copies = self.copies
        if copies is not None:
            sent = copies.forward(data, info, downs, self.down_tracks.version)
        else:
            sent = 0
            for down in downs:
                if down.forward(data, info):
                    sent += 1
            self._tick -= 1
            if self._tick <= 0:
                self._tick, self.copies = REFRESH, adopt(downs)
        counters.packets_out += sent
        return sent

    def take_loudness(self) -> float | None:
        """Mean audio level since the last call, in dBov (0 loudest, -127 silence)."""
        if not self.loudness_packets:
            return None
        mean = self.loudness / self.loudness_packets - 127
        self.loudness = self.loudness_packets = 0
        return mean

    def on_sender_report(self, ntp: int, rtp_timestamp: int, now: float) -> None:
        self.last_sender_report = (ntp, rtp_timestamp)
        self.receive.on_sender_report(ntp, now)
        if self.feed is not None:
            self.feed.sender_report(ntp, rtp_timestamp)
        for tap in self.taps:
            tap.sender_report(ntp, rtp_timestamp)

    def set_muted(self, muted: bool) -> None:
        if self.muted and not muted and self.kind == "video":
            # Frames were skipped while muted: subscribers must restart on a keyframe.
            for down in self.down_tracks:
                down.waiting_for_keyframe = True
            if self.feed is not None:
                self.feed.restart()
        self.muted = muted

    def info(self) -> dict[str, object]:
        return {
            "sid": self.sid,
            "kind": self.kind,
            "source": self.source,
            "name": self.name,
            "muted": self.muted,
            "mime_type": self.mime_type,
            "simulcast": [layer.info() for layer in self.layers],
            "encryption": self.encryption,
        }


class DownTrack(SteadyDownTrack):
    """One published track as one subscriber receives it (its properties: fastpath/state.py)."""

    __slots__ = (
        "track",
        "subscriber_sid",
        "sink",
        "out_ssrc",
        "mid",
        "cache",
        "retransmits",
        "rtx",
        "_keyframe_mime",
        "layers",
        "max_layer",
        "padding_sent",
    )

    def __init__(self, track: PublishedTrack, subscriber_sid: str) -> None:
        super().__init__()
        self.track = track
        self.subscriber_sid = subscriber_sid
        self.sink: Sink | None = None
        self.out_ssrc: int | None = None
        self.mid: str | None = None
        # Video starts at a keyframe: earlier delta frames would only make the decoder ask again.
        self.waiting_for_keyframe = track.kind == "video"
        self.cache = PacketCache() if track.kind == "video" else None
        self.retransmits = RetransmitBudget()
        # Where the subscriber negotiated RTX, NACKed packets go out on it (sfu/rtx.py).
        self.rtx: RtxStream | None = None
        self._keyframe_mime = track.mime_type
        # Simulcast: the layer forwarded and aimed at (sfu/layerswitch.py); None single-layer.
        self.layers: LayerSwitch | None = None
        # The subscriber's cap (set_quality): the highest layer it wants.
        self.max_layer = 2
        self.padding_sent = 0  # bytes of padding sent

    def configure(
        self,
        *,
        sink: Sink,
        out_ssrc: int,
        mid: str,
        payload_types: dict[int, int],
        extensions: dict[str, int],
        seq_start: int | None = None,
    ) -> None:
        """Bind to the subscriber's negotiated section (payload types and extension ids).
        `seq_start`: the first sequence number, to continue the one of a recycled section's
        previous track (its SSRC is the same; a jump would look like loss); random if None."""
        track = self.track
        ext_map: dict[int, int] = {}
        mid_ext_id: int | None = None
        for uri, out_id in extensions.items():
            if uri == SDES_MID:
                mid_ext_id = out_id
        for in_id, uri in track.extensions.items():
            if uri != SDES_MID and uri != TRANSPORT_CC and uri in extensions:
                ext_map[in_id] = extensions[uri]
        self.rewriter = RtpRewriter(
            out_ssrc=out_ssrc,
            pt_map=payload_types,
            ext_map=ext_map,
            mid_ext_id=mid_ext_id,
            mid=mid,
            seq_start=random.randrange(1 << 16) if seq_start is None else seq_start,
            ts_start=random.randrange(1 << 32),
            # keyroom's own element (sfu/twcc.py), never the publisher's: a slot the sink fills.
            slot_ext_id=extensions.get(TRANSPORT_CC),
        )
        self.sink = sink
        self.out_ssrc = out_ssrc
        self.mid = mid
        self._keyframe_mime = track.mime_type
        if track.layers:
            downs = track.down_tracks
            # The best layer that flows now (Chromium sends fewer than offered for a small
            # camera); congestion control adjusts it within a second.
            wanted = [x.index for x in track.layers if x.available and x.index <= self.max_layer]
            target = max(wanted, default=min(self.max_layer, len(track.layers) - 1))
            self.layers = LayerSwitch(track.mime_type, target, downs.changed)
            # A pause allocated before configuring is single-layer state; a layer target rules now.
            self.paused = False
            downs.changed()

    def forward(self, data: bytes, info: RtpInfo) -> bool:
        rewriter = self._rewriter
        if rewriter is None or self.sink is None:
            return False
        waiting = self._waiting
        if waiting:
            if self._paused:
                return False
            if not is_keyframe(self._keyframe_mime, data[info.payload_start : info.payload_end]):
                # Ask again while media flows without one (the publisher's limiter spaces the
                # requests): the first request can be lost (sent before the publisher's
                # transport was up), and a publisher such as libwebrtc sends keyframes only
                # when asked.
                self.track.request_keyframe()
                return False
            # Whatever was skipped while waiting leaves no gap in the subscriber's sequence.
            rewriter.rebase(info.sequence, info.timestamp, None)
        out = rewriter.rewrite(data, info)
        if out is None:
            return False
        if self.cache is not None:
            self.cache.store_forwarded((out[2] << 8) | out[3], out, data, info.payload_start)
        sent = self.sink.send(out)
        if waiting and sent:
            # Only a keyframe that reached the subscriber's transport ends the wait: one sent
            # before DTLS is up is lost, and deltas after it would not decode.
            self._waiting = False
        if self._padding and sent:
            self._pad(out)
        return sent

    def forward_layer(
        self, layer: int, data: bytes, info: RtpInfo, renumbered: dict[int, tuple[bytes, int]]
    ) -> bool:
        """forward() for a packet of simulcast layer `layer`. `renumbered`: the packet's VP8
        patches so far (sfu/vp8.py) by offsets key, shared by the down-tracks of its route."""
        rewriter, layers, sink = self._rewriter, self.layers, self.sink
        if rewriter is None or layers is None or sink is None:
            return False
        if layer != layers.current or (info.sequence - layers.floor) & 0xFFFF > FLOOR_MOVE:
            if not layers.admit(layer, data, info, rewriter):
                return False
        munger = layers.munger
        if munger is not None and munger.key:  # renumbered since a switch
            made = renumbered.get(munger.key)
            if made is None:
                made = renumbered[munger.key] = munger.patch(
                    data, info.payload_start, info.payload_end
                )
            patch, resume = made
            out = rewriter.rewrite(data, info, patch, resume)
        else:
            resume = info.payload_start
            out = rewriter.rewrite(data, info)
        if out is None:
            return False
        if self.cache is not None:
            self.cache.store_forwarded((out[2] << 8) | out[3], out, data, resume)
        if sink.send(out):
            layers.last_sent = out
            if self._padding:
                self._pad(out)
            return True
        layers.unsent(layer, info)
        return False

    def _pad(self, sent: bytes) -> None:
        """Probe the subscriber's link: `padding` padding-only packets after `sent`."""
        rewriter, sink = self._rewriter, self.sink
        if rewriter is None or sink is None:
            return
        info, rtx = parse_rtp(sent), self.rtx
        # A paced sink (sfu/sendbudget.py) sends padding only when it fits at once.
        send = getattr(sink, "send_padding", sink.send)
        for _ in range(self._padding):
            if rtx is not None:  # on the RTX stream: nothing of the media's sequence to repair
                packet = padding_packet(sent, info, rtx.take_sequence(), rtx.stream)
            else:
                seq = rewriter.take_sequence()
                packet = padding_packet(sent, info, seq)
                if self.cache is not None:
                    self.cache.store(seq, packet)
            if send(packet):
                self.padding_sent += len(packet)

    def set_layer(self, layer: int) -> bool:
        """Forward `layer` (PAUSED: nothing) from now on, switching at its next keyframe;
        single-layer video pauses or resumes. True when a keyframe should be requested."""
        if self.layers is not None:
            self.rerouted(layer)  # the layer routes change
            return self.layers.set_target(layer)
        if self.track.kind != "video" or self.paused == (layer == PAUSED):
            return False
        self.paused = layer == PAUSED
        self.waiting_for_keyframe = True
        if self.remote is not None:
            self.remote.pause(self.paused, True)
        return not self.paused

    def retransmit(
        self, sequence_numbers: tuple[int, ...], now: float, rtt: float | None = None
    ) -> tuple[int, int]:
        """Answer a NACK with the packets still cached, within the retransmission budget
        (`rtt`: the subscriber's round trip, if known): (packets resent, packets refused)."""
        if self.remote is not None:
            return self.remote.retransmit(sequence_numbers)
        cache, sink, rewriter = self.cache, self.sink, self.rewriter
        if cache is None or sink is None or rewriter is None:
            return 0, 0
        wrap = None if self.rtx is None else self.rtx.wrap
        budget, octets, ssrc = self.retransmits, rewriter.octets, self.out_ssrc
        return resend(budget, cache, sink, wrap, sequence_numbers, octets, now, rtt, ssrc)

    def sender_report(self) -> bytes | None:
        """The publisher's latest SR translated to this down-track's SSRC and timestamps."""
        rewriter = self.rewriter
        report = self.track.last_sender_report
        if self.layers is not None:
            # Each layer reports in its own timestamps: the one forwarded maps onto this track.
            layers, current = self.track.layers, self.layers.current
            report = layers[current].last_sender_report if 0 <= current < len(layers) else None
        if rewriter is None or report is None or not rewriter.started or self.out_ssrc is None:
            return None
        ntp, rtp_timestamp = report
        return build_sr(
            self.out_ssrc,
            ntp,
            rewriter.translate_timestamp(rtp_timestamp),
            rewriter.packets,
            rewriter.octets,
        )
