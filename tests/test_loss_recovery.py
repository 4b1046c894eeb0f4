"""Loss recovery without sockets: uplink NACKs, publisher RTX, RTT, quality, Opus FEC/DTX.

Time is passed in; every bad input (RTX without apt, a padding probe, ancient or duplicate
sequence numbers, NACK floods, absurd RTCP counts) is dropped and counted, never a crash.
"""

from __future__ import annotations

import struct

import pytest
from aiortc.rtp import RtpPacket

from sfu import uplinknack
from sfu.feedback import Feedback
from sfu.forwarder import CodecInfo, DownTrack, PublishedTrack
from sfu.ingress import Ingress
from sfu.opusfmtp import enable_fec_and_dtx
from sfu.quality import ConnectionQuality, level
from sfu.qualitymetrics import quality_metrics
from sfu.rtcp import Nack, ReportBlock, build_nack, build_remb, build_rr, parse_rtcp
from sfu.rtp import MalformedPacket, parse_rtp
from sfu.rtt import RttEstimator
from sfu.rtx import RtxStream, unwrap, wrap
from sfu.stats import DropReason, Stats
from sfu.uplinknack import (
    DUPLICATE,
    GAP,
    IN_ORDER,
    MAX_MISSING,
    MAX_RETRIES,
    REPAIR,
    RESTART,
    UplinkNacks,
    repeat_interval,
)
from tests.sink_helpers import ListSink

VP8 = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96, rtx_payload_type=97)
MEDIA, RTX = 1111, 2222


def rtp(
    seq: int, *, ssrc: int = MEDIA, pt: int = 96, payload: bytes = b"\x10" + bytes(30)
) -> bytes:
    packet = RtpPacket(payload_type=pt, sequence_number=seq, timestamp=9000, ssrc=ssrc)
    packet.payload = payload
    return packet.serialize()


def rtx_of(seq: int, rtx_seq: int, pt: int = 97) -> bytes:
    return rtp(rtx_seq, ssrc=RTX, pt=pt, payload=struct.pack("!H", seq) + b"\x10" + bytes(30))


# -- uplink gap tracking ------------------------------------------------------------------------


def test_gaps_repairs_and_duplicates_are_told_apart() -> None:
    nacks = UplinkNacks()
    assert [nacks.on_packet(s) for s in (65534, 65535, 0)] == [IN_ORDER] * 3  # across the wrap
    assert nacks.on_packet(3) == GAP and nacks.missing == 2
    assert nacks.on_packet(1) == REPAIR and nacks.repaired == 1
    assert nacks.on_packet(1) == DUPLICATE  # the retransmission of one that arrived after all
    assert nacks.on_packet(3) == DUPLICATE
    assert nacks.on_packet(60000) == DUPLICATE  # ancient: never NACKed, never forwarded twice
    assert nacks.on_packet(3 + uplinknack.MAX_GAP + 1) == RESTART and nacks.missing == 0


def test_nacks_are_retried_every_rtt_then_given_up() -> None:
    nacks = UplinkNacks()
    nacks.on_packet(10)
    nacks.on_packet(13)
    assert nacks.next_deadline(5.0) == pytest.approx(5.0 + uplinknack.FIRST_DELAY)
    step = repeat_interval(0.25)
    assert 0.25 < step < 0.3  # a little more than a round trip
    assert nacks.due(5.0, rtt=0.25) == [11, 12]
    assert nacks.due(5.25, rtt=0.25) == []  # the repair of the first NACK may still be coming
    assert nacks.next_deadline(5.25) == pytest.approx(5.0 + step)
    nacks.on_packet(11)
    times = [5.0]
    for _ in range(MAX_RETRIES + 2):
        times.append(times[-1] + step)  # as each due() sets the next deadline
    sent = [nacks.due(t, rtt=0.25) for t in times[1:]]
    assert sent[: MAX_RETRIES - 1] == [[12]] * (MAX_RETRIES - 1) and sent[-1] == []
    assert nacks.gave_up == 1 and nacks.missing == 0 and nacks.next_deadline(9.0) is None
    assert nacks.requested == 2 + MAX_RETRIES - 1


def test_without_a_measured_rtt_nacks_repeat_at_the_repair_round_trip() -> None:
    # A publisher subscribed to nothing has no RTT: its first repair, 0.2 s after the only NACK,
    # sets the repeat interval (a fixed 100 ms NACKed every loss two or three times).
    nacks = UplinkNacks()
    nacks.on_packet(10)
    nacks.on_packet(12)
    assert nacks.due(1.0, rtt=None) == [11]
    assert nacks.on_packet(11) == REPAIR
    nacks.on_repair(1.2)
    assert nacks.repair_rtt == pytest.approx(0.2)
    nacks.on_packet(14)
    assert nacks.due(2.0, rtt=None) == [13]
    assert nacks.due(2.2, rtt=None) == []  # libwebrtc would ignore it (resent < its RTT ago)
    assert nacks.due(2.0 + repeat_interval(0.2), rtt=None) == [13]
    # NACKed twice: the repair may answer the second NACK, so the time from the first is an
    # upper bound, taken only below the estimate.
    nacks.on_packet(13)
    nacks.on_repair(2.5)
    assert nacks.repair_rtt == pytest.approx(0.2)
    # A measured RTT wins; a reordered packet (never NACKed) is no sample either.
    nacks.on_packet(16)
    nacks.on_packet(15)
    nacks.on_repair(3.0)
    assert nacks.repair_rtt == pytest.approx(0.2)
    nacks.on_packet(18)
    assert nacks.due(4.0, rtt=0.05) == [17]
    assert nacks.due(4.0 + repeat_interval(0.05), rtt=0.05) == [17]


def test_a_huge_loss_burst_is_bounded() -> None:
    nacks = UplinkNacks()
    nacks.on_packet(0)
    for seq in range(200, 200 * 6, 200):  # five bursts of 199 lost packets
        assert nacks.on_packet(seq) == GAP
    assert nacks.missing == MAX_MISSING and nacks.gave_up == 5 * 199 - MAX_MISSING
    assert len(nacks.due(1.0, None)) == MAX_MISSING


# -- RTX ----------------------------------------------------------------------------------------


def test_rtx_unwraps_to_the_original_and_wraps_back() -> None:
    original = rtp(77)
    wrapped = wrap(original, parse_rtp(original), RTX, 97, 5)
    info = parse_rtp(wrapped)
    assert (info.ssrc, info.payload_type, info.sequence) == (RTX, 97, 5)
    assert unwrap(wrapped, info, MEDIA, 96) == original
    probe = rtp(6, ssrc=RTX, pt=97, payload=b"\x00")  # a padding-only bandwidth probe
    assert unwrap(probe, parse_rtp(probe), MEDIA, 96) is None


def ingress_with_video(
    codec: CodecInfo = VP8,
) -> tuple[Ingress, PublishedTrack, ListSink, list[int]]:
    track = PublishedTrack(
        sid="TR_v", cid="c", kind="video", source="camera", name="", publisher_sid="PA_p"
    )
    ingress = Ingress({track.sid: track}, Stats())
    ingress.bind(track, "0", MEDIA, RTX, codec, {})
    down = DownTrack(track, "PA_s")
    sink = ListSink()
    down.configure(sink=sink, out_ssrc=3333, mid="0", payload_types={96: 96}, extensions={})
    track.down_tracks.append(down)
    gaps: list[int] = []
    ingress.on_gap = lambda: gaps.append(1)
    return ingress, track, sink, gaps


def test_publisher_rtx_repairs_a_gap_and_is_forwarded_once() -> None:
    ingress, track, sink, gaps = ingress_with_video()
    for seq in (1, 2, 4):
        ingress.on_rtp(rtp(seq))
    assert gaps == [1] and ingress.nacks[MEDIA].missing == 1
    ingress.on_rtp(rtx_of(3, rtx_seq=100))
    ingress.on_rtp(rtx_of(3, rtx_seq=101))  # asked twice, repaired twice: forwarded once
    ingress.on_rtp(rtp(3))  # the original, late
    out = [parse_rtp(p).sequence for p in sink.sent]
    assert len(out) == 4 and sorted(out) == [out[0] + n for n in range(4)]
    stats = ingress.stats
    assert stats.rtx_received == 2 and stats.dropped[DropReason.DUPLICATE.value] == 2
    assert track.receive.received == 4  # a duplicate does not count as received


def test_rtx_with_a_wrong_payload_type_or_without_apt_is_dropped_and_counted() -> None:
    ingress, _, sink, _ = ingress_with_video()
    ingress.on_rtp(rtp(1))
    ingress.on_rtp(rtx_of(2, rtx_seq=1, pt=98))  # not the negotiated RTX payload type
    ingress.on_rtp(rtp(3, ssrc=RTX, pt=97, payload=b"\x01"))  # a padding probe
    assert ingress.stats.dropped[DropReason.MALFORMED.value] == 1
    assert ingress.stats.dropped[DropReason.RTX_PROBE.value] == 1
    no_apt = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96)
    ingress, _, sink, _ = ingress_with_video(no_apt)  # RTX announced, not negotiated
    ingress.on_rtp(rtx_of(2, rtx_seq=1))
    assert ingress.stats.dropped[DropReason.NOT_GRANTED.value] == 1 and not sink.sent


# -- NACKs towards the publisher, timed by the subscriber PC's RTT ------------------------------


def test_the_repair_round_trip_is_learnt_on_a_path_longer_than_the_default() -> None:
    # 200 ms: every packet is NACKed again at 100 ms before its repair comes, at 200 ms.
    nacks = UplinkNacks()
    nacks.on_packet(1)
    nacks.on_packet(3)
    assert nacks.due(1.0, None) == [2]
    assert nacks.due(1.0 + repeat_interval(0.1), None) == [2]
    nacks.on_packet(2)
    nacks.on_repair(1.2)
    assert nacks.repair_rtt == pytest.approx(0.2)
    nacks.on_packet(5)
    assert nacks.due(2.0, None) == [4]
    assert nacks.due(2.2, None) == []  # no repeat within the learnt round trip


def test_the_ingress_reports_each_uplink_repair_to_its_owner() -> None:
    ingress, _, _, _ = ingress_with_video()
    repaired: list[UplinkNacks] = []
    ingress.on_repair = repaired.append
    for seq in (1, 2, 4):
        ingress.on_rtp(rtp(seq))
    tracker = ingress.nacks[MEDIA]
    assert tracker.due(5.0, None) == [3]
    ingress.on_rtp(rtx_of(3, rtx_seq=100))
    assert repaired == [tracker]
    tracker.on_repair(5.25)
    assert tracker.repair_rtt == pytest.approx(0.25)


def test_feedback_nacks_the_publisher_and_retries_at_the_measured_rtt() -> None:
    ingress, track, _, _ = ingress_with_video()
    fb = Feedback(
        tracks={track.sid: track},
        subscriptions={},
        stats=ingress.stats,
        max_video_bitrate=lambda: 0,
        rtcp_ssrc=4242,
        uplink=ingress.nacks,
    )
    ingress.on_gap = lambda: fb.uplink_gap(now)
    now = 10.0
    for seq in (1, 2, 5):
        ingress.on_rtp(rtp(seq))
    assert fb.next_deadline() == pytest.approx(10.005)
    fb.handle_timer(10.005)
    sent = [m for packet, _ in fb.to_publisher for m in parse_rtcp(packet)]
    assert sent == [Nack(sender_ssrc=4242, media_ssrc=MEDIA, lost=(3, 4))]
    fb.to_publisher.clear()
    fb.rtt.rtt = 0.3
    ingress.on_rtp(rtx_of(3, rtx_seq=1))
    assert fb.next_deadline() == pytest.approx(10.005 + repeat_interval(uplinknack.DEFAULT_RTT))
    fb.handle_timer(10.2)
    sent = [m for packet, _ in fb.to_publisher for m in parse_rtcp(packet)]
    assert sent == [Nack(sender_ssrc=4242, media_ssrc=MEDIA, lost=(4,))]
    assert fb.next_deadline() == pytest.approx(10.2 + repeat_interval(0.3))  # past one RTT
    assert ingress.stats.uplink_nacks == 3


# -- subscribers: NACK floods and absurd RTCP ---------------------------------------------------


def subscriber_feedback(packets: int) -> tuple[Feedback, ListSink]:
    """A subscriber's Feedback watching a down-track that was sent `packets` packets."""
    ingress, track, sink, _ = ingress_with_video()
    down = track.down_tracks[0]
    for seq in range(1, packets + 1):
        ingress.on_rtp(rtp(seq))
    fb = Feedback(
        tracks={}, subscriptions={"TR_v": down}, stats=Stats(), max_video_bitrate=lambda: 0,
        rtcp_ssrc=1,
    )  # fmt: skip
    fb.watch(down)
    return fb, sink


def test_a_nack_flood_for_ancient_packets_resends_nothing_and_a_flood_is_budgeted() -> None:
    fb, sink = subscriber_feedback(399)
    first = parse_rtp(sink.sent[0]).sequence
    sink.sent.clear()
    ancient = [(first - 5000 + n) & 0xFFFF for n in range(200)]
    fb.on_subscriber_rtcp(build_nack(7, 3333, ancient), 1.0)
    assert not sink.sent and fb.stats.retransmissions == 0
    recent = [(first + n) & 0xFFFF for n in range(399)]
    for n in range(50):  # the same NACK, 50 times in 50 ms
        fb.on_subscriber_rtcp(build_nack(7, 3333, recent), 1.0 + n / 1000)
    assert fb.stats.retransmissions == len(sink.sent) <= 399
    assert fb.stats.dropped[DropReason.NACK_LIMITED.value] > 0


def test_a_repeated_nack_on_a_short_path_is_answered_again() -> None:
    # The subscriber's RTT is 4 ms: its NACK repeated 20 ms after the resend means the resend
    # was lost (a fixed 100 ms interval refused it, and the frame waited for the next repeat).
    fb, sink = subscriber_feedback(19)
    fb.rtt.rtt = 0.004
    lost = parse_rtp(sink.sent[5]).sequence
    sink.sent.clear()
    fb.on_subscriber_rtcp(build_nack(7, 3333, [lost]), 1.0)
    fb.on_subscriber_rtcp(build_nack(7, 3333, [lost]), 1.02)
    assert fb.stats.retransmissions == 2 == len(sink.sent)
    assert fb.stats.dropped[DropReason.NACK_LIMITED.value] == 0


def test_absurd_rtcp_counts_are_refused() -> None:
    block = ReportBlock(ssrc=3333, fraction_lost=10, packets_lost=5, highest_seq=9, jitter=9,
                        lsr=0, dlsr=0)  # fmt: skip
    report = bytearray(build_rr(1, [block]))
    report[0] = (report[0] & 0xE0) | 31  # claims 31 report blocks, carries one
    with pytest.raises(MalformedPacket):
        parse_rtcp(bytes(report))
    fb = Feedback(tracks={}, subscriptions={}, stats=Stats(), max_video_bitrate=lambda: 0,
                  rtcp_ssrc=1)  # fmt: skip
    fb.on_subscriber_rtcp(bytes(report), 1.0)
    assert fb.stats.dropped[DropReason.MALFORMED.value] == 1
    remb = bytearray(build_remb(1, 300_000, [3333]))
    remb[12 + 4] = 200  # 200 SSRCs announced, one present
    fb.on_subscriber_rtcp(bytes(remb), 1.0)
    assert fb.stats.dropped[DropReason.MALFORMED.value] == 2


# -- RTT and quality ----------------------------------------------------------------------------


def test_rtt_from_lsr_and_dlsr_ignores_unknown_and_absurd_samples() -> None:
    rtt = RttEstimator()
    ntp = (3_900_000_000 << 32) | (1 << 31)
    rtt.sent(ntp, 100.0)
    lsr = (ntp >> 16) & 0xFFFFFFFF
    assert rtt.on_block(lsr, int(0.05 * 65536), 100.15) == pytest.approx(0.1, abs=1e-3)
    assert rtt.on_block(lsr ^ 1, 0, 100.2) is None  # an SR keyroom never sent
    assert rtt.on_block(lsr, 0xFFFFFFFF, 100.2) is None  # DLSR longer than the wait
    assert rtt.on_block(0, 0, 100.2) is None
    assert rtt.samples == 1 and rtt.ignored == 2 and rtt.rtt == pytest.approx(0.1, abs=1e-3)


def test_subscriber_reports_feed_rtt_and_quality_which_changes_only_when_it_holds() -> None:
    ingress, track, _, _ = ingress_with_video()
    down = track.down_tracks[0]
    ingress.on_rtp(rtp(1))
    track.last_sender_report = ((3_900_000_000 << 32), 9000)
    fb = Feedback(tracks={}, subscriptions={"TR_v": down}, stats=Stats(),
                  max_video_bitrate=lambda: 0, rtcp_ssrc=1)  # fmt: skip
    fb.watch(down)
    fb.start_sender_reports(0.0)
    fb.handle_timer(1.0)  # an SR leaves
    lsr = ((3_900_000_000 << 32) >> 16) & 0xFFFFFFFF
    block = ReportBlock(ssrc=3333, fraction_lost=64, packets_lost=5, highest_seq=9,
                        jitter=900, lsr=lsr, dlsr=0)  # fmt: skip
    rtts: list[tuple[float, float]] = []

    def on_rtt(sample: float, sent_at: float, now: float) -> None:
        rtts.append((sample, sent_at))

    fb.congestion.on_rtt = on_rtt  # type: ignore[method-assign]
    fb.on_subscriber_rtcp(build_rr(7, [block]) + build_remb(7, 250_000, [3333]), 1.08)
    assert fb.rtt.rtt == pytest.approx(0.08)
    # Congestion control hears each sample with when its SR left (it settles REMB probes).
    assert len(rtts) == 1
    assert rtts[0][0] == pytest.approx(0.08) and rtts[0][1] == pytest.approx(1.0)
    shot = fb.quality.snapshot(fb.rtt.rtt)
    assert (shot.loss_down, shot.jitter_ms, shot.bandwidth_bps) == (0.25, 10.0, 250_000)
    fb.handle_timer(2.0)
    assert fb.quality_changes == ["poor"]  # the first level is announced at once
    good = ReportBlock(ssrc=3333, fraction_lost=0, packets_lost=5, highest_seq=99, jitter=90,
                       lsr=lsr, dlsr=0)  # fmt: skip
    fb.on_subscriber_rtcp(build_rr(7, [good]), 2.5)
    fb.handle_timer(4.0)
    assert fb.quality_changes == ["poor"]  # one good evaluation is not enough
    fb.handle_timer(6.0)
    assert fb.quality_changes == ["poor", "excellent"]


def test_quality_levels() -> None:
    assert level(0.0, 0.05, 0.01) == "excellent"
    assert level(0.05, 0.2, 0.01) == "good"
    assert level(0.2, 0.05, 0.01) == "poor" and level(0.0, 1.0, 0.0) == "poor"
    healthy = ConnectionQuality()
    healthy.on_up_block("TR_a", 0)
    assert healthy.evaluate(0.05) is None and healthy.level == "excellent"  # no event at all
    quality = ConnectionQuality()
    quality.on_down_block(1, 9999, -5, 90000)  # out-of-range values from the network: clamped
    assert quality.snapshot(None).loss_down == pytest.approx(255 / 256, abs=1e-3)


# -- Opus ---------------------------------------------------------------------------------------


def test_opus_answers_ask_for_in_band_fec_and_dtx() -> None:
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\n"
        "a=fmtp:111 minptime=10;useinbandfec=0\r\na=rtpmap:0 PCMU/8000\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 109\r\na=rtpmap:109 OPUS/48000/2\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
    )
    out = enable_fec_and_dtx(sdp)
    assert "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\n" in out
    assert "a=rtpmap:109 OPUS/48000/2\r\na=fmtp:109 useinbandfec=1;usedtx=1\r\n" in out
    assert "a=fmtp:0" not in out and "a=fmtp:96" not in out


def test_quality_reaches_metrics_as_distributions_without_identities() -> None:
    shots: list[dict[str, object]] = [
        {"quality": "excellent", "rtt_ms": 40.0, "loss_down": 0.0, "loss_up": 0.0,
         "jitter_ms": 2.0, "bandwidth_bps": 2_000_000},
        {"quality": "poor", "rtt_ms": 300.0, "loss_down": 0.15, "loss_up": 0.0,
         "jitter_ms": 50.0, "bandwidth_bps": None},
        {"quality": None, "rtt_ms": None, "loss_down": 0.0, "loss_up": 0.0, "jitter_ms": 0.0,
         "bandwidth_bps": None},
    ]  # fmt: skip
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in quality_metrics(shots)
        for s in family.samples
    }
    assert samples[("keyroom_connection_quality", (("quality", "poor"),))] == 1
    assert samples[("keyroom_connection_quality", (("quality", "good"),))] == 0
    assert samples[("keyroom_connection_rtt_seconds_bucket", (("le", "0.05"),))] == 1
    assert samples[("keyroom_connection_rtt_seconds_count", ())] == 2
    assert samples[("keyroom_connection_loss_ratio_bucket", (("le", "0.1"),))] == 2
    assert samples[("keyroom_connection_bandwidth_bps_count", ())] == 1
    assert all(set(dict(labels)) <= {"le", "quality"} for _, labels in samples)


def test_subscriber_nacks_are_answered_on_the_negotiated_rtx_stream() -> None:
    ingress, track, sink, _ = ingress_with_video()
    down = track.down_tracks[0]
    down.rtx = RtxStream(ssrc=4444, payload_type=99, seq_start=65535)
    for seq in range(1, 5):
        ingress.on_rtp(rtp(seq))
    sent = list(sink.sent)
    lost = [parse_rtp(p).sequence for p in sent[1:3]]
    sink.sent.clear()
    assert down.retransmit(tuple(lost), 1.0) == (2, 0)
    infos = [parse_rtp(p) for p in sink.sent]
    assert [(i.ssrc, i.payload_type, i.sequence) for i in infos] == [
        (4444, 99, 65535),
        (4444, 99, 0),
    ]
    assert [unwrap(p, i, 3333, 96) for p, i in zip(sink.sent, infos, strict=True)] == sent[1:3]
