"""sfu.rtcp: parsing compound packets and building feedback, cross-checked against aiortc."""

from __future__ import annotations

import struct

import pytest
from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    pack_remb_fci,
    unpack_remb_fci,
)
from hypothesis import given
from hypothesis import strategies as st

from sfu.rtcp import (
    Bye,
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    SenderReport,
    build_fir,
    build_nack,
    build_pli,
    build_remb,
    build_rr,
    build_sdes_cname,
    build_sr,
    is_rtcp,
    parse_rtcp,
)
from sfu.rtp import MalformedPacket


def receiver_info(ssrc: int, lost: int) -> RtcpReceiverInfo:
    return RtcpReceiverInfo(
        ssrc=ssrc,
        fraction_lost=17,
        packets_lost=lost,
        highest_sequence=0x0001FFFF,
        jitter=321,
        lsr=0xAABBCCDD,
        dlsr=65536,
    )


def block(ssrc: int, lost: int) -> ReportBlock:
    return ReportBlock(ssrc, 17, lost, 0x0001FFFF, 321, 0xAABBCCDD, 65536)


# --- parsing aiortc's packets --------------------------------------------------------------------


def test_parse_aiortc_compound() -> None:
    sr = RtcpSrPacket(
        ssrc=1,
        sender_info=RtcpSenderInfo(
            ntp_timestamp=0x1234567890ABCDEF, rtp_timestamp=90000, packet_count=10, octet_count=999
        ),
        reports=[receiver_info(2, -5), receiver_info(3, 1000)],
    )
    sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=1, items=[(1, b"cname")])])
    rr = RtcpRrPacket(ssrc=4, reports=[receiver_info(5, 0)])
    pli = RtcpPsfbPacket(fmt=1, ssrc=6, media_ssrc=7)
    nack = RtcpRtpfbPacket(fmt=1, ssrc=8, media_ssrc=9, lost=[100, 101, 116, 117, 200])
    remb = RtcpPsfbPacket(fmt=15, ssrc=10, media_ssrc=0, fci=pack_remb_fci(1_500_000, [11, 12]))
    bye = RtcpByePacket(sources=[13, 14])
    data = b"".join(bytes(p) for p in (sr, sdes, rr, pli, nack, remb, bye))

    assert parse_rtcp(data) == [
        SenderReport(1, 0x1234567890ABCDEF, 90000, 10, 999, (block(2, -5), block(3, 1000))),
        ReceiverReport(4, (block(5, 0),)),
        Pli(6, 7),
        Nack(8, 9, (100, 101, 116, 117, 200)),
        Remb(10, unpack_remb_fci(remb.fci)[0], (11, 12)),
        Bye((13, 14)),
    ]


def test_parse_skips_unknown_types_and_formats() -> None:
    skipped = [
        struct.pack("!BBH", 0x80, 207, 2) + bytes(8),  # XR
        struct.pack("!BBH", 0x80, 204, 2) + b"\x00\x00\x00\x01name",  # APP
        struct.pack("!BBHII", 0x82, 206, 3, 1, 2) + bytes(4),  # SLI
        struct.pack("!BBHII", 0x8F, 206, 4, 1, 0) + b"GOOG" + bytes(4),  # AFB, not REMB
        struct.pack("!BBHII", 0x83, 205, 2, 1, 2),  # TMMBR-ish, no FCI
        bytes(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=1, items=[(1, b"x")])])),
    ]
    data = b"".join(skipped) + build_pli(1, 2)
    assert parse_rtcp(data) == [Pli(1, 2)]


def test_parse_accepts_sr_profile_extension_and_padding() -> None:
    sr = build_sr(1, 2, 3, 4, 5)
    extended = struct.pack("!BBH", 0x80, 200, 7) + sr[4:] + b"ext!"
    padded = struct.pack("!BBH", 0xA1, 206, 3) + build_pli(6, 7)[4:] + b"\x00\x00\x00\x04"
    assert parse_rtcp(extended + padded) == [SenderReport(1, 2, 3, 4, 5, ()), Pli(6, 7)]


def test_parse_fir_entries() -> None:
    fci = struct.pack("!IB3xIB3x", 0x1111, 3, 0x2222, 255)
    data = struct.pack("!BBHII", 0x84, 206, 6, 9, 0) + fci
    assert parse_rtcp(data) == [Fir(9, ((0x1111, 3), (0x2222, 255)))]


def test_nack_wraps_sequence_numbers() -> None:
    data = struct.pack("!BBHIIHH", 0x81, 205, 3, 1, 2, 65534, 0b101)
    assert parse_rtcp(data) == [Nack(1, 2, (65534, 65535, 1))]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x80\xc9\x00", id="3 bytes"),
        pytest.param(build_pli(1, 2)[:-1], id="length overrun"),
        pytest.param(b"\x40" + build_pli(1, 2)[1:], id="version 1"),
        pytest.param(build_pli(1, 2) + b"\x81\xce", id="truncated second header"),
        pytest.param(build_pli(1, 2) + b"\x41\xce\x00\x00", id="second packet version 1"),
        pytest.param(struct.pack("!BBHI", 0x81, 201, 1, 1), id="RR shorter than count"),
        pytest.param(struct.pack("!BBHI", 0x80, 200, 1, 1), id="SR without sender info"),
        pytest.param(struct.pack("!BBH", 0x82, 203, 1) + bytes(4), id="BYE shorter than count"),
        pytest.param(struct.pack("!BBHI", 0x81, 206, 1, 1), id="PSFB shorter than 8"),
        pytest.param(struct.pack("!BBHI", 0x81, 205, 1, 1), id="NACK shorter than 8"),
        pytest.param(struct.pack("!BBHIII", 0x84, 206, 3, 1, 0, 7), id="FIR partial entry"),
        pytest.param(
            struct.pack("!BBHII", 0x8F, 206, 4, 1, 0) + b"REMB\x02\x00\x00\x01",
            id="REMB shorter than SSRC count",
        ),
        pytest.param(
            struct.pack("!BBHII", 0x8F, 206, 3, 1, 0) + b"REMB", id="REMB without bitrate"
        ),
        pytest.param(struct.pack("!BBHI", 0xA1, 206, 1, 0), id="padding length 0"),
        pytest.param(struct.pack("!BBHI", 0xA1, 206, 1, 9), id="padding too long"),
        pytest.param(struct.pack("!BBH", 0xA1, 206, 0), id="padding with empty body"),
        pytest.param(
            struct.pack("!BBHIIHBB", 0xA1, 205, 4, 1, 2, 5, 0, 0) + b"\x00\x00\x00\x02",
            id="NACK FCI not in words",
        ),
    ],
)
def test_parse_rejects_malformed(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        parse_rtcp(data)


@given(st.binary(max_size=120))
def test_fuzz_parse_raises_only_malformed(data: bytes) -> None:
    try:
        parse_rtcp(data)
    except MalformedPacket:
        pass


@st.composite
def framed_compounds(draw: st.DrawFn) -> bytes:
    """Compounds with plausible headers, so fuzzing reaches the per-type parsers."""
    packets = []
    for _ in range(draw(st.integers(1, 4))):
        ptype = draw(st.sampled_from([200, 201, 202, 203, 204, 205, 206, 207]))
        count = draw(st.integers(0, 31))
        body = draw(st.binary(max_size=60))
        body += bytes(-len(body) % 4)
        padding = draw(st.booleans())
        first = 0x80 | (0x20 if padding else 0) | count
        packets.append(struct.pack("!BBH", first, ptype, len(body) // 4) + body)
    return b"".join(packets)


@given(framed_compounds())
def test_fuzz_framed_raises_only_malformed(data: bytes) -> None:
    try:
        parse_rtcp(data)
    except MalformedPacket:
        pass


# --- builders, checked by aiortc's parser --------------------------------------------------------


def test_build_pli_parsed_by_aiortc() -> None:
    (packet,) = RtcpPacket.parse(build_pli(0x01020304, 0x05060708))
    assert isinstance(packet, RtcpPsfbPacket)
    assert (packet.fmt, packet.ssrc, packet.media_ssrc, packet.fci) == (
        1,
        0x01020304,
        0x05060708,
        b"",
    )
    assert parse_rtcp(build_pli(1, 2)) == [Pli(1, 2)]


def test_build_fir_targets_ssrc_in_fci() -> None:
    data = build_fir(1, 0xABCDEF01, 258)
    (packet,) = RtcpPacket.parse(data)
    assert isinstance(packet, RtcpPsfbPacket)
    assert (packet.fmt, packet.ssrc, packet.media_ssrc) == (4, 1, 0)
    assert packet.fci == struct.pack("!IB3x", 0xABCDEF01, 2)
    assert parse_rtcp(data) == [Fir(1, ((0xABCDEF01, 2),))]


def test_build_nack_parsed_by_aiortc() -> None:
    lost = [10, 11, 26, 27, 100]
    (packet,) = RtcpPacket.parse(build_nack(1, 2, lost))
    assert isinstance(packet, RtcpRtpfbPacket)
    assert (packet.fmt, packet.ssrc, packet.media_ssrc, packet.lost) == (1, 1, 2, lost)
    assert len(build_nack(1, 2, lost)) == 12 + 4 * 3  # (10..26), (27), (100)


def test_build_nack_across_wrap_uses_one_entry() -> None:
    data = build_nack(1, 2, [65534, 65535, 0, 3])
    assert len(data) == 16
    assert parse_rtcp(data) == [Nack(1, 2, (65534, 65535, 0, 3))]


def test_build_nack_needs_a_sequence_number() -> None:
    with pytest.raises(ValueError):
        build_nack(1, 2, [])


@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=60))
def test_nack_round_trip(lost: list[int]) -> None:
    (nack,) = parse_rtcp(build_nack(1, 2, lost))
    assert isinstance(nack, Nack)
    assert set(nack.lost) == set(lost)


def test_build_sr_parsed_by_aiortc() -> None:
    data = build_sr(7, 0xE1234567_89ABCDEF, 0xFFFFFFFF, (1 << 32) + 5, 1234)
    (packet,) = RtcpPacket.parse(data)
    assert isinstance(packet, RtcpSrPacket)
    assert packet.ssrc == 7
    assert packet.reports == []
    info = packet.sender_info
    assert (info.ntp_timestamp, info.rtp_timestamp, info.packet_count, info.octet_count) == (
        0xE1234567_89ABCDEF,
        0xFFFFFFFF,
        5,  # the packet counter wraps
        1234,
    )


def test_build_rr_parsed_by_aiortc() -> None:
    reports = [block(2, -5), block(3, 1000), block(4, -(1 << 30))]
    (packet,) = RtcpPacket.parse(build_rr(1, reports))
    assert isinstance(packet, RtcpRrPacket)
    assert packet.ssrc == 1
    assert [(r.ssrc, r.packets_lost, r.fraction_lost, r.dlsr) for r in packet.reports] == [
        (2, -5, 17, 65536),
        (3, 1000, 17, 65536),
        (4, -(1 << 23), 17, 65536),  # clamped to 24 bits
    ]
    assert parse_rtcp(build_rr(1, reports[:2])) == [ReceiverReport(1, tuple(reports[:2]))]
    assert parse_rtcp(build_rr(9, [])) == [ReceiverReport(9, ())]
    with pytest.raises(ValueError):
        build_rr(1, [block(2, 0)] * 32)


@pytest.mark.parametrize("bitrate", [0, 1, 0x3FFFF, 0x40000, 1_500_000, 123_456_789, 10**12])
def test_build_remb_parsed_by_aiortc(bitrate: int) -> None:
    data = build_remb(1, bitrate, [5, 6, 7])
    (packet,) = RtcpPacket.parse(data)
    assert isinstance(packet, RtcpPsfbPacket)
    assert (packet.fmt, packet.ssrc, packet.media_ssrc) == (15, 1, 0)
    assert packet.fci == pack_remb_fci(bitrate, [5, 6, 7])
    (remb,) = parse_rtcp(data)
    assert remb == Remb(1, unpack_remb_fci(packet.fci)[0], (5, 6, 7))


@given(st.integers(0, (0x3FFFF << 63)))
def test_remb_bitrate_rounds_down_by_at_most_one_mantissa_step(bitrate: int) -> None:
    (remb,) = parse_rtcp(build_remb(1, bitrate, []))
    assert isinstance(remb, Remb)
    assert remb.bitrate <= bitrate
    assert bitrate - remb.bitrate < max(1, bitrate >> 17)


def test_build_remb_rejects_unrepresentable() -> None:
    with pytest.raises(ValueError):
        build_remb(1, -1, [])
    with pytest.raises(ValueError):
        build_remb(1, 0x40000 << 63, [])
    with pytest.raises(ValueError):
        build_remb(1, 100, list(range(256)))


@pytest.mark.parametrize("cname", ["", "a", "ab", "abc", "abcd", "{4c6b3ac9-cname}", "é" * 20])
def test_build_sdes_cname_parsed_by_aiortc(cname: str) -> None:
    data = build_sdes_cname(0x99, cname)
    assert len(data) % 4 == 0
    (packet,) = RtcpPacket.parse(data)
    assert isinstance(packet, RtcpSdesPacket)
    assert len(packet.chunks) == 1
    assert packet.chunks[0].ssrc == 0x99
    assert packet.chunks[0].items == [(1, cname.encode())]
    assert parse_rtcp(data) == []  # SDES is skipped


def test_built_compound_parses() -> None:
    data = build_sr(1, 2, 3, 4, 5) + build_sdes_cname(1, "c") + build_pli(1, 2)
    assert parse_rtcp(data) == [SenderReport(1, 2, 3, 4, 5, ()), Pli(1, 2)]
    assert len(RtcpPacket.parse(data)) == 3


# --- demultiplexing ------------------------------------------------------------------------------


def test_is_rtcp() -> None:
    assert is_rtcp(build_sr(1, 2, 3, 4, 5))
    assert is_rtcp(build_rr(1, []))
    assert is_rtcp(build_pli(1, 2))
    assert is_rtcp(b"\x80\xc0")  # 192, the lower bound
    assert is_rtcp(b"\x80\xdf")  # 223, the upper bound
    assert not is_rtcp(b"\x80\xe0" + bytes(10))  # RTP PT 96 with marker (224)
    assert not is_rtcp(b"\x80\x60" + bytes(10))  # RTP PT 96
    assert not is_rtcp(b"\x80\xbf" + bytes(10))  # RTP PT 63 with marker (191)
    assert not is_rtcp(b"\x80")
    assert not is_rtcp(b"")
