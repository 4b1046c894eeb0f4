"""RED for audio (RFC 2198): the payload reader, retargeting and unwrapping (sfu/red.py), the
forwarding to RED and plain subscribers (sfu/redtrack.py through sfu/ingress.py), malformed
RED dropped and counted, and a fuzz of the reader."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.forwarder import SDES_MID, CodecInfo, DownTrack, PublishedTrack
from sfu.ingress import Ingress
from sfu.red import MAX_BLOCKS, read_red, retarget, unwrap, wrap
from sfu.redsdp import accepted_red, answer_red, free_payload_type, offer_red, offered_red
from sfu.rtp import parse_rtp
from sfu.stats import DropReason, Stats
from tests.fuzzing import fuzz
from tests.sink_helpers import ListSink

OPUS, RED = 111, 63
SSRC = 0x1234


def rtp(
    payload: bytes, *, pt: int = RED, seq: int = 7, ts: int = 9600, marker: bool = False
) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, SSRC) + payload


def test_a_red_payload_is_read_and_unwrapped_to_its_primary_block() -> None:
    payload = wrap(OPUS, b"primary", [(OPUS, 960, b"older"), (OPUS, 1920, b"oldest!")])
    data = rtp(payload, marker=True)
    info = parse_rtp(data)
    red = read_red(data, info.payload_start, info.payload_end)
    assert red is not None
    assert red.redundant == ((OPUS, 960, 5), (OPUS, 1920, 7))
    assert red.primary_pt == OPUS
    assert red.blocks_start == 12 + 4 + 4 + 1
    plain = unwrap(data, info, red)
    out = parse_rtp(plain)
    assert plain[out.payload_start :] == b"primary"
    assert (out.payload_type, out.sequence, out.timestamp, out.ssrc, out.marker) == (
        OPUS,
        7,
        9600,
        SSRC,
        True,
    )


def test_unwrapping_drops_the_padding_and_clears_its_bit() -> None:
    data = bytearray(rtp(wrap(OPUS, b"abc", [(OPUS, 960, b"xy")]) + b"\x00\x00\x03"))
    data[0] |= 0x20
    info = parse_rtp(bytes(data))
    red = read_red(bytes(data), info.payload_start, info.payload_end)
    assert red is not None
    plain = unwrap(bytes(data), info, red)
    assert plain[0] & 0x20 == 0 and plain.endswith(b"abc")


def test_a_primary_alone_is_valid_red() -> None:
    data = rtp(wrap(OPUS, b"only", []))
    info = parse_rtp(data)
    red = read_red(data, info.payload_start, info.payload_end)
    assert red is not None and red.redundant == () and red.primary_start == 13


def test_retargeting_rewrites_every_block_header_payload_type() -> None:
    data = rtp(wrap(OPUS, b"p", [(OPUS, 960, b"r1"), (13, 960, b"c")]))
    info = parse_rtp(data)
    red = read_red(data, info.payload_start, info.payload_end)
    assert red is not None
    patch = retarget(data, info, red, {OPUS: 96})
    rebuilt = data[: info.payload_start] + patch + data[red.blocks_start :]
    again = read_red(rebuilt, info.payload_start, len(rebuilt))
    assert again is not None
    assert [b[0] for b in again.redundant] == [96, 13] and again.primary_pt == 96
    assert [b[1:] for b in again.redundant] == [b[1:] for b in red.redundant]


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # no header at all
        b"\x80\x00\x00",  # a redundant header cut short
        b"\xef\x00\x3c\x05",  # a redundant header and no final one
        b"\xef\x00\x3c\x05\x6f",  # a block of 5 bytes in a payload of none
        bytes([0xEF, 0x00, 0x3C, 0x01]) * MAX_BLOCKS + b"\x6f" + b"x" * MAX_BLOCKS,  # too many
    ],
)
def test_malformed_red_is_refused(payload: bytes) -> None:
    data = rtp(payload)
    info = parse_rtp(data)
    assert read_red(data, info.payload_start, info.payload_end) is None


def test_wrap_refuses_what_a_header_cannot_say() -> None:
    with pytest.raises(ValueError):
        wrap(OPUS, b"", [(OPUS, 960, b"x" * 1024)])
    with pytest.raises(ValueError):
        wrap(OPUS, b"", [(OPUS, 1 << 14, b"x")])


@given(st.binary(max_size=64))
@fuzz(500)
def test_any_red_payload_is_read_within_the_packet_or_refused(payload: bytes) -> None:
    data = rtp(payload)
    info = parse_rtp(data)
    red = read_red(data, info.payload_start, info.payload_end)
    if red is None:
        return
    assert info.payload_start < red.blocks_start <= red.primary_start <= len(data)
    assert len(red.redundant) < MAX_BLOCKS
    plain = unwrap(data, info, red)
    assert parse_rtp(plain).payload_type == red.primary_pt
    patch = retarget(data, info, red, {OPUS: 96})
    assert len(patch) == red.blocks_start - info.payload_start


# Forwarding: a publisher's RED track, one RED subscriber, one plain subscriber.

OPUS_CODEC = CodecInfo(
    mime_type="audio/opus", clock_rate=48000, payload_type=OPUS, red_payload_type=RED
)


def red_room(stats: Stats) -> tuple[Ingress, PublishedTrack, ListSink, ListSink]:
    track = PublishedTrack(
        sid="TR_a", cid="a", kind="audio", source="microphone", name="", publisher_sid="PA_p"
    )
    ingress = Ingress({"TR_a": track}, stats)
    ingress.bind(track, "0", SSRC, None, OPUS_CODEC, {1: SDES_MID})
    assert track.red is not None
    plain_sink, red_sink = ListSink(), ListSink()
    plain = DownTrack(track, "PA_plain")
    plain.configure(sink=plain_sink, out_ssrc=1, mid="0", payload_types={OPUS: 96}, extensions={})
    track.down_tracks.append(plain)
    redsub = DownTrack(track, "PA_red")
    redsub.configure(
        sink=red_sink, out_ssrc=2, mid="0", payload_types={OPUS: 96, RED: 63}, extensions={}
    )
    track.red.attach(redsub, 96)
    return ingress, track, plain_sink, red_sink


def test_red_goes_as_is_to_red_subscribers_and_unwrapped_to_the_others() -> None:
    stats = Stats()
    ingress, track, plain_sink, red_sink = red_room(stats)
    for seq in range(100, 110):
        frames = [b"f%d" % (seq - k) for k in range(2)]
        ingress.on_rtp(rtp(wrap(OPUS, frames[0], [(OPUS, 960, frames[1])]), seq=seq))
    assert len(plain_sink.sent) == len(red_sink.sent) == 10
    seqs = [parse_rtp(p).sequence for p in plain_sink.sent]
    assert seqs == [(seqs[0] + n) & 0xFFFF for n in range(10)]  # no gap: one RED, one Opus
    for n, (plain, red) in enumerate(zip(plain_sink.sent, red_sink.sent, strict=True)):
        info = parse_rtp(plain)
        assert info.payload_type == 96 and plain[info.payload_start :] == b"f%d" % (100 + n)
        rinfo = parse_rtp(red)
        assert rinfo.payload_type == 63
        block = read_red(red, rinfo.payload_start, rinfo.payload_end)
        assert block is not None and block.primary_pt == 96 and block.redundant[0][0] == 96
        assert red[block.primary_start :] == b"f%d" % (100 + n)
    assert stats.packets_out == 20


def test_plain_opus_from_a_red_publisher_reaches_both() -> None:
    ingress, _, plain_sink, red_sink = red_room(Stats())
    ingress.on_rtp(rtp(b"opus", pt=OPUS))
    assert [parse_rtp(p).payload_type for p in plain_sink.sent + red_sink.sent] == [96, 96]


def test_malformed_red_is_dropped_and_counted_not_forwarded() -> None:
    stats = Stats()
    ingress, _, plain_sink, red_sink = red_room(stats)
    for payload in (b"\x80\x00", b"\xef\x00\x3c\x05\x6f", wrap(0, b"pcmu", [])):
        ingress.on_rtp(rtp(payload))
    assert stats.dropped[DropReason.MALFORMED_RED] == 3
    assert plain_sink.sent == red_sink.sent == []


def test_a_muted_red_track_forwards_nothing_and_a_detached_subscriber_gets_nothing() -> None:
    ingress, track, plain_sink, red_sink = red_room(Stats())
    track.muted = True
    ingress.on_rtp(rtp(wrap(OPUS, b"a", [])))
    assert plain_sink.sent == red_sink.sent == []
    track.muted = False
    assert track.red is not None
    track.red.detach(track.red.downs[0])
    ingress.on_rtp(rtp(wrap(OPUS, b"a", []), seq=8))
    assert len(plain_sink.sent) == 1 and red_sink.sent == []


# SDP (sfu/redsdp.py).

CHROMIUM_AUDIO = (
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0\r\na=mid:0\r\na=sendonly\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=rtpmap:9 G722/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
)
SESSION = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"


def test_a_chromium_offer_is_read_and_answered_with_red_first() -> None:
    assert offered_red(SESSION + CHROMIUM_AUDIO) == {"0": (63, 111)}
    answer = (
        SESSION + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\n"
        "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 usedtx=1\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n"
    )
    out = answer_red(answer, {"0": (63, 111)})
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 63 111\r\n" in out
    assert "a=fmtp:111 usedtx=1\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n" in out
    assert out.endswith("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n")
    # Nothing accepted, or another Opus answered: the answer is left as it was.
    assert answer_red(answer, {}) == answer
    assert answer_red(answer, {"0": (63, 109)}) == answer


@pytest.mark.parametrize(
    "fmtp",
    ["111/0", "opus/opus", "", "/".join(["111"] * 9), "9/9"],
)
def test_red_over_anything_but_one_opus_is_not_taken(fmtp: str) -> None:
    offer = SESSION + CHROMIUM_AUDIO.replace("a=fmtp:63 111/111", f"a=fmtp:63 {fmtp}")
    assert offered_red(offer) == {}


def test_subscriber_offers_list_red_after_opus_and_answers_are_read() -> None:
    offer = (
        SESSION + "m=audio 9 UDP/TLS/RTP/SAVPF 96 0 8\r\na=mid:0\r\na=sendonly\r\n"
        "a=rtpmap:96 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 97 98\r\na=mid:1\r\na=rtpmap:97 VP8/90000\r\n"
    )
    red_pt = free_payload_type(offer)
    assert red_pt == 63
    out = offer_red(offer, red_pt)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 96 0 8 63\r\n" in out
    assert "a=rtpmap:96 opus/48000/2\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 96/96\r\n" in out
    assert offer_red(out, red_pt) == out  # offered again: the same text
    assert "m=video 9 UDP/TLS/RTP/SAVPF 97 98\r\n" in out
    kept = out.replace("a=sendonly", "a=recvonly")
    assert accepted_red(kept, 63) == {"0": 96}
    dropped = offer.replace("a=sendonly", "a=recvonly")  # an answer without RED (aiortc)
    assert accepted_red(dropped, 63) == {}
    without_fmtp = kept.replace("a=fmtp:63 96/96\r\n", "")
    assert accepted_red(without_fmtp, 63) == {"0": 96}  # the fmtp is optional
    assert accepted_red("not sdp", 63) == {}
    assert free_payload_type(out.replace(" 63\r\n", " 63 96\r\n")) == 97 + 2  # 63, 96-98 taken


@given(st.lists(st.binary(max_size=48), min_size=1, max_size=8))
@fuzz(300)
def test_hostile_red_through_the_ingress_is_forwarded_or_counted_never_a_crash(
    payloads: list[bytes],
) -> None:
    stats = Stats()
    ingress, _, plain_sink, red_sink = red_room(stats)
    for seq, payload in enumerate(payloads):
        ingress.on_rtp(rtp(payload, seq=seq))
    malformed = stats.dropped[DropReason.MALFORMED_RED]
    assert malformed + stats.red_received == len(payloads)
    assert len(plain_sink.sent) == len(red_sink.sent) == stats.red_received
    for packet in red_sink.sent:  # as sent, but the block headers name the subscriber's Opus
        info = parse_rtp(packet)
        red = read_red(packet, info.payload_start, info.payload_end)
        assert red is not None and red.primary_pt == 96
        assert all(pt != OPUS for pt, _, _ in red.redundant)
