"""sfu.keyframe: keyframe detection on real encoder output and crafted payloads; PLI throttling."""

from __future__ import annotations

import fractions
import struct

import av
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder, VpxPayloadDescriptor
from hypothesis import given
from hypothesis import strategies as st

from sfu.keyframe import KeyframeThrottle, is_keyframe


def video_frame(index: int, width: int = 160, height: int = 120) -> av.VideoFrame:
    """A frame whose content moves a little each time, so delta frames are real deltas."""
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane in frame.planes:
        plane.update(bytes((x * 3 + index * 5) & 0xFF for x in range(plane.buffer_size)))
    frame.pts = index * 3000
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def keyframe_flags(mime: str, payloads: list[bytes]) -> list[bool]:
    return [is_keyframe(mime, p) for p in payloads]


# --- real encoder output -------------------------------------------------------------------------


def test_vp8_encoder_output() -> None:
    encoder = Vp8Encoder()
    first, _ = encoder.encode(video_frame(0))
    assert len(first) > 1  # a keyframe spans packets: only the first starts it
    assert keyframe_flags("video/VP8", first) == [True] + [False] * (len(first) - 1)
    for index in range(1, 4):
        delta, _ = encoder.encode(video_frame(index))
        assert not any(keyframe_flags("video/VP8", delta))
    forced, _ = encoder.encode(video_frame(4), force_keyframe=True)
    assert keyframe_flags("video/VP8", forced)[0]


def test_h264_encoder_output() -> None:
    encoder = H264Encoder()
    first, _ = encoder.encode(video_frame(0))
    flags = keyframe_flags("video/H264", first)
    assert flags[0]  # SPS/PPS (STAP-A or alone) lead a keyframe
    # The IDR slice itself, alone or as the first FU-A fragment, also counts.
    idr_starts = [
        p for p in first if p[0] & 0x1F == 5 or (p[0] & 0x1F == 28 and p[1] & 0x9F == 0x85)
    ]
    assert idr_starts
    assert all(is_keyframe("video/H264", p) for p in idr_starts)
    for index in range(1, 4):
        delta, _ = encoder.encode(video_frame(index))
        assert delta
        assert not any(keyframe_flags("video/H264", delta))
    forced, _ = encoder.encode(video_frame(4), force_keyframe=True)
    assert any(keyframe_flags("video/H264", forced))


# --- VP8 payload descriptor ----------------------------------------------------------------------

KEY_HEADER = b"\x50\x02\x00\x9d\x01\x2a"  # P bit (LSB of the first byte) is 0
DELTA_HEADER = b"\x51\x02\x00"


@pytest.mark.parametrize(
    "descriptor",
    [
        VpxPayloadDescriptor(partition_start=1, partition_id=0),
        VpxPayloadDescriptor(partition_start=1, partition_id=0, picture_id=5),
        VpxPayloadDescriptor(partition_start=1, partition_id=0, picture_id=0x1234),
        VpxPayloadDescriptor(partition_start=1, partition_id=0, picture_id=300, tl0picidx=7),
        VpxPayloadDescriptor(partition_start=1, partition_id=0, tid=(2, 1)),
        VpxPayloadDescriptor(partition_start=1, partition_id=0, keyidx=9),
        VpxPayloadDescriptor(
            partition_start=1, partition_id=0, picture_id=0x7FFF, tl0picidx=1, tid=(1, 0), keyidx=3
        ),
    ],
    ids=repr,
)
def test_vp8_descriptor_variants(descriptor: VpxPayloadDescriptor) -> None:
    head = bytes(descriptor)
    assert is_keyframe("video/VP8", head + KEY_HEADER)
    assert not is_keyframe("video/VP8", head + DELTA_HEADER)
    # Anything cut before the VP8 header is no keyframe.
    for cut in range(len(head) + 1):
        assert not is_keyframe("video/VP8", head[:cut])


def test_vp8_short_picture_id_byte_is_one_byte() -> None:
    # I set, M clear: a 7-bit PictureID, so the VP8 header follows immediately.
    assert is_keyframe("video/VP8", b"\x90\x80\x05" + KEY_HEADER)
    assert not is_keyframe("video/VP8", b"\x90\x80\x05" + DELTA_HEADER)


def test_vp8_needs_start_of_partition_zero() -> None:
    assert not is_keyframe("video/VP8", b"\x00" + KEY_HEADER)  # S clear
    assert not is_keyframe("video/VP8", b"\x11" + KEY_HEADER)  # partition 1
    assert is_keyframe("video/VP8", b"\x30" + KEY_HEADER)  # N (non-reference) is irrelevant
    assert is_keyframe("video/VP8", b"\x18" + KEY_HEADER)  # reserved bit next to PID ignored


# --- H264 payloads -------------------------------------------------------------------------------


def stap_a(*nals: bytes) -> bytes:
    return b"\x18" + b"".join(struct.pack("!H", len(n)) + n for n in nals)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x65\x88\x84", True),  # IDR slice
        (b"\x67\x42\xc0", True),  # SPS
        (b"\x68\xce", False),  # PPS alone
        (b"\x41\x9a", False),  # non-IDR slice
        (b"\x06\x05", False),  # SEI
        (stap_a(b"\x67\x42", b"\x68\xce"), True),
        (stap_a(b"\x09\xf0", b"\x65\x88"), True),
        (stap_a(b"\x09\xf0", b"\x41\x9a"), False),
        (b"\x18\x00\x05\x67", False),  # STAP-A unit overruns the payload
        (b"\x18\x00\x00\x65", False),  # zero-size unit
        (b"\x18", False),
        (b"\x7c\x85\x88", True),  # FU-A start, IDR
        (b"\x7c\x87\x42", True),  # FU-A start, SPS
        (b"\x7c\x05\x88", False),  # FU-A middle, IDR
        (b"\x7c\x45\x88", False),  # FU-A end, IDR
        (b"\x7c\x81\x9a", False),  # FU-A start, non-IDR
        (b"\x7c", False),
        (b"\x19\x00\x00\x00\x02\x65\x88", False),  # STAP-B is not handled
        (b"", False),
    ],
)
def test_h264_payloads(payload: bytes, expected: bool) -> None:
    assert is_keyframe("video/H264", payload) is expected


def test_mime_is_case_insensitive_and_others_are_false() -> None:
    assert is_keyframe("video/h264", b"\x65")
    assert is_keyframe("VIDEO/VP8", b"\x10" + KEY_HEADER)
    assert not is_keyframe("video/VP9", b"\x10" + KEY_HEADER)
    assert not is_keyframe("audio/opus", b"\x65")
    assert not is_keyframe("", b"\x65")


@given(
    mime=st.sampled_from(["video/VP8", "video/H264", "video/AV1", "audio/opus"]),
    payload=st.binary(max_size=40),
)
def test_fuzz_is_keyframe_never_raises(mime: str, payload: bytes) -> None:
    result = is_keyframe(mime, payload)
    assert type(result) is bool
    assert is_keyframe(mime.upper(), payload) is result
    nal_type = payload[0] & 0x1F if payload else 0
    if mime in ("video/AV1", "audio/opus") or not payload:
        assert result is False  # no detector, or nothing to detect
    elif mime == "video/H264" and 1 <= nal_type <= 23:  # a single NAL unit: its type decides
        assert result is (nal_type in (5, 7))
    elif mime == "video/VP8" and payload[0] & 0x17 != 0x10:  # not the start of partition 0
        assert result is False


# --- KeyframeThrottle ----------------------------------------------------------------------------


def test_throttle_first_request_goes_at_once() -> None:
    throttle = KeyframeThrottle(0.5)
    assert throttle.next_due() is None
    assert throttle.request(10.0)
    assert throttle.next_due() is None
    assert not throttle.due(11.0)


def test_throttle_remembers_suppressed_request() -> None:
    throttle = KeyframeThrottle(0.5)
    assert throttle.request(10.0)
    assert not throttle.request(10.1)
    assert not throttle.request(10.2)  # coalesced with the pending one
    assert throttle.next_due() == pytest.approx(10.5)
    assert not throttle.due(10.4)
    assert throttle.due(10.5)
    assert not throttle.due(10.6)  # only once
    assert throttle.next_due() is None
    # The pending one went at 10.5, so the interval restarts from there.
    assert not throttle.request(10.9)
    assert throttle.next_due() == pytest.approx(11.0)


def test_throttle_request_after_interval_clears_pending() -> None:
    throttle = KeyframeThrottle(0.5)
    throttle.request(0.0)
    assert not throttle.request(0.2)
    assert throttle.request(0.7)  # the caller sends now, which covers the pending one
    assert throttle.next_due() is None
    assert not throttle.due(5.0)


def test_throttle_zero_interval_never_suppresses() -> None:
    throttle = KeyframeThrottle(0.0)
    assert all(throttle.request(1.0) for _ in range(3))
    with pytest.raises(ValueError):
        KeyframeThrottle(-1.0)


@given(
    interval=st.sampled_from([0.1, 0.5, 1.0]),
    steps=st.lists(st.tuples(st.floats(0, 1.5), st.booleans()), max_size=40),
)
def test_throttle_spacing_and_no_lost_request(
    interval: float, steps: list[tuple[float, bool]]
) -> None:
    throttle = KeyframeThrottle(interval)
    now = 0.0
    sent: list[float] = []
    unanswered = False  # a request made since the last send
    for delta, is_request in steps:
        now += delta
        went = throttle.request(now) if is_request else throttle.due(now)
        unanswered = (unanswered or is_request) and not went
        if went:
            sent.append(now)
    assert all(b >= a + interval for a, b in zip(sent, sent[1:], strict=False))
    due = throttle.next_due()
    assert (due is not None) == unanswered
    if due is not None:
        if due > now:
            assert not throttle.due(now)
        assert throttle.due(max(now, due))
