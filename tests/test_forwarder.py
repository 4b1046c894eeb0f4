"""The forwarding core without sockets: fan-out, keyframe gating, NACK answers, SR translation."""

from __future__ import annotations

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from sfu.forwarder import SDES_MID, CodecInfo, DownTrack, PublishedTrack
from sfu.rtcp import SenderReport, parse_rtcp
from sfu.rtp import parse_rtp
from tests.sink_helpers import ListSink

ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
VP8_KEY = b"\x10" + b"\x00" + bytes(40)  # S=1, PID 0; VP8 header P bit 0 = keyframe
VP8_DELTA = b"\x10" + b"\x01" + bytes(40)


def publisher_packet(seq: int, ts: int, payload: bytes, *, mid: str = "0") -> bytes:
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts)
    packet.ssrc = 1111
    packet.payload = payload
    packet.extensions.mid = mid
    packet.extensions.abs_send_time = 0x123456
    return packet.serialize(_ext_map({SDES_MID: 3, ABS_SEND_TIME: 5}))


def _ext_map(ids: dict[str, int]) -> HeaderExtensionsMap:
    ext_map = HeaderExtensionsMap()
    ext_map.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for u, i in ids.items()]
        )
    )
    return ext_map


def video_track() -> PublishedTrack:
    track = PublishedTrack(
        sid="TR_v", cid="c", kind="video", source="camera", name="", publisher_sid="PA_p"
    )
    track.codec = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96)
    track.extensions = {3: SDES_MID, 5: ABS_SEND_TIME}
    return track


def subscribe(track: PublishedTrack, sink: ListSink, *, ssrc: int, mid: str) -> DownTrack:
    down = DownTrack(track, "PA_s")
    down.configure(
        sink=sink,
        out_ssrc=ssrc,
        mid=mid,
        payload_types={96: 97},
        extensions={SDES_MID: 1, ABS_SEND_TIME: 2},
    )
    track.down_tracks.append(down)
    return down


def forward(track: PublishedTrack, data: bytes) -> None:
    track.forward(data, parse_rtp(data))


def test_fan_out_rewrites_per_subscriber_and_waits_for_a_keyframe() -> None:
    track = video_track()
    sinks = [ListSink() for _ in range(3)]
    for n, sink in enumerate(sinks):
        subscribe(track, sink, ssrc=5000 + n, mid=str(n + 1))
    forward(track, publisher_packet(10, 900, VP8_DELTA))
    assert all(sink.sent == [] for sink in sinks)  # no keyframe yet
    forward(track, publisher_packet(11, 3900, VP8_KEY))
    forward(track, publisher_packet(12, 3900, VP8_DELTA))
    ext = _ext_map({SDES_MID: 1, ABS_SEND_TIME: 2})
    for n, sink in enumerate(sinks):
        first, second = (RtpPacket.parse(p, ext) for p in sink.sent)
        assert (first.ssrc, first.payload_type) == (5000 + n, 97)
        assert first.extensions.mid == str(n + 1)
        assert first.extensions.abs_send_time == 0x123456
        assert (second.sequence_number - first.sequence_number) % 65536 == 1
        assert second.timestamp == first.timestamp
        assert second.payload == VP8_DELTA
    assert track.counters.packets_in == 3 and track.counters.packets_out == 6


def test_unmapped_payload_type_and_muted_track_forward_nothing() -> None:
    track = video_track()
    sink = ListSink()
    down = subscribe(track, sink, ssrc=1, mid="1")
    down.waiting_for_keyframe = False
    packet = RtpPacket(payload_type=111, sequence_number=1, timestamp=1, ssrc=1111)
    packet.payload = VP8_KEY
    forward(track, packet.serialize())
    track.set_muted(True)
    forward(track, publisher_packet(2, 2, VP8_KEY))
    assert sink.sent == []
    track.set_muted(False)
    assert down.waiting_for_keyframe  # unmuting video restarts at a keyframe
    forward(track, publisher_packet(3, 3, VP8_DELTA))
    forward(track, publisher_packet(4, 4, VP8_KEY))
    assert len(sink.sent) == 1


def test_nack_is_answered_from_the_cache() -> None:
    track = video_track()
    sink = ListSink()
    down = subscribe(track, sink, ssrc=7, mid="1")
    for seq in range(20):
        forward(track, publisher_packet(100 + seq, 3000, VP8_KEY if seq == 0 else VP8_DELTA))
    sent = list(sink.sent)
    wanted = [parse_rtp(sent[i]).sequence for i in (3, 7)]
    assert down.retransmit((wanted[0], wanted[1], (wanted[1] + 1000) % 65536), now=0.0) == (2, 0)
    assert sink.sent[-2:] == [sent[3], sent[7]]


def test_down_tracks_cache_headers_and_share_the_publishers_payload() -> None:
    """Two subscribers' caches answer NACKs with their own exact packets (padding included),
    while holding the publisher's packet once: only the rewritten headers are per subscriber."""
    track = video_track()
    sinks = [ListSink(), ListSink()]
    downs = [subscribe(track, sink, ssrc=7 + n, mid=str(n + 1)) for n, sink in enumerate(sinks)]
    sources = []
    for seq in range(10):
        packet = RtpPacket(payload_type=96, sequence_number=100 + seq, timestamp=3000, ssrc=1111)
        packet.payload = VP8_KEY if seq == 0 else VP8_DELTA
        packet.padding_size = 4 * (seq % 2)
        packet.extensions.mid = "0"
        sources.append(packet.serialize(_ext_map({SDES_MID: 3, ABS_SEND_TIME: 5})))
        forward(track, sources[-1])
    for down, sink in zip(downs, sinks, strict=True):
        sent = list(sink.sent)
        wanted = tuple(parse_rtp(p).sequence for p in sent)
        assert down.retransmit(wanted, now=0.0) == (10, 0)
        assert sink.sent[10:] == sent
        assert down.cache is not None
        slots = [down.cache._sources[s & 511] for s in wanted]
        assert all(kept is src for kept, src in zip(slots, sources, strict=True))
        assert all(len(down.cache._heads[s & 511]) < 40 for s in wanted)


def test_a_nack_flood_is_not_amplified() -> None:
    """One NACK naming every cached packet many times, repeated: each packet goes out once per
    interval, and the bytes resent stay within the budget (burst + share of the media)."""
    track = video_track()
    sink = ListSink()
    down = subscribe(track, sink, ssrc=7, mid="1")
    for seq in range(500):
        forward(track, publisher_packet(100 + seq, 3000 + seq, VP8_KEY if seq == 0 else VP8_DELTA))
    forwarded = len(sink.sent)
    media_bytes = sum(len(p) for p in sink.sent)
    every = tuple(parse_rtp(p).sequence for p in sink.sent) * 10
    total_sent = total_refused = 0
    for n in range(50):  # 50 NACKs within 50 ms: all inside one retransmission interval
        sent, refused = down.retransmit(every, now=n * 0.001)
        total_sent, total_refused = total_sent + sent, total_refused + refused
    resent = sink.sent[forwarded:]
    assert len(resent) == total_sent and len(set(resent)) == len(resent)  # no packet twice
    assert sum(len(p) for p in resent) <= down.retransmits.burst + 0.25 * media_bytes
    assert total_refused > 0


def test_sender_report_is_translated_to_the_down_track() -> None:
    track = video_track()
    sink = ListSink()
    down = subscribe(track, sink, ssrc=77, mid="1")
    assert down.sender_report() is None  # nothing forwarded yet
    forward(track, publisher_packet(1, 10_000, VP8_KEY))
    out_ts = parse_rtp(sink.sent[0]).timestamp
    track.on_sender_report(ntp=0xAABBCCDD00112233, rtp_timestamp=13_000, now=1.0)
    report = down.sender_report()
    assert report is not None
    (sr,) = parse_rtcp(report)
    assert isinstance(sr, SenderReport)
    assert sr.ssrc == 77 and sr.ntp == 0xAABBCCDD00112233
    assert sr.rtp_ts == (out_ts + 3000) % (1 << 32)
    assert sr.packets == 1 and sr.octets == len(VP8_KEY)


class DownSink(ListSink):
    """A transport that is not connected yet: it refuses every packet."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False

    def send(self, data: bytes) -> bool:
        if self.up:
            self.sent.append(data)
        return self.up


def test_a_keyframe_lost_before_the_transport_is_up_keeps_the_wait() -> None:
    track = video_track()
    sink = DownSink()
    down = subscribe(track, sink, ssrc=9, mid="1")
    forward(track, publisher_packet(1, 3000, VP8_KEY))  # dropped: transport not up
    sink.up = True
    forward(track, publisher_packet(2, 6000, VP8_DELTA))
    assert sink.sent == [] and down.waiting_for_keyframe
    forward(track, publisher_packet(3, 9000, VP8_KEY))
    assert len(sink.sent) == 1 and not down.waiting_for_keyframe


def test_a_subscriber_waiting_for_a_keyframe_asks_again_while_deltas_flow() -> None:
    """The first request can be lost, and libwebrtc publishers send keyframes only when asked:
    each delta a waiting subscriber skips asks again (the publisher's limiter spaces them)."""
    track = video_track()
    asked: list[str] = []
    track.request_keyframe = lambda: asked.append(track.sid)
    sink = ListSink()
    subscribe(track, sink, ssrc=5000, mid="1")
    forward(track, publisher_packet(10, 900, VP8_DELTA))
    forward(track, publisher_packet(11, 1800, VP8_DELTA))
    assert asked == ["TR_v", "TR_v"] and sink.sent == []
    forward(track, publisher_packet(12, 2700, VP8_KEY))
    forward(track, publisher_packet(13, 3600, VP8_DELTA))
    assert asked == ["TR_v", "TR_v"] and len(sink.sent) == 2  # no more asking once it flows
