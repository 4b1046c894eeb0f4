"""A participant's RTCP state machine, driven with chosen `now` values (no sockets, no sleep)."""

from __future__ import annotations

from aiortc.rtp import RtpPacket

from sfu.feedback import DEFAULT_VIDEO_BITRATE_CAP, Feedback
from sfu.forwarder import CodecInfo, DownTrack, PublishedTrack
from sfu.rtcp import (
    Pli,
    ReceiverReport,
    Remb,
    RtcpMessage,
    SenderReport,
    build_fir,
    build_nack,
    build_pli,
    build_sr,
    parse_rtcp,
)
from sfu.rtp import parse_rtp
from sfu.stats import DropReason, Stats
from tests.sink_helpers import ListSink

VP8_KEY = b"\x10\x00" + bytes(40)


def track(
    sid: str, kind: str = "video", *, ssrc: int, keyframe_interval: float = 0.5
) -> PublishedTrack:
    published = PublishedTrack(
        sid=sid,
        cid=f"c_{sid}",
        kind=kind,
        source="camera" if kind == "video" else "microphone",
        name="",
        publisher_sid="PA_pub",
        keyframe_interval=keyframe_interval,
    )
    mime = "video/VP8" if kind == "video" else "audio/opus"
    published.codec = CodecInfo(mime_type=mime, clock_rate=90000, payload_type=96)
    published.ssrc = ssrc
    return published


def feedback(
    tracks: dict[str, PublishedTrack] | None = None,
    subscriptions: dict[str, DownTrack] | None = None,
    max_video_bitrate: int = 0,
) -> Feedback:
    return Feedback(
        tracks=tracks if tracks is not None else {},
        subscriptions=subscriptions if subscriptions is not None else {},
        stats=Stats(),
        max_video_bitrate=lambda: max_video_bitrate,
        rtcp_ssrc=4242,
    )


def sent_to_publisher(fb: Feedback) -> list[RtcpMessage]:
    messages = [m for packet, _ in fb.to_publisher for m in parse_rtcp(packet)]
    fb.to_publisher.clear()
    return messages


def test_keyframe_requests_are_throttled_and_a_suppressed_one_goes_when_the_window_ends() -> None:
    video = track("TR_v", ssrc=1111)
    fb = feedback({video.sid: video})
    fb.request_keyframe(video, 10.0)
    assert sent_to_publisher(fb) == [Pli(sender_ssrc=4242, media_ssrc=1111)]
    assert fb.to_publisher == [] and fb.next_deadline() is None

    fb.request_keyframe(video, 10.1)
    fb.request_keyframe(video, 10.3)
    assert sent_to_publisher(fb) == []
    assert fb.next_deadline() == 10.5  # one pending request, at the end of the window

    fb.handle_timer(10.49)
    assert sent_to_publisher(fb) == []
    fb.handle_timer(10.5)
    assert sent_to_publisher(fb) == [Pli(sender_ssrc=4242, media_ssrc=1111)]
    assert fb.next_deadline() is None


def test_keyframe_requests_flag_themselves_for_the_keyframe_counter() -> None:
    video = track("TR_v", ssrc=1111)
    fb = feedback({video.sid: video})
    fb.request_keyframe(video, 0.0)
    assert [is_request for _packet, is_request in fb.to_publisher] == [True]


def test_keyframe_interval_is_the_least_time_between_two_requests() -> None:
    # docs/configuration.md, [rtc] keyframe_interval: the least time between two PLIs per track.
    video = track("TR_v", ssrc=1111, keyframe_interval=2.0)
    fb = feedback({video.sid: video})
    for now in (0.0, 1.0, 1.9):
        fb.request_keyframe(video, now)
    assert len(sent_to_publisher(fb)) == 1
    assert fb.next_deadline() == 2.0
    fb.handle_timer(2.0)
    assert len(sent_to_publisher(fb)) == 1
    fb.request_keyframe(video, 3.9)
    assert sent_to_publisher(fb) == [] and fb.next_deadline() == 4.0


def test_no_keyframe_requests_for_audio_or_removed_tracks() -> None:
    audio, video = track("TR_a", "audio", ssrc=1), track("TR_v", ssrc=2)
    tracks = {audio.sid: audio, video.sid: video}
    fb = feedback(tracks)
    fb.request_keyframe(audio, 0.0)
    fb.request_keyframe(video, 0.0)
    fb.request_keyframe(video, 0.1)
    assert len(sent_to_publisher(fb)) == 1
    del tracks[video.sid]
    fb.forget_track(video)
    assert fb.next_deadline() is None  # the suppressed request left with the track
    fb.request_keyframe(video, 5.0)
    assert sent_to_publisher(fb) == []


def receiving(published: PublishedTrack, octets: int) -> None:
    published.receive.update(100)
    published.counters.bytes_in += octets


def test_receiver_reports_and_remb_go_once_a_second_with_the_default_cap() -> None:
    v1, v2, audio = track("TR_1", ssrc=11), track("TR_2", ssrc=12), track("TR_a", "audio", ssrc=13)
    for published in (v1, v2, audio):
        receiving(published, 1000)
    fb = feedback({t.sid: t for t in (v1, v2, audio)})
    fb.start_publisher_reports(100.0)
    assert fb.next_deadline() == 101.0
    fb.handle_timer(100.99)
    assert fb.to_publisher == []
    fb.handle_timer(101.0)
    rr, remb = sent_to_publisher(fb)
    assert isinstance(rr, ReceiverReport) and {b.ssrc for b in rr.reports} == {11, 12, 13}
    # The cap is per video track; one REMB lists both video SSRCs.
    assert remb == Remb(sender_ssrc=4242, bitrate=2 * DEFAULT_VIDEO_BITRATE_CAP, ssrcs=(11, 12))
    assert DEFAULT_VIDEO_BITRATE_CAP == 4_000_000
    assert fb.next_deadline() == 102.0
    fb.start_publisher_reports(101.5)  # a renegotiation does not move the cadence
    assert fb.next_deadline() == 102.0

    v1.counters.bytes_in += 5000  # 40 kbit in one second
    fb.handle_timer(102.0)
    assert len(sent_to_publisher(fb)) == 2
    assert v1.bitrate == 40_000 and v2.bitrate == 0


def test_remb_carries_the_rooms_per_track_limit_times_the_video_tracks() -> None:
    v1, v2 = track("TR_1", ssrc=11), track("TR_2", ssrc=12)
    for published in (v1, v2):
        receiving(published, 0)
    fb = feedback({t.sid: t for t in (v1, v2)}, max_video_bitrate=300_000)
    fb.start_publisher_reports(0.0)
    fb.handle_timer(1.0)
    _rr, remb = sent_to_publisher(fb)
    assert isinstance(remb, Remb) and remb.bitrate == 600_000


def test_no_reports_before_media_arrives() -> None:
    video = track("TR_v", ssrc=11)
    fb = feedback({video.sid: video})
    fb.start_publisher_reports(0.0)
    fb.handle_timer(1.0)
    assert fb.to_publisher == [] and fb.next_deadline() == 2.0


def test_publisher_sender_reports_are_taken_in_and_translated_once_a_second() -> None:
    video = track("TR_v", ssrc=1111)
    sink = ListSink()
    down = DownTrack(video, "PA_sub")
    down.configure(sink=sink, out_ssrc=7777, mid="0", payload_types={96: 97}, extensions={})
    video.down_tracks.append(down)
    packet = RtpPacket(payload_type=96, sequence_number=1, timestamp=90_000, ssrc=1111)
    packet.payload = VP8_KEY
    data = packet.serialize()
    video.forward(data, parse_rtp(data))
    assert len(sink.sent) == 1

    fb = feedback({video.sid: video}, {video.sid: down})
    fb.on_publisher_rtcp(build_sr(1111, ntp=5 << 32, rtp_ts=90_000, packets=1, octets=42), 3.0)
    assert video.last_sender_report == (5 << 32, 90_000)
    fb.start_sender_reports(3.0)
    fb.handle_timer(3.5)
    assert fb.to_subscriber == []
    fb.handle_timer(4.0)
    (report,) = fb.to_subscriber
    (sr,) = parse_rtcp(report)
    assert isinstance(sr, SenderReport) and sr.ssrc == 7777 and sr.ntp == 5 << 32
    assert sr.packets == 1
    assert fb.next_deadline() == 5.0


def test_every_participants_reports_share_the_clock_grid() -> None:
    """Participants that joined at any time report in the same slot (one wake-up for all)."""
    feedbacks = [feedback() for _ in range(3)]
    for n, fb in enumerate(feedbacks):
        fb.start_sender_reports(100.06 + 0.09 * n)
        fb.start_publisher_reports(100.06 + 0.09 * n)
    assert {fb.next_deadline() for fb in feedbacks} == {101.25}
    for fb in feedbacks:
        fb.handle_timer(101.25 + 0.002)  # the loop woke 2 ms late: the cadence keeps its phase
    assert {fb.next_deadline() for fb in feedbacks} == {102.25}


def test_subscriber_pli_and_fir_ask_the_up_track_and_nacks_are_answered() -> None:
    video = track("TR_v", ssrc=1111)
    asked: list[str] = []
    video.request_keyframe = lambda: asked.append(video.sid)
    sink = ListSink()
    down = DownTrack(video, "PA_sub")
    down.configure(sink=sink, out_ssrc=7777, mid="0", payload_types={96: 97}, extensions={})
    packet = RtpPacket(payload_type=96, sequence_number=1, timestamp=0, ssrc=1111)
    packet.payload = VP8_KEY
    data = packet.serialize()
    down.forward(data, parse_rtp(data))
    out_seq = int.from_bytes(sink.sent[0][2:4], "big")

    fb = feedback(subscriptions={video.sid: down})
    fb.on_subscriber_rtcp(build_pli(1, 7777), now=0.0)
    assert asked == []  # not watched yet: the SSRC names nothing
    fb.watch(down)
    fb.on_subscriber_rtcp(build_pli(1, 7777), now=0.0)
    fb.on_subscriber_rtcp(build_fir(1, 7777, 1), now=0.0)
    fb.on_subscriber_rtcp(build_pli(1, 9999), now=0.0)
    assert asked == ["TR_v", "TR_v"]
    fb.on_subscriber_rtcp(build_nack(1, 7777, [out_seq]), now=0.0)
    assert fb.stats.retransmissions == 1 and sink.sent[-1] == sink.sent[0]
    fb.unwatch(down)
    fb.on_subscriber_rtcp(build_pli(1, 7777), now=0.0)
    assert asked == ["TR_v", "TR_v"]
    fb.on_subscriber_rtcp(b"\x80\xc9\x00", now=0.0)
    assert fb.stats.dropped[DropReason.MALFORMED.value] == 1


def test_a_recycled_sections_ssrc_names_only_its_newest_down_track() -> None:
    """A recycled subscriber section keeps its sender SSRC: PLI and NACK for it reach the track
    it carries now, and a late unwatch of the previous one does not unmap the new one."""
    old_track, new_track = track("TR_old", ssrc=1111), track("TR_new", ssrc=2222)
    asked: list[str] = []
    for published in (old_track, new_track):
        published.request_keyframe = lambda sid=published.sid: asked.append(sid)
    old_sink, new_sink = ListSink(), ListSink()
    old, new = DownTrack(old_track, "PA_sub"), DownTrack(new_track, "PA_sub")
    old.configure(sink=old_sink, out_ssrc=7777, mid="0", payload_types={96: 97}, extensions={})
    fb = feedback()
    fb.watch(old)
    fb.unwatch(old)
    new.configure(
        sink=new_sink, out_ssrc=7777, mid="0", payload_types={96: 97}, extensions={}, seq_start=500
    )
    fb.watch(new)
    fb.unwatch(old)  # again, late: must leave the new mapping alone
    packet = RtpPacket(payload_type=96, sequence_number=9, timestamp=0, ssrc=2222)
    packet.payload = VP8_KEY
    data = packet.serialize()
    new.forward(data, parse_rtp(data))
    assert int.from_bytes(new_sink.sent[0][2:4], "big") == 500  # continues the section's numbers

    fb.on_subscriber_rtcp(build_pli(1, 7777), now=0.0)
    fb.on_subscriber_rtcp(build_nack(1, 7777, [500]), now=0.0)
    assert asked == ["TR_new"]
    assert new_sink.sent[-1] == new_sink.sent[0] and old_sink.sent == []
