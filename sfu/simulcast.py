"""Simulcast in: a published video track's layers, and the answer lines that accept them.

aiortc neither parses `a=rid`/`a=simulcast` nor answers them, so keyroom reads the offer's
(sfu/sdpinfo.py `read_simulcast`) and writes the answer's here: each offered RID `recv`, the
`a=simulcast:recv` line, and the RID/repaired-RID header extensions with the offer's ids.

Each layer is an ingress target of its own (the ingress maps its SSRC to it once learnt from the
RID extension), so the per-packet cost is the single-layer one plus one index per down-track.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from sfu.fastpath.steady import REFRESH, adopt
from sfu.receivestats import ReceiveStats
from sfu.rtcp import ReportBlock, SenderReport
from sfu.rtp import RtpInfo, get_extension
from sfu.sdpinfo import (
    REPAIRED_RID_URI,
    RID_URI,
    MediaSection,
    SimulcastOffer,
    attribute,
    join_sdp,
    split_sdp,
)
from sfu.stats import DropReason
from sfu.tap import Tap

if TYPE_CHECKING:
    from sfu.fastpath.steady import Copies

# What a layer is expected to carry before it is measured, or while dynacast pauses it (bit/s):
# Chromium's defaults for 1/4, 1/2 and full 720p.
NOMINAL_BITRATES = (150_000, 500_000, 1_700_000)
# Measurements (one a second) after a layer starts or is switched back on before its bitrate is
# what it is expected to carry: the first covers the encoder's ramp-up, and one taken after
# dynacast switched it off only its last moments (a middle layer "expected" at 30 kbit/s was
# given to a 300 kbit/s link, and carried 500 when switched on: seconds more to the low layer).
SETTLING = 2


class _Counters(Protocol):
    packets_in: int
    bytes_in: int
    packets_out: int


class _LayeredDown(Protocol):
    def forward_layer(
        self, layer: int, data: bytes, info: RtpInfo, renumbered: dict[int, tuple[bytes, int]]
    ) -> bool: ...


class _Versioned(Protocol):
    @property
    def version(self) -> int: ...


class _LayeredTrack(Protocol):
    @property
    def muted(self) -> bool: ...

    @property
    def down_tracks(self) -> _Versioned: ...

    def reroute(self) -> None: ...

    def request_keyframe(self) -> None: ...


class Layer:
    """One simulcast encoding of a published track, as the ingress forwards it."""

    __slots__ = (
        "track",
        "index",
        "rid",
        "rid_bytes",
        "ssrc",
        "counters",
        "receive",
        "bytes_in",
        "bitrate",
        "expected",
        "last_sender_report",
        "active",
        "taps",
        "route",
        "route_version",
        "_measured",
        "_measurements",
        "copies",
        "_tick",
    )

    def __init__(self, track: _LayeredTrack, index: int, rid: str, counters: _Counters) -> None:
        self.track = track
        self.index = index
        self.rid = rid
        self.rid_bytes = rid.encode("ascii")
        self.ssrc: int | None = None
        # The track's counters, which count the layers' packets too.
        self.counters = counters
        self.receive = ReceiveStats()
        self.bytes_in = 0
        # Measured once a second by the publisher's feedback; `expected` keeps the last
        # steady measurement for when the layer is paused (SETTLING).
        self.bitrate = 0
        self._measurements = 0  # since the layer was (re)activated
        self.expected = NOMINAL_BITRATES[min(index, len(NOMINAL_BITRATES) - 1)]
        self.last_sender_report: tuple[int, int] | None = None
        # Whether the publisher was last asked to send it (dynacast).
        self.active = True
        self.taps: list[Tap] = []  # recordings of this layer
        # The down-tracks its packets visit, as of the track's down_tracks.version (reroute).
        self.route: Sequence[_LayeredDown] = ()
        self.route_version = -1
        # (time, bytes_in) at the last measurement.
        self._measured: tuple[float, int] | None = None
        # The route's down-tracks settled on this layer, forwarded by compiled code
        # (sfu/fastpath/steady.py), and the input packets until the next look for them.
        self.copies: Copies | None = None
        self._tick = 0

    def forward(self, data: bytes, info: RtpInfo) -> int:
        """PublishedTrack.forward for a packet of this layer: to its route only."""
        counters, size = self.counters, len(data)
        counters.packets_in += 1
        counters.bytes_in += size
        self.bytes_in += size
        self.receive.update(info.sequence)
        track = self.track
        if track.muted:
            return 0
        index = self.index
        for tap in self.taps:  # recordings (sfu/recording/)
            tap.packet(data, info)
        route = self.route
        if self.route_version != track.down_tracks.version:
            track.reroute()
            route = self.route
        copies = self.copies
        if copies is not None:
            sent = copies.forward(data, info, route, self.route_version)
        else:
            sent = 0
            # This packet's VP8 patches, one per offsets key (sfu/vp8.py), shared by the route.
            renumbered: dict[int, tuple[bytes, int]] = {}
            for down in route:
                if down.forward_layer(index, data, info, renumbered):
                    sent += 1
            self._tick -= 1
            if self._tick <= 0:
                self._tick, self.copies = REFRESH, adopt(cast(Any, route), index)
        counters.packets_out += sent
        return sent

    def request_keyframe(self) -> None:
        self.track.request_keyframe()

    @property
    def available(self) -> bool:
        """Whether a down-track can be given this layer: it arrived, and still arrives or was
        only paused by dynacast (asked for, it comes back). Chromium sends fewer layers than
        offered for a small camera, and drops its top layers when its own uplink is short."""
        return self.ssrc is not None and (
            self.bitrate > 0 or not self.active or self._measured is None
        )

    def activate(self, active: bool) -> None:
        """Dynacast asked the publisher to send it, or not; one asked again counts as arriving
        until it is measured again."""
        if active and not self.active:
            self._measured = None
            self._measurements = 0
            self.bitrate = self.expected
        self.active = active

    def measure(self, now: float) -> int:
        """The bitrate received since the last call (bit/s)."""
        then, octets = self._measured or (now, self.bytes_in)
        if now > then:
            self.bitrate = int((self.bytes_in - octets) * 8 / (now - then))
            if self.bitrate and self.active and self._measurements >= SETTLING:
                self.expected = self.bitrate
        self._measurements += 1
        self._measured = (now, self.bytes_in)
        return self.bitrate

    def info(self) -> dict[str, object]:
        return {"rid": self.rid, "active": self.active, "bitrate": self.bitrate}


def learn_layer(
    layers: Sequence[Layer], offer: SimulcastOffer | None, data: bytes, info: RtpInfo
) -> Layer | DropReason:
    """The layer a packet with an SSRC not seen before belongs to, by its RID extension (which
    Chromium sends until the SSRC is acknowledged); the layer learns the SSRC. A RID the offer
    did not declare, or a layer that already has another SSRC, is refused (BAD_LAYER); a
    packet without a RID (e.g. a repair stream, named by repaired-RID) is unknown."""
    if offer is None or offer.rid_ext is None:
        return DropReason.UNKNOWN_SSRC
    rid = get_extension(data, info, offer.rid_ext)
    if rid is None:
        return DropReason.UNKNOWN_SSRC
    layer = next((layer for layer in layers if layer.rid_bytes == rid), None)
    if layer is None or (layer.ssrc is not None and layer.ssrc != info.ssrc):
        return DropReason.BAD_LAYER
    layer.ssrc = info.ssrc
    return layer


def layer_reports(
    layers: Sequence[Layer], now: float, blocks: list[ReportBlock], ssrcs: list[int]
) -> int:
    """Add a report block and the SSRC of each layer received to `blocks` and `ssrcs`; measure
    the layers and return their total bitrate."""
    total = 0
    for layer in layers:
        total += layer.measure(now)
        if layer.ssrc is not None and layer.receive.started:
            blocks.append(layer.receive.report_block(layer.ssrc, now))
            ssrcs.append(layer.ssrc)
    return total


class _Reporting(Protocol):
    @property
    def layers(self) -> Sequence[Layer]: ...


def on_layer_sender_report(tracks: Iterable[_Reporting], report: SenderReport, now: float) -> None:
    """A publisher's Sender Report for a simulcast layer (its down-tracks translate it)."""
    for track in tracks:
        for layer in track.layers:
            if layer.ssrc == report.ssrc:
                layer.last_sender_report = (report.ntp, report.rtp_ts)
                layer.receive.on_sender_report(report.ntp, now)
                for tap in layer.taps:
                    tap.sender_report(report.ntp, report.rtp_ts)
                return


class _Bound(Protocol):
    @property
    def mid(self) -> str | None: ...

    @property
    def simulcast(self) -> SimulcastOffer | None: ...


def simulcast_sections(
    sections: Iterable[MediaSection], tracks_by_cid: Mapping[str, _Bound]
) -> dict[str, SimulcastOffer]:
    """mid -> the simulcast accepted there: offered, and bound to a track (not answered
    inactive)."""
    accepted = {}
    for section in sections:
        track = tracks_by_cid.get(section.track_id or "")
        if section.simulcast and track is not None and track.mid == section.mid:
            accepted[section.mid] = section.simulcast
    return accepted


def answer_simulcast(sdp: str, offers: Mapping[str, SimulcastOffer]) -> str:
    """`sdp` (keyroom's answer) accepting the simulcast of each section in `offers` (by mid)."""
    if not offers:
        return sdp
    session, sections = split_sdp(sdp)
    for lines in sections:
        offer = offers.get(attribute(lines, "mid") or "")
        if offer is None or lines[0].split(" ", 2)[1] == "0":
            continue
        added = [f"a=extmap:{offer.rid_ext} {RID_URI}"]
        if offer.repaired_rid_ext is not None:
            added.append(f"a=extmap:{offer.repaired_rid_ext} {REPAIRED_RID_URI}")
        added += [f"a=rid:{rid} recv" for rid in offer.rids]
        added.append("a=simulcast:recv " + ";".join(offer.rids))
        lines.extend(added)
    return join_sdp(session, sections)


def rid_extension_ids(sdp: str) -> tuple[int, int]:
    """The RID and repaired-RID ids `offer_simulcast` gives `sdp`: the first two one-byte ids
    no `a=extmap` of it uses."""
    used = {
        line[len("a=extmap:") :].split(" ")[0].split("/")[0]
        for line in sdp.splitlines()
        if line.startswith("a=extmap:")
    }
    free = [n for n in range(1, 15) if str(n) not in used]
    if len(free) < 2:
        raise ValueError("no free one-byte header extension id for the RID")
    return free[0], free[1]


def offer_simulcast(sdp: str, layers: Mapping[str, Sequence[str]]) -> str:
    """`sdp` (a client's offer) sending the RIDs `layers` names in each section (by mid), as
    Chromium offers `sendEncodings` with rids: for clients whose stack does not (aiortc)."""
    if not layers:
        return sdp
    session, sections = split_sdp(sdp)
    rid_ext, repaired_ext = rid_extension_ids(sdp)
    for lines in sections:
        rids = layers.get(attribute(lines, "mid") or "")
        if not rids:
            continue
        lines.append(f"a=extmap:{rid_ext} {RID_URI}")
        lines.append(f"a=extmap:{repaired_ext} {REPAIRED_RID_URI}")
        lines.extend(f"a=rid:{rid} send" for rid in rids)
        lines.append("a=simulcast:send " + ";".join(rids))
    return join_sdp(session, sections)
