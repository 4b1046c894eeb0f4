"""sfu.rtp: header parsing, extension lookup and per-subscriber rewriting.

aiortc's RtpPacket and header-extension packing serve as the independent reference: packets are
built with it, and rewritten packets are parsed back with it.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    HeaderExtensionsMap,
    RtpPacket,
    pack_header_extensions,
    unpack_header_extensions,
)
from hypothesis import given
from hypothesis import strategies as st

import sfu.rtprewrite
from sfu.rtp import MalformedPacket, get_extension, parse_rtp
from sfu.rtprewrite import RtpRewriter

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


def ext_map_for(ids: dict[str, int]) -> HeaderExtensionsMap:
    extensions_map = HeaderExtensionsMap()
    extensions_map.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i, uri=uri) for uri, i in ids.items()
            ]
        )
    )
    return extensions_map


# The publisher's and the subscriber's negotiated ids deliberately differ.
PUB_IDS = {MID: 1, ABS_SEND_TIME: 3, AUDIO_LEVEL: 5, TWCC: 7}
SUB_IDS = {MID: 4, ABS_SEND_TIME: 2, AUDIO_LEVEL: 9, TWCC: 11}
PUB_MAP = ext_map_for(PUB_IDS)
SUB_MAP = ext_map_for(SUB_IDS)


def publisher_packet(
    *,
    seq: int = 1000,
    ts: int = 90000,
    pt: int = 96,
    marker: int = 1,
    payload: bytes = b"\x10\x20\x30" * 100,
    csrc: tuple[int, ...] = (),
    padding: int = 0,
    extensions: bool = True,
) -> bytes:
    packet = RtpPacket(
        payload_type=pt,
        marker=marker,
        sequence_number=seq,
        timestamp=ts,
        ssrc=0x11223344,
        payload=payload,
    )
    packet.csrc = list(csrc)
    packet.padding_size = padding
    if extensions:
        packet.extensions.mid = "0"
        packet.extensions.abs_send_time = 0x123456
        packet.extensions.audio_level = (True, 42)
        packet.extensions.transport_sequence_number = 0xBEEF
    return packet.serialize(PUB_MAP)


def rewriter(**overrides: object) -> RtpRewriter:
    kwargs: dict = {
        "out_ssrc": 0xCAFEBABE,
        "pt_map": {96: 100, 97: 101},
        "ext_map": {
            PUB_IDS[ABS_SEND_TIME]: SUB_IDS[ABS_SEND_TIME],
            PUB_IDS[AUDIO_LEVEL]: SUB_IDS[AUDIO_LEVEL],
            PUB_IDS[TWCC]: SUB_IDS[TWCC],
        },
        "mid_ext_id": SUB_IDS[MID],
        "mid": "video-7",
        "seq_start": 5000,
        "ts_start": 123456,
    }
    kwargs.update(overrides)
    return RtpRewriter(**kwargs)


def rewrite(rw: RtpRewriter, data: bytes) -> bytes:
    out = rw.rewrite(data, parse_rtp(data))
    assert out is not None
    return out


def raw_packet(profile: int | None, block: bytes, *, payload: bytes = b"payload") -> bytes:
    """A packet with an exact extension block (aiortc can only write the URIs it knows)."""
    if profile is None:
        return struct.pack("!BBHII", 0x80, 96, 1, 2, 3) + payload
    header = struct.pack("!BBHIIHH", 0x90, 96, 1, 2, 3, profile, len(block) // 4)
    return header + block + payload


def out_elements(out: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    info = parse_rtp(out)
    if info.ext_profile is None:
        return 0, []
    block = out[info.ext_start : info.ext_end]
    return info.ext_profile, unpack_header_extensions(info.ext_profile, block)


# --- parse_rtp -----------------------------------------------------------------------------------


def test_parse_matches_aiortc_fields_and_offsets() -> None:
    data = publisher_packet(csrc=(1, 2))
    info = parse_rtp(data)
    ref = RtpPacket.parse(data, PUB_MAP)
    assert info.payload_type == ref.payload_type == 96
    assert info.sequence == ref.sequence_number
    assert info.timestamp == ref.timestamp
    assert info.ssrc == ref.ssrc
    assert info.marker is True
    assert info.csrc_count == 2
    assert info.ext_profile == 0xBEDE
    assert info.ext_start == 12 + 8 + 4
    assert data[info.payload_start : info.payload_end] == ref.payload
    assert info.payload_end == len(data)


def test_parse_without_extension_or_marker() -> None:
    data = publisher_packet(extensions=False, marker=0)
    info = parse_rtp(data)
    assert info.marker is False
    assert info.ext_profile is None
    assert info.ext_start == info.ext_end == info.payload_start == 12


def test_parse_excludes_padding_from_payload() -> None:
    data = publisher_packet(padding=7)
    info = parse_rtp(data)
    assert info.payload_end == len(data) - 7
    assert data[info.payload_start : info.payload_end] == RtpPacket.parse(data).payload


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x80\x60" + bytes(9), id="11 bytes"),
        pytest.param(b"\x40\x60" + bytes(10), id="version 1"),
        pytest.param(b"\x00\x60" + bytes(10), id="version 0"),
        pytest.param(b"\x82\x60" + bytes(14), id="CSRC overrun"),
        pytest.param(b"\x90\x60" + bytes(12), id="extension header overrun"),
        pytest.param(b"\x90\x60" + bytes(10) + b"\xbe\xde\x00\x02" + bytes(7), id="ext overrun"),
        pytest.param(b"\xa0\x60" + bytes(10) + b"abc\x00", id="padding length 0"),
        pytest.param(b"\xa0\x60" + bytes(10) + b"abc\x05", id="padding too long"),
        pytest.param(b"\xa0\x60" + bytes(10), id="padding with no byte"),
    ],
)
def test_parse_rejects_malformed(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        parse_rtp(data)


def test_padding_may_fill_the_whole_payload() -> None:
    # Padding-only packets (bandwidth probes) are valid RTP.
    info = parse_rtp(b"\xa0\x60" + bytes(10) + b"\x00\x00\x00\x04")
    assert info.payload_start == info.payload_end == 12


def test_malformed_packet_is_a_value_error() -> None:
    assert issubclass(MalformedPacket, ValueError)


@given(st.binary(max_size=80))
def test_parse_raises_only_malformed(data: bytes) -> None:
    try:
        info = parse_rtp(data)
    except MalformedPacket:
        return
    assert 12 <= info.ext_start <= info.ext_end == info.payload_start
    assert info.payload_start <= info.payload_end <= len(data)


# --- get_extension -------------------------------------------------------------------------------


def test_get_extension_one_byte_from_aiortc_packet() -> None:
    data = publisher_packet()
    info = parse_rtp(data)
    assert get_extension(data, info, PUB_IDS[MID]) == b"0"
    assert get_extension(data, info, PUB_IDS[ABS_SEND_TIME]) == b"\x12\x34\x56"
    assert get_extension(data, info, PUB_IDS[TWCC]) == b"\xbe\xef"
    assert get_extension(data, info, 2) is None


def test_get_extension_skips_padding_between_elements() -> None:
    block = b"\x10a\x00\x00\x21bc\x00"
    data = raw_packet(0xBEDE, block)
    info = parse_rtp(data)
    assert get_extension(data, info, 1) == b"a"
    assert get_extension(data, info, 2) == b"bc"


def test_get_extension_two_byte_form_and_appbits() -> None:
    block = b"\x01\x00\x00\x20\x03xyz" + bytes(1)
    for profile in (0x1000, 0x100F):
        data = raw_packet(profile, block)
        info = parse_rtp(data)
        assert get_extension(data, info, 1) == b""
        assert get_extension(data, info, 0x20) == b"xyz"
        assert get_extension(data, info, 2) is None


def test_get_extension_stops_at_truncated_element() -> None:
    data = raw_packet(0xBEDE, b"\x10a\x23bc")  # id 2 claims 4 bytes, only 2 remain
    info = parse_rtp(data)
    assert get_extension(data, info, 1) == b"a"
    assert get_extension(data, info, 2) is None
    data = raw_packet(0x1000, b"\x01\x01a\x02")  # id 2's length byte is missing
    info = parse_rtp(data)
    assert get_extension(data, info, 1) == b"a"
    assert get_extension(data, info, 2) is None


def test_get_extension_stops_at_id_15() -> None:
    data = raw_packet(0xBEDE, b"\x10a\xf0\x00\x20b" + bytes(2))
    info = parse_rtp(data)
    assert get_extension(data, info, 1) == b"a"
    assert get_extension(data, info, 2) is None


def test_get_extension_without_block_or_with_unknown_profile() -> None:
    data = raw_packet(None, b"")
    assert get_extension(data, parse_rtp(data), 1) is None
    data = raw_packet(0xABCD, b"\x10abc")
    assert get_extension(data, parse_rtp(data), 1) is None


# --- RtpRewriter: fields, extensions, payload ----------------------------------------------------


def test_rewrite_checked_by_aiortc() -> None:
    payload = bytes(range(256)) * 4
    out = rewrite(rewriter(), publisher_packet(payload=payload, csrc=(7, 8, 9)))
    assert type(out) is bytes
    packet = RtpPacket.parse(out, SUB_MAP)
    assert packet.ssrc == 0xCAFEBABE
    assert packet.payload_type == 100
    assert packet.marker == 1
    assert packet.sequence_number == 5000
    assert packet.timestamp == 123456
    assert packet.csrc == []
    assert packet.payload == payload
    assert packet.padding_size == 0
    ext = packet.extensions
    assert ext.mid == "video-7"
    assert ext.abs_send_time == 0x123456
    assert ext.audio_level == (True, 42)
    assert ext.transport_sequence_number == 0xBEEF


def test_rewrite_drops_unmapped_extensions_and_input_mid() -> None:
    out = rewrite(rewriter(ext_map={PUB_IDS[TWCC]: 3}), publisher_packet())
    assert out_elements(out) == (0xBEDE, [(3, b"\xbe\xef"), (4, b"video-7")])


def test_rewrite_without_any_output_extension_has_no_block() -> None:
    out = rewrite(rewriter(ext_map={}, mid_ext_id=None), publisher_packet(marker=0))
    assert out[0] == 0x80  # X bit clear
    assert out[1] == 100
    info = parse_rtp(out)
    assert info.ext_profile is None and info.payload_start == 12


def test_rewrite_adds_mid_when_input_has_no_block() -> None:
    out = rewrite(rewriter(), publisher_packet(extensions=False))
    assert out_elements(out) == (0xBEDE, [(4, b"video-7")])
    assert RtpPacket.parse(out, SUB_MAP).extensions.mid == "video-7"


def test_rewrite_mid_only_in_two_byte_form_when_long() -> None:
    mid = "m" * 20
    out = rewrite(rewriter(ext_map={}, mid=mid), publisher_packet(extensions=False))
    assert out_elements(out) == (0x1000, [(4, mid.encode())])


def test_rewrite_two_byte_output_for_large_id() -> None:
    out = rewrite(rewriter(ext_map={PUB_IDS[TWCC]: 200}), publisher_packet())
    assert out_elements(out) == (0x1000, [(200, b"\xbe\xef"), (4, b"video-7")])


def test_rewrite_two_byte_input_becomes_one_byte_when_it_fits() -> None:
    block = b"\x21\x02ab\x00\x30\x01c" + bytes(3)
    out = rewrite(rewriter(ext_map={0x21: 1, 0x30: 2}), raw_packet(0x1000, block))
    assert out_elements(out) == (0xBEDE, [(1, b"ab"), (2, b"c"), (4, b"video-7")])


def test_rewrite_keeps_zero_length_element_in_two_byte_form() -> None:
    block = b"\x21\x00\x22\x01z" + bytes(3)
    out = rewrite(rewriter(ext_map={0x21: 5, 0x22: 6}), raw_packet(0x1000, block))
    assert out_elements(out) == (0x1000, [(5, b""), (6, b"z"), (4, b"video-7")])


def test_rewrite_drops_unknown_profile_block() -> None:
    out = rewrite(rewriter(ext_map={1: 2}), raw_packet(0xABCD, b"\x10abc"))
    assert out_elements(out) == (0xBEDE, [(4, b"video-7")])


def test_rewrite_ignores_elements_after_truncation_or_id_15() -> None:
    fast = rewriter(ext_map={1: 1, 2: 2}, mid_ext_id=None)
    generic = rewriter(ext_map={1: 1, 2: 2, 3: 200}, mid_ext_id=None)  # may need two-byte form
    for rw in (fast, generic):
        out = rewrite(rw, raw_packet(0xBEDE, b"\x10a\x23bc"))
        assert out_elements(out) == (0xBEDE, [(1, b"a")])
        out = rewrite(rw, raw_packet(0xBEDE, b"\x10a\xf0\x00\x20b" + bytes(2)))
        assert out_elements(out) == (0xBEDE, [(1, b"a")])


def test_rewrite_keeps_padding() -> None:
    data = publisher_packet(padding=9)
    out = rewrite(rewriter(), data)
    assert out[0] & 0x20
    assert out[-9:] == data[-9:]
    packet = RtpPacket.parse(out, SUB_MAP)
    assert packet.padding_size == 9
    assert packet.payload == RtpPacket.parse(data).payload


def test_rewrite_unmapped_payload_type_is_none_and_changes_nothing() -> None:
    rw = rewriter()
    data = publisher_packet(pt=111)
    assert rw.rewrite(data, parse_rtp(data)) is None
    assert not rw.started
    assert rw.packets == rw.octets == 0


def test_rewrite_maps_each_payload_type() -> None:
    rw = rewriter()
    assert rewrite(rw, publisher_packet(pt=97, marker=0))[1] == 101
    assert rewrite(rw, publisher_packet(pt=96, marker=1))[1] == 0x80 | 100


def test_counters_count_payload_octets_without_padding() -> None:
    rw = rewriter()
    rewrite(rw, publisher_packet(payload=bytes(100), padding=4))
    rewrite(rw, publisher_packet(payload=bytes(50), seq=1001))
    assert rw.packets == 2
    assert rw.octets == 150


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        rewriter(out_ssrc=1 << 32)
    with pytest.raises(ValueError):
        rewriter(pt_map={96: 128})
    with pytest.raises(ValueError):
        rewriter(ext_map={0: 1})
    with pytest.raises(ValueError):
        rewriter(ext_map={1: 256})
    with pytest.raises(ValueError):
        rewriter(ext_map={1: 2, 3: 2})
    with pytest.raises(ValueError):
        rewriter(ext_map={1: 4})  # 4 is the MID's output id
    with pytest.raises(ValueError):
        rewriter(mid="")
    with pytest.raises(ValueError):
        rewriter(mid_ext_id=0)


# --- RtpRewriter: sequence numbers and timestamps ------------------------------------------------


def out_seq_ts(rw: RtpRewriter, seq: int, ts: int) -> tuple[int, int]:
    packet = RtpPacket.parse(rewrite(rw, publisher_packet(seq=seq, ts=ts)))
    return packet.sequence_number, packet.timestamp


def test_offsets_fixed_by_first_packet_survive_reorder_and_repeat() -> None:
    rw = rewriter(seq_start=5000, ts_start=123456)
    assert not rw.started
    assert out_seq_ts(rw, 1000, 90000) == (5000, 123456)
    assert rw.started
    assert out_seq_ts(rw, 1002, 93000) == (5002, 126456)
    assert out_seq_ts(rw, 1001, 90000) == (5001, 123456)  # late arrival
    assert out_seq_ts(rw, 1002, 93000) == (5002, 126456)  # duplicate
    assert out_seq_ts(rw, 999, 87000) == (4999, 120456)  # older than the first


def test_sequence_and_timestamp_wrap_around() -> None:
    rw = rewriter(seq_start=65534, ts_start=0xFFFFFFFF - 1000)
    assert out_seq_ts(rw, 10, 500) == (65534, 0xFFFFFFFF - 1000)
    assert out_seq_ts(rw, 11, 1500) == (65535, 0xFFFFFFFF)
    assert out_seq_ts(rw, 12, 2500) == (0, 999)
    # The input wraps too.
    rw = rewriter(seq_start=100, ts_start=100)
    assert out_seq_ts(rw, 65535, 0xFFFFFFFF) == (100, 100)
    assert out_seq_ts(rw, 0, 0) == (101, 101)
    assert out_seq_ts(rw, 65534, 0xFFFFFFFE) == (99, 99)


def test_last_out_tracks_the_newest_packet_only() -> None:
    rw = rewriter(seq_start=65535, ts_start=1000)
    out_seq_ts(rw, 1, 10)
    assert (rw.last_out_seq, rw.last_out_ts) == (65535, 1000)
    out_seq_ts(rw, 3, 30)
    assert (rw.last_out_seq, rw.last_out_ts) == (1, 1020)
    out_seq_ts(rw, 2, 20)  # late: the newest stays
    assert (rw.last_out_seq, rw.last_out_ts) == (1, 1020)


def test_translate_timestamp() -> None:
    rw = rewriter(ts_start=100)
    with pytest.raises(RuntimeError):
        rw.translate_timestamp(0)
    out_seq_ts(rw, 1, 1000)
    assert rw.translate_timestamp(1000) == 100
    assert rw.translate_timestamp(4000) == 3100
    assert rw.translate_timestamp(900) == 0
    assert rw.translate_timestamp(899) == 0xFFFFFFFF


# --- RtpRewriter: properties against aiortc's extension packing ----------------------------------

one_byte_elements = st.lists(
    st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=6
)
two_byte_elements = st.lists(
    st.tuples(st.integers(1, 255), st.binary(min_size=0, max_size=40)), max_size=6
)
mids = st.one_of(st.none(), st.text(min_size=1, max_size=20).filter(lambda m: len(m.encode()) < 40))


@given(
    elements=st.one_of(one_byte_elements, two_byte_elements),
    mapping=st.dictionaries(st.integers(1, 255), st.integers(1, 255), max_size=8),
    mid_id=st.integers(1, 255),
    mid=mids,
    payload=st.binary(max_size=40),
)
def test_rewritten_extension_block_equals_aiortc_packing(
    elements: list[tuple[int, bytes]],
    mapping: dict[int, int],
    mid_id: int,
    mid: str | None,
    payload: bytes,
) -> None:
    # Unique output ids, none clashing with the MID's, as the constructor requires.
    ext_map: dict[int, int] = {}
    for in_id, out_id in mapping.items():
        if out_id not in ext_map.values() and (mid is None or out_id != mid_id):
            ext_map[in_id] = out_id
    profile, block = pack_header_extensions(elements)
    data = raw_packet(profile or None, block, payload=payload)
    rw = RtpRewriter(
        out_ssrc=1,
        pt_map={96: 96},
        ext_map=ext_map,
        mid_ext_id=mid_id if mid is not None else None,
        mid=mid or "",
        seq_start=0,
        ts_start=0,
    )
    out = rewrite(rw, data)

    expected = [(ext_map[i], v) for i, v in elements if i in ext_map]
    if mid is not None:
        expected.append((mid_id, mid.encode()))
    want_profile, want_block = pack_header_extensions(expected)
    info = parse_rtp(out)
    assert (info.ext_profile or 0) == want_profile
    assert out[info.ext_start : info.ext_end] == want_block
    assert out[info.payload_start :] == payload


@given(data=st.binary(max_size=80), large_ids=st.booleans())
def test_fuzz_rewrite_only_malformed_or_valid_output(data: bytes, large_ids: bool) -> None:
    try:
        info = parse_rtp(data)
    except MalformedPacket:
        return
    for ext_id in (1, 2, 15, 255):
        get_extension(data, info, ext_id)
    ext_map = {i: (i + 200 if large_ids else i) for i in range(1, 15)}
    rw = RtpRewriter(
        out_ssrc=5,
        pt_map={pt: pt for pt in range(128)},
        ext_map=ext_map,
        mid_ext_id=15 if large_ids else None,
        mid="x",
        seq_start=0,
        ts_start=0,
    )
    out = rw.rewrite(data, info)
    assert out is not None
    out_info = parse_rtp(out)
    assert (
        out[out_info.payload_start : out_info.payload_end]
        == (data[info.payload_start : info.payload_end])
    )
    assert out_info.marker == info.marker
    assert out_info.payload_type == info.payload_type


def test_one_input_rewritten_for_many_down_tracks_is_each_ones_own() -> None:
    """Down-tracks share the remapped elements of the packet they all receive (a memo of the
    last input): each still gets its own MID and ids, exactly what it gets alone."""
    other_ids = {PUB_IDS[ABS_SEND_TIME]: 6, PUB_IDS[AUDIO_LEVEL]: 8}
    subscribers = [
        dict(mid="0"),
        dict(mid="video-7"),  # same ids, another MID (and padding)
        dict(mid="0", ext_map=other_ids),  # other ids
        dict(mid="1", ext_map=other_ids),
        dict(mid="0"),
    ]
    packets = [publisher_packet(seq=1000 + n, ts=n * 3000) for n in range(3)]
    shared = [rewriter(**s) for s in subscribers]  # type: ignore[arg-type]
    alone = [rewriter(**s) for s in subscribers]  # type: ignore[arg-type]
    for packet in packets:
        together = [rewrite(rw, packet) for rw in shared]  # one input to every down-track
        separate = []
        for rw in alone:
            sfu.rtprewrite._elements_of[0] = None
            separate.append(rewrite(rw, packet))
        assert together == separate
        assert together[0] == together[4] and together[0] != together[1] != together[2]
    # Equal maps are one key; the keys stay bounded.
    assert shared[0]._one_key is shared[1]._one_key is not shared[2]._one_key
    free_ids = [i for i in range(1, 15) if i != SUB_IDS[MID]]
    for a, b, c in itertools.islice(itertools.permutations(free_ids, 3), 1100):
        rewriter(ext_map={PUB_IDS[ABS_SEND_TIME]: a, PUB_IDS[AUDIO_LEVEL]: b, PUB_IDS[TWCC]: c})
        assert len(sfu.rtprewrite._ONE_MAPS) <= sfu.rtprewrite._MAX_ONE_MAPS


@pytest.mark.parametrize("extensions", [True, False])
def test_a_patched_payload_start_replaces_the_inputs_and_keeps_the_rest(extensions: bool) -> None:
    data = publisher_packet(payload=b"ABCDEFGH", padding=4, extensions=extensions)
    info = parse_rtp(data)
    plain = rewrite(rewriter(), data)
    out = rewriter().rewrite(data, info, b"xyz", info.payload_start + 2)
    assert out is not None
    header = len(plain) - (len(data) - info.payload_start)
    assert out[:header] == plain[:header]
    assert out[header:] == b"xyz" + data[info.payload_start + 2 :]  # "CDEFGH" and the padding
