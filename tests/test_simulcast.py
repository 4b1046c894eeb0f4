"""Simulcast in and per-subscriber layer switching, over bytes: SDP rid/simulcast reading and
answering, RID demux in the ingress, layer switches at keyframes with one continuous output
stream (sequence, timestamp, VP8 PictureID/TL0PICIDX), and the refusals."""

from __future__ import annotations

import struct

import pytest

from sfu.dynacast import IDLE_DELAY, Dynacast
from sfu.forwarder import SDES_MID, CodecInfo, DownTrack, PublishedTrack
from sfu.ingress import Ingress
from sfu.layerswitch import PAUSED
from sfu.rtcp import SenderReport
from sfu.rtp import RtpInfo, parse_rtp
from sfu.sdpinfo import RID_URI, BadSdp, SimulcastOffer, read_simulcast
from sfu.simulcast import answer_simulcast, on_layer_sender_report
from sfu.stats import DropReason, Stats
from sfu.vp8 import NO_DESCRIPTOR, Vp8Munger, read_descriptor
from tests.sink_helpers import ListSink

MID_ID, RID_ID = 1, 10
VP8 = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96)
OFFER = SimulcastOffer(("q", "h", "f"), RID_ID, 11)


def section(*extra: str) -> list[str]:
    return [
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:0",
        f"a=extmap:{RID_ID} {RID_URI}",
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        *extra,
    ]


def vp8(pid: int, tl0: int, key: bool) -> bytes:
    return bytes([0x90, 0xC0, 0x80 | pid >> 8, pid & 0xFF, tl0, 0x00 if key else 0x01]) + b"v" * 8


def rtp(ssrc: int, seq: int, ts: int, payload: bytes, *, mid: str = "", rid: str = "") -> bytes:
    elements = b""
    for ext_id, value in ((MID_ID, mid), (RID_ID, rid)):
        if value:
            elements += bytes([ext_id << 4 | len(value) - 1]) + value.encode()
    elements += b"\0" * (-len(elements) % 4)
    header = struct.pack("!BBHII", 0x90 if elements else 0x80, 96, seq, ts, ssrc)
    if elements:
        header += struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements
    return header + payload


def simulcast_track() -> tuple[PublishedTrack, Ingress, Stats]:
    track = PublishedTrack(
        sid="TR_v", cid="TR_v", kind="video", source="camera", name="", publisher_sid="PA_p"
    )
    stats = Stats()
    ingress = Ingress({track.sid: track}, stats)
    track.set_simulcast(OFFER)
    ingress.bind(track, "0", None, None, VP8, {MID_ID: SDES_MID})
    return track, ingress, stats


def subscribe(track: PublishedTrack, sink: ListSink, max_layer: int = 2) -> DownTrack:
    down = DownTrack(track, "PA_s")
    down.max_layer = max_layer
    down.configure(
        sink=sink, out_ssrc=77, mid="0", payload_types={96: 100}, extensions={SDES_MID: 1}
    )
    track.down_tracks.append(down)
    return down


# -- SDP ---------------------------------------------------------------------------------------


def test_a_chromium_simulcast_offer_is_read_lowest_layer_first() -> None:
    lines = section("a=rid:f send", "a=rid:h send", "a=rid:q send", "a=simulcast:send f;h;q")
    assert read_simulcast(lines) == OFFER
    # Unknown names keep the offer's order; alternatives and "~" (paused) are read.
    lines = section("a=rid:a send", "a=rid:b send", "a=simulcast:send a,x;~b")
    assert read_simulcast(lines + ["a=rid:x send"]) == SimulcastOffer(("a", "b"), RID_ID, 11)
    assert read_simulcast(section("a=rid:q send")) is None  # RIDs without simulcast


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (
            ["a=rid:a send", "a=rid:b send", "a=rid:c send", "a=rid:d send"]
            + ["a=simulcast:send a;b;c;d"],
            "more than 3 simulcast layers",
        ),
        (["a=rid:q send", "a=rid:q send", "a=simulcast:send q"], "duplicate a=rid:q"),
        (["a=rid:q send", "a=simulcast:send q;h"], "which no a=rid:h send declares"),
        (["a=rid:q send", "a=simulcast:send q;q"], "names a rid twice"),
        (["a=rid:q!x send", "a=simulcast:send q!x"], "malformed rid"),
        (["a=rid:q send", "a=simulcast:recv q"], "not a send simulcast"),
    ],
)
def test_bad_simulcast_offers_are_refused_with_the_reason(extra: list[str], reason: str) -> None:
    with pytest.raises(BadSdp, match=reason):
        read_simulcast(section(*extra))


def test_simulcast_without_the_rid_extension_is_refused() -> None:
    lines = ["m=video 9 UDP/TLS/RTP/SAVPF 96", "a=rid:q send", "a=simulcast:send q"]
    with pytest.raises(BadSdp, match="rtp-stream-id"):
        read_simulcast(lines)


def test_the_answer_accepts_each_layer_with_the_offers_extension_ids() -> None:
    answer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\nm=audio 9 X 111\r\na=mid:1\r\n"
    out = answer_simulcast(answer, {"0": OFFER})
    video, audio = out.split("m=audio")
    assert f"a=extmap:{RID_ID} {RID_URI}" in video
    assert "a=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f" in video
    assert "rid" not in audio


# -- ingress -----------------------------------------------------------------------------------


def test_layers_are_learnt_from_the_rid_once_and_bad_ones_dropped_and_counted() -> None:
    track, ingress, stats = simulcast_track()
    for n, rid in enumerate(("q", "h", "f")):
        ingress.on_rtp(rtp(100 + n, 1, 0, vp8(1, 1, True), mid="0", rid=rid))
    assert [layer.ssrc for layer in track.layers] == [100, 101, 102]
    ingress.on_rtp(rtp(101, 2, 0, vp8(1, 1, False)))  # no extension needed any more
    assert track.layers[1].receive.started and stats.packets_in == 4
    ingress.on_rtp(rtp(200, 1, 0, vp8(1, 1, True), mid="0", rid="x"))  # undeclared RID
    ingress.on_rtp(rtp(201, 1, 0, vp8(1, 1, True), mid="0", rid="h"))  # h switching SSRC
    assert stats.dropped[DropReason.BAD_LAYER.value] == 2 and stats.packets_in == 4
    assert track.layers[1].ssrc == 101
    assert [layer["rid"] for layer in track.info()["simulcast"]] == ["q", "h", "f"]  # type: ignore[index]


# -- layer switching ---------------------------------------------------------------------------


class Publisher:
    """Three layers' packets in step: per layer its own SSRC, sequence, timestamp and PictureID
    bases, as independent encoders have."""

    def __init__(self, track: PublishedTrack) -> None:
        self.track = track
        self.seq = [1000, 30000, 65000]
        self.ts = [5, 1_000_000, 4_000_000_000]
        self.pid = [10, 20000, 32760]

    def frame(self, key: bool = False, packets: int = 2) -> None:
        for index, layer in enumerate(self.track.layers):
            for n in range(packets):
                payload = vp8(self.pid[index], self.pid[index] & 0xFF, key and n == 0)
                data = rtp(100 + index, self.seq[index] & 0xFFFF, self.ts[index], payload)
                layer.forward(data, parse_rtp(data))
                self.seq[index] += 1
            self.ts[index] = (self.ts[index] + 3000) & 0xFFFFFFFF
            self.pid[index] = (self.pid[index] + 1) & 0x7FFF


def out_fields(sink: ListSink) -> list[tuple[int, int, int, int]]:
    """(seq, ts, picture id, ssrc) of each packet sent."""
    fields = []
    for data in sink.sent:
        info = parse_rtp(data)
        desc = read_descriptor(data, info.payload_start, info.payload_end)
        fields.append((info.sequence, info.timestamp, desc.picture_id, info.ssrc))
    return fields


def assert_continuous(sink: ListSink) -> None:
    fields = out_fields(sink)
    for (seq0, ts0, pid0, _), (seq1, ts1, pid1, ssrc) in zip(fields, fields[1:], strict=False):
        assert ssrc == 77 and (seq1 - seq0) & 0xFFFF == 1
        assert 0 <= (ts1 - ts0) & 0xFFFFFFFF < 0x80000000
        assert (pid1 - pid0) & 0x7FFF in (0, 1)


def test_a_down_track_switches_only_at_a_keyframe_and_stays_continuous() -> None:
    track = simulcast_track()[0]
    sink = ListSink()
    down = subscribe(track, sink)
    publisher = Publisher(track)
    publisher.frame()
    assert sink.sent == []  # deltas before any keyframe
    publisher.frame(key=True)
    assert len(sink.sent) == 2 and down.layers and down.layers.current == 2
    assert down.set_layer(0) is True  # a keyframe of layer 0 must be asked for
    publisher.frame()
    assert down.layers.current == 2 and len(sink.sent) == 4  # the top goes on meanwhile
    publisher.frame(key=True)
    publisher.frame()
    assert down.layers.current == 0 and len(sink.sent) == 8
    assert_continuous(sink)
    assert down.set_layer(0) is False


def test_nacks_across_a_switch_resend_the_renumbered_packets_exactly() -> None:
    """The cache keeps headers (with the VP8 renumbering after a switch) and the publisher's
    packet: what a NACK resends is byte for byte what was sent."""
    track = simulcast_track()[0]
    sink = ListSink()
    down = subscribe(track, sink)
    publisher = Publisher(track)
    publisher.frame(key=True)
    down.set_layer(0)
    publisher.frame(key=True)
    publisher.frame()
    assert down.layers is not None and down.layers.current == 0
    assert down.layers.munger is not None and down.layers.munger.pid_offset  # renumbered copies
    sent = list(sink.sent)
    wanted = tuple(parse_rtp(p).sequence for p in sent)
    assert down.retransmit(wanted, now=0.0) == (len(sent), 0)
    assert sink.sent[len(sent) :] == sent


def test_a_pause_allocated_before_configuring_does_not_stick_to_a_simulcast_down_track() -> None:
    """bench-simulcast's capped page: congestion control paused it before its transport was up
    (single-layer state); the flag outlived the layers and kept it out of the compiled loop."""
    track = simulcast_track()[0]
    down = DownTrack(track, "PA_s")
    assert down.set_layer(PAUSED) is False and down.paused
    down.configure(
        sink=ListSink(), out_ssrc=77, mid="0", payload_types={96: 100}, extensions={SDES_MID: 1}
    )
    assert down.layers is not None and not down.paused


def test_pausing_and_resuming_leaves_no_sequence_gap() -> None:
    track = simulcast_track()[0]
    sink = ListSink()
    down = subscribe(track, sink, max_layer=1)
    publisher = Publisher(track)
    publisher.frame(key=True)
    assert down.layers and down.layers.current == 1
    assert down.set_layer(PAUSED) is False
    for _ in range(5):
        publisher.frame()
    assert len(sink.sent) == 2
    assert down.set_layer(1) is True
    publisher.frame()
    publisher.frame(key=True)
    assert len(sink.sent) == 4
    assert_continuous(sink)


def test_a_late_packet_from_before_the_switch_is_not_sent_twice() -> None:
    track = simulcast_track()[0]
    sink = ListSink()
    down = subscribe(track, sink, max_layer=0)
    publisher = Publisher(track)
    publisher.frame(key=True)
    layer = track.layers[0]
    late = rtp(100, (publisher.seq[0] - 3) & 0xFFFF, 0, vp8(1, 1, False))
    layer.forward(late, parse_rtp(late))
    assert len(sink.sent) == 2 and down.layers is not None


def test_a_long_stream_keeps_flowing_across_the_sequence_wrap_after_a_switch() -> None:
    """The switch point's bar moves with the stream (forward_layer checks it inline)."""
    track = simulcast_track()[0]
    sink = ListSink()
    down = subscribe(track, sink, max_layer=0)
    layer = track.layers[0]
    total = 0x10000 + 0x5000
    for n in range(total):
        data = rtp(100, (40000 + n) & 0xFFFF, n * 3000, vp8(n & 0x7FFF, n & 0xFF, n == 0))
        layer.forward(data, parse_rtp(data))
    assert len(sink.sent) == total and down.layers is not None and down.layers.switches == 1
    late = rtp(100, (40000 + total - 0x6000) & 0xFFFF, 0, vp8(1, 1, False))
    layer.forward(late, parse_rtp(late))  # far behind the moved bar: refused
    assert len(sink.sent) == total


def renumbered(munger: Vp8Munger, data: bytes) -> bytes:
    """`data` (a bare VP8 payload) as the munger's down-track sends it."""
    patch, resume = munger.patch(data, 0, len(data))
    return patch + data[resume:]


def test_the_vp8_munger_renumbers_across_a_switch_and_wraps() -> None:
    munger = Vp8Munger()
    first = vp8(0x7FFF, 255, True)
    assert munger.key == 0  # no offset: the caller passes the packets on unparsed
    other = vp8(500, 7, True)
    munger.rebase(other, 0, len(other), read_descriptor(first, 0, len(first)))
    out = renumbered(munger, other)
    desc = read_descriptor(out, 0, len(out))
    assert (desc.picture_id, desc.tl0) == (0, 0) and out[5:] == other[5:]  # wrapped
    later = vp8(501, 8, False)
    desc = read_descriptor(renumbered(munger, later), 0, len(later))
    assert (desc.picture_id, desc.tl0) == (1, 1)
    truncated = bytes([0x90, 0x80])
    assert munger.patch(truncated, 0, 2) == (b"", 0)
    # Nothing sent before the switch: nothing to follow, the numbers pass as they are.
    fresh = Vp8Munger()
    fresh.rebase(other, 0, len(other), NO_DESCRIPTOR)
    assert fresh.key == 0


def test_down_tracks_renumbering_alike_share_a_patch_and_others_get_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each packet is renumbered once per offsets, and the renumbered bytes shared: two
    subscribers that switched to the same layer from different pictures must not share them."""
    munged: dict[bytes, int] = {}
    patch = Vp8Munger.patch

    def counted(self: Vp8Munger, data: bytes, start: int, end: int) -> tuple[bytes, int]:
        munged[data] = munged.get(data, 0) + 1
        return patch(self, data, start, end)

    monkeypatch.setattr(Vp8Munger, "patch", counted)
    track = simulcast_track()[0]
    sinks = [ListSink(), ListSink(), ListSink()]
    # a and c start on the top layer, b on the middle one; all three then switch to the low
    # layer at the same keyframe, from different PictureIDs (a and c: the same one).
    a, b, c = (subscribe(track, sink, top) for sink, top in zip(sinks, (2, 1, 2), strict=True))
    publisher = Publisher(track)
    publisher.frame(key=True)
    for down in (a, b, c):
        down.set_layer(0)
    publisher.frame(key=True)
    for _ in range(3):
        publisher.frame()
    assert all(d.layers is not None and d.layers.current == 0 for d in (a, b, c))
    for sink in sinks:
        assert len(sink.sent) == 10
        assert_continuous(sink)
    pids = [[pid for _, _, pid, _ in out_fields(sink)] for sink in sinks]
    assert pids[0] == pids[2] and pids[0][2:] != pids[1][2:]
    # Each packet of the low layer since the switch was renumbered twice: for a and c, for b.
    assert list(munged.values()) == [2] * 8


def test_a_single_layer_track_resumed_after_a_pause_has_no_sequence_gap() -> None:
    track = PublishedTrack(
        sid="TR_s", cid="TR_s", kind="video", source="camera", name="", publisher_sid="PA_p"
    )
    track.codec = VP8
    sink = ListSink()
    down = subscribe(track, sink)
    seq = ts = 0
    for n in range(12):
        if n == 3:
            assert down.set_layer(PAUSED) is False
        if n == 8:
            assert down.set_layer(0) is True
        data = rtp(5, seq, ts, vp8(n, n, n in (0, 6, 9)))
        track.forward(data, parse_rtp(data))
        seq, ts = seq + 1, ts + 3000
    # Sent: 0-2, then (6 is a keyframe but paused) 9-11 after the resume's keyframe.
    assert len(sink.sent) == 6
    seqs = [parse_rtp(p).sequence for p in sink.sent]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))


def test_probe_padding_follows_a_media_packet_and_keeps_the_sequence_continuous() -> None:
    track = PublishedTrack(
        sid="TR_s", cid="TR_s", kind="video", source="camera", name="", publisher_sid="PA_p"
    )
    track.codec = VP8
    track.extensions = {MID_ID: SDES_MID}
    sink = ListSink()
    down = subscribe(track, sink)
    for n in range(4):
        if n == 1:
            down.padding = 2
        if n == 3:
            down.padding = 0
        data = rtp(5, 100 + n, 3000 * n, vp8(n, n, n == 0), mid="0")
        track.forward(data, parse_rtp(data))
    infos = [parse_rtp(p) for p in sink.sent]
    assert len(infos) == 8 and down.padding_sent == 4 * len(sink.sent[2])
    assert all(
        (b.sequence - a.sequence) & 0xFFFF == 1 for a, b in zip(infos, infos[1:], strict=False)
    )
    media, pad = sink.sent[1], sink.sent[2]
    assert infos[2].payload_start == infos[2].payload_end  # padding only
    assert pad[0] & 0x20 and not infos[2].marker and infos[2].timestamp == infos[1].timestamp
    assert pad[12 : infos[2].payload_start] == media[12 : infos[1].payload_start]  # extensions
    assert down.cache is not None and down.cache.get(infos[2].sequence) == pad


def test_keyframe_requests_name_only_the_layers_needed() -> None:
    track, ingress, _ = simulcast_track()
    for n, rid in enumerate(("q", "h", "f")):
        ingress.on_rtp(rtp(100 + n, 1, 0, vp8(1, 1, False), mid="0", rid=rid))
    first, second = subscribe(track, ListSink()), subscribe(track, ListSink())
    assert first.layers is not None and second.layers is not None
    first.layers.current = second.layers.current = 2
    assert track.keyframe_ssrcs() == [102]  # a decoder asked: the layer being forwarded
    second.set_layer(0)
    assert track.keyframe_ssrcs() == [100]  # a switch waits for the low layer's keyframe
    second.layers.current = 0
    assert track.keyframe_ssrcs() == [100, 102]


class RecordingTap:
    def __init__(self) -> None:
        self.ssrcs: list[int] = []
        self.reports: list[tuple[int, int]] = []

    def packet(self, data: bytes, info: RtpInfo) -> None:
        self.ssrcs.append(info.ssrc)

    def sender_report(self, ntp: int, rtp_timestamp: int) -> None:
        self.reports.append((ntp, rtp_timestamp))


def test_a_recording_taps_every_simulcast_layer_and_keeps_them_on() -> None:
    """A camera sends the layers its size and uplink allow: a recording takes each layer it
    taps (export keeps the best that arrived), asks each for a keyframe and keeps each on."""
    track, ingress, _ = simulcast_track()
    taps = [RecordingTap() for _ in track.layers]
    for layer, tap in zip(track.layers, taps, strict=True):
        layer.taps.append(tap)
    for n, rid in enumerate(("q", "h", "f")):
        ingress.on_rtp(rtp(100 + n, 1, 0, vp8(1, 1, True), mid="0", rid=rid))
    Publisher(track).frame(key=True)
    assert [set(t.ssrcs) for t in taps] == [{100}, {101}, {102}]
    report = SenderReport(ssrc=101, ntp=7 << 32, rtp_ts=5, packets=1, octets=1, reports=())
    on_layer_sender_report([track], report, 1.0)
    assert [t.reports for t in taps] == [[], [(7 << 32, 5)], []]
    assert track.keyframe_ssrcs() == [100, 101, 102]
    # Nobody subscribed: dynacast would leave only "q" on, but the recording wants them all.
    dynacast = Dynacast()
    assert dynacast.update([track], 0.0) == []
    assert dynacast.update([track], IDLE_DELAY) == []
    assert all(layer.active for layer in track.layers)
