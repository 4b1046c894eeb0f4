"""Transport-wide congestion control (sfu/twcc.py, sfu/twccsdp.py): the slot the rewriter
reserves, the stamping, the feedback parser and its bad inputs, the SDP lines."""

from __future__ import annotations

import struct

import pytest
from aiortc import RTCPeerConnection

from sfu.feedback import Feedback
from sfu.forwarder import SDES_MID, DownTrack
from sfu.internals import offered_extension_ids
from sfu.rtcp import TransportFeedback, build_remb, parse_rtcp
from sfu.rtp import MalformedPacket, parse_rtp
from sfu.rtprewrite import RtpRewriter
from sfu.rtx import RtxStream
from sfu.sdpinfo import extmap_id
from sfu.stats import DropReason, Stats
from sfu.twcc import (
    HISTORY,
    MAX_STATUS_COUNT,
    URI,
    TransportSequence,
    parse_feedback,
)
from sfu.twccsdp import accepted_transport_cc, has_media, offer_transport_cc
from tests.sink_helpers import ListSink
from tests.test_forwarder import ABS_SEND_TIME, VP8_KEY, forward, publisher_packet, video_track


def rtp(ext: bytes = b"", payload: bytes = b"\x90" * 40, seq: int = 7) -> bytes:
    if ext:
        ext += bytes(-len(ext) % 4)
        head = struct.pack("!BBHII", 0x90, 96, seq, 1000, 5)
        return head + struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext + payload
    return struct.pack("!BBHII", 0x80, 96, seq, 1000, 5) + payload


def rewriter(slot: int | None = 5, mid_ext_id: int | None = 4) -> RtpRewriter:
    return RtpRewriter(
        out_ssrc=9,
        pt_map={96: 100},
        ext_map={3: 2},  # abs-send-time: publisher id 3 -> subscriber id 2
        mid_ext_id=mid_ext_id,
        mid="1",
        seq_start=0,
        ts_start=0,
        slot_ext_id=slot,
    )


def transport_seq(packet: bytes) -> int:
    return int.from_bytes(packet[17:19], "big")


def fci(base: int, count: int, chunks: list[int], deltas: bytes, reference: int = 1) -> bytes:
    head = struct.pack("!HHI", base, count, (reference & 0xFFFFFF) << 8 | 3)
    return head + b"".join(struct.pack("!H", c) for c in chunks) + deltas


# -- the slot and the stamp -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "packet",
    [rtp(), rtp(b"\x32\x01\x02\x03"), rtp(b"\x72\x01\x02\x03")],  # none, abs-send-time, unknown
)
def test_the_rewriter_puts_the_slot_first_and_the_sink_stamps_it(packet: bytes) -> None:
    out = rewriter().rewrite(packet, parse_rtp(packet))
    assert out is not None
    info = parse_rtp(out)
    assert out[16] == 0x51  # id 5, two bytes
    sequence = TransportSequence(5, start=65534)
    first, second, third = (sequence.stamp(out) for _ in range(3))
    assert [transport_seq(p) for p in (first, second, third)] == [65534, 65535, 0]
    assert parse_rtp(first) == info  # nothing else moved
    assert first[19:] == out[19:] and first[:17] == out[:17]
    assert len(sequence.resolve(parse_feedback(fci(65534, 3, [0x2003], b"\x01" * 3)))) == 3


def test_the_two_byte_form_keeps_the_slot_first() -> None:
    long_mid = RtpRewriter(
        out_ssrc=9, pt_map={96: 100}, ext_map={}, mid_ext_id=4, mid="m" * 20,
        seq_start=0, ts_start=0, slot_ext_id=5,
    )  # fmt: skip
    packet = rtp()
    out = long_mid.rewrite(packet, parse_rtp(packet))
    assert out is not None and out[12:14] == b"\x10\x00" and out[16:18] == b"\x05\x02"
    stamped = TransportSequence(5, start=0x1234).stamp(out)
    assert stamped[18:20] == b"\x12\x34" and stamped[20:] == out[20:]


def test_packets_without_the_slot_are_sent_unchanged() -> None:
    sequence = TransportSequence(5)
    plain = rewriter(slot=None).rewrite(rtp(), parse_rtp(rtp()))
    assert plain is not None
    assert sequence.stamp(plain) is plain
    assert sequence.stamp(rtp()) == rtp()  # no extension block at all
    assert sequence.resolve(parse_feedback(fci(0, 1, [0x2001], b"\x01"))) == []  # none sent


def test_the_slot_id_must_not_collide() -> None:
    with pytest.raises(ValueError):
        rewriter(slot=4)  # the MID's id
    with pytest.raises(ValueError):
        rewriter(slot=2)  # abs-send-time's output id
    with pytest.raises(ValueError):
        rewriter(slot=15)


def test_resolve_pairs_feedback_with_send_times_and_skips_unknown_ones() -> None:
    sequence = TransportSequence(5, start=65530)
    out = rewriter().rewrite(rtp(), parse_rtp(rtp()))
    assert out is not None
    for _ in range(10):  # 65530 .. 65539 (wraps to 3)
        sequence.stamp(out)
    # 65534 received, 65535 lost, 0 received; 9 was never sent.
    vector = 0xC000 | (1 << 12) | (0 << 10) | (1 << 8)  # small, not received, small
    report = parse_feedback(fci(65534, 3, [vector], b"\x04\x04"))
    results = sequence.resolve(report)
    assert [(r.sequence, r.arrival_us) for r in results] == [
        (65534, 64_000 + 1000),
        (65535, None),
        (65536, 64_000 + 2000),
    ]
    assert all(r.size == len(out) for r in results)
    assert sequence.resolve(parse_feedback(fci(9, 1, [0x2001], b"\x01"))) == []


def test_resolve_forgets_packets_older_than_the_history() -> None:
    sequence = TransportSequence(5)
    out = rewriter().rewrite(rtp(), parse_rtp(rtp()))
    assert out is not None
    for _ in range(HISTORY + 10):
        sequence.stamp(out)
    assert sequence.resolve(parse_feedback(fci(2, 1, [0x2001], b"\x01"))) == []


# -- the feedback parser --------------------------------------------------------------------------


def test_parse_run_length_and_vector_chunks() -> None:
    # Run: 3 received small; one-bit vector: 14 symbols, received/lost alternating;
    # two-bit vector: large (negative) delta, small, not received, ... (padding symbols cut).
    vector1 = 0x8000 | 0b10101010101010
    vector2 = 0xC000 | (2 << 12) | (1 << 10)
    count = 3 + 14 + 3
    deltas = b"\x04\x04\x04" + b"\x01" * 7 + struct.pack("!h", -8) + b"\x02"
    report = parse_feedback(fci(100, count, [0x2003, vector1, vector2], deltas, reference=-1))
    assert report.base_sequence == 100 and report.feedback_count == 3
    arrivals = [a for _, a in report.packets]
    assert arrivals[:3] == [-64_000 + 1000, -64_000 + 2000, -64_000 + 3000]
    assert arrivals[3:17:2] == [-61_000 + 250 * k for k in range(1, 8)]
    assert all(a is None for a in arrivals[4:17:2])
    assert arrivals[17] == -61_000 + 7 * 250 - 2000
    assert arrivals[18] == arrivals[17] + 500
    assert arrivals[19] is None
    assert [s for s, _ in report.packets] == [(100 + n) & 0xFFFF for n in range(count)]


@pytest.mark.parametrize(
    "data",
    [
        b"\x00" * 7,  # shorter than its header
        fci(0, 0, [0x2001], b"\x01"),  # no packets
        fci(0, MAX_STATUS_COUNT + 1, [0x1FFF] * 8, b""),  # an absurd count
        fci(0, 0xFFFF, [0x1FFF] * 9, b""),  # absurd, described by few chunks
        fci(0, 20, [0x2003], b"\x01\x01\x01"),  # chunks end before the count
        fci(0, 3, [0x2003], b"\x01\x01"),  # a truncated delta list
        fci(0, 2, [0x4002], b"\x01\x01\x01"),  # a large delta cut in half
        fci(0, 2, [0x6002], b"\x01\x01"),  # the reserved symbol in a run
        fci(0, 2, [0xC000 | (3 << 12)], b"\x01\x01"),  # ... and in a vector
        struct.pack("!HHI", 0, 2, 0) + b"\x20",  # a half chunk
    ],
)
def test_bad_feedback_is_refused(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        parse_feedback(data)


def test_a_run_longer_than_the_count_is_cut_to_it() -> None:
    report = parse_feedback(fci(0, 2, [0x1FFF], b""))  # 8191 not received, count 2
    assert report.packets == ((0, None), (1, None))


def test_a_bad_feedback_is_dropped_and_counted_and_the_rest_of_the_compound_read() -> None:
    stats = Stats()
    feedback = Feedback(
        tracks={}, subscriptions={}, stats=stats, max_video_bitrate=lambda: 0, rtcp_ssrc=1
    )
    feedback.transport_sequence = TransportSequence(5)
    bad = fci(0, 0xFFFF, [0x1FFF], b"\x00\x00")  # padded to 32 bits
    message = struct.pack("!BBHII", 0x8F, 205, 2 + len(bad) // 4, 1, 2) + bad
    remb = build_remb(1, 300_000, [2])
    assert isinstance(parse_rtcp(message)[0], TransportFeedback)
    feedback.on_subscriber_rtcp(message + remb, 1.0)
    assert stats.dropped[DropReason.BAD_FEEDBACK.value] == 1
    assert feedback.congestion.estimator.remb is not None  # the REMB beside it was read


# -- SDP ------------------------------------------------------------------------------------------

OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=rtpmap:111 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 97 98",
        "a=mid:1",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=rtpmap:97 VP8/90000",
        "a=rtpmap:98 rtx/90000",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=mid:2",
        "",
    ]
)


def test_the_offer_gets_one_free_id_in_every_media_section() -> None:
    sdp, ext_id = offer_transport_cc(OFFER)
    assert ext_id == 4
    assert sdp.count(f"a=extmap:4 {URI}") == 2
    assert "a=rtcp-fb:111 transport-cc" in sdp and "a=rtcp-fb:97 transport-cc" in sdp
    assert "a=rtcp-fb:98 transport-cc" not in sdp  # not for RTX
    application = sdp[sdp.index("m=application") :]
    assert URI not in application
    assert accepted_transport_cc(sdp, 4)  # an answer echoes the offer's extmap
    assert not accepted_transport_cc(OFFER, 4)  # an answer without it
    assert not accepted_transport_cc(sdp.replace(f"a=extmap:4 {URI}", f"a=extmap:6 {URI}"), 4)
    assert not accepted_transport_cc("m=video x", 4)  # garbage is not an acceptance


def test_only_an_answer_with_media_settles_transport_cc() -> None:
    """A first joiner's first answer (an empty room: a data channel alone) leaves it open."""
    data_only = OFFER[: OFFER.index("m=audio")] + OFFER[OFFER.index("m=application") :]
    assert not has_media(data_only)
    assert has_media(OFFER)


def test_no_free_id_means_no_transport_cc() -> None:
    full = OFFER.replace(
        "a=mid:1\r\n",
        "a=mid:1\r\n" + "".join(f"a=extmap:{n} urn:x:{n}\r\n" for n in range(4, 15)),
    )
    assert offer_transport_cc(full) == (full, None)


async def test_an_audio_only_first_offer_leaves_the_id_a_later_video_section_uses() -> None:
    """The flake behind `transport_cc` off by default: a subscriber's first offer held its
    publisher's audio alone (the video came a moment later, on a loaded machine); the lowest id
    free there was 3, which aiortc gives abs-send-time in every video section, so the rewriter
    refused the video down-track and the subscriber never decoded it."""
    reserved = offered_extension_ids()
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendonly")
        first, ext_id = offer_transport_cc((await pc.createOffer()).sdp, reserved)
        assert ext_id is not None and ext_id not in reserved
        pc.addTransceiver("video", direction="sendonly")
        later, again = offer_transport_cc((await pc.createOffer()).sdp, reserved, ext_id)
    finally:
        await pc.close()
    assert again == ext_id  # the id the first answer settled, in every later offer
    video = later[later.index("m=video") :]
    ids = [line.split(" ")[0] for line in video.split("\r\n") if line.startswith("a=extmap:")]
    assert len(ids) == len(set(ids)) == 3
    extensions = {SDES_MID: 1, ABS_SEND_TIME: 3, URI: ext_id}
    assert extmap_id(video.split("\r\n"), ABS_SEND_TIME) == 3  # aiortc's, as assumed here
    down = DownTrack(video_track(), "PA_s")
    down.configure(sink=ListSink(), out_ssrc=9, mid="1", payload_types={96: 97},
                   extensions=extensions)  # fmt: skip
    assert down.rewriter is not None


def test_a_settled_id_is_kept_or_transport_cc_left_out() -> None:
    sdp, ext_id = offer_transport_cc(OFFER, ext_id=6)
    assert ext_id == 6 and sdp.count(f"a=extmap:6 {URI}") == 2
    # Taken by another extension (never by keyroom's offers): not offered at all.
    assert offer_transport_cc(OFFER, ext_id=3) == (OFFER, None)
    assert offer_transport_cc(OFFER, reserved={4, 5})[1] == 6


# -- a down-track end to end ----------------------------------------------------------------------


def test_media_retransmissions_and_probe_padding_all_carry_the_slot() -> None:
    track = video_track()
    sink = ListSink()
    down = DownTrack(track, "PA_s")
    down.configure(
        sink=sink, out_ssrc=9, mid="0", payload_types={96: 97},
        extensions={SDES_MID: 1, ABS_SEND_TIME: 2, URI: 5},
    )  # fmt: skip
    down.rtx = RtxStream(ssrc=10, payload_type=98, seq_start=500)
    track.down_tracks.append(down)
    down.padding = 2  # probing
    forward(track, publisher_packet(100, 0, VP8_KEY))
    media, pad1, pad2 = sink.sent
    assert parse_rtp(media).payload_type == 97
    # The probe's padding rides the RTX stream: its losses are never NACKed.
    for pad, seq in ((pad1, 500), (pad2, 501)):
        assert pad[8:12] == (10).to_bytes(4, "big") and pad[1] & 0x7F == 98
        assert parse_rtp(pad).sequence == seq and pad[0] & 0x20
    down.padding = 0
    sent, _ = down.retransmit((parse_rtp(media).sequence,), 1.0)
    assert sent == 1
    sequence = TransportSequence(5)
    stamped = [sequence.stamp(p) for p in sink.sent]
    assert [transport_seq(p) for p in stamped] == [0, 1, 2, 3]  # media, 2 paddings, its RTX
