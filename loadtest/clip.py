"""Media clips encoded once per load-test run and replayed by every publisher.

Encoding is the only expensive thing a real publisher does; a load generator that encoded per
client would measure itself. A clip is a list of frames, each a list of RTP payloads already
packetized by aiortc's own packetizer, so the server sees exactly what an aiortc peer sends.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction

import av
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from signaling.client.e2ee import FrameCryptor

VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000
AUDIO_PTIME = 0.020


@dataclass(frozen=True)
class ClipFrame:
    payloads: tuple[bytes, ...]
    keyframe: bool


@dataclass(frozen=True)
class Clip:
    kind: str
    mime_type: str
    clock_rate: int
    frame_interval: float  # seconds between frames
    frames: tuple[ClipFrame, ...]

    @property
    def ticks_per_frame(self) -> int:
        return round(self.clock_rate * self.frame_interval)

    @property
    def packets_per_second(self) -> float:
        packets = sum(len(f.payloads) for f in self.frames)
        return packets / (len(self.frames) * self.frame_interval)


def encode_video_clip(
    codec: str = "vp8",
    *,
    seconds: float = 2.0,
    fps: int = 15,
    width: int = 320,
    height: int = 240,
    bitrate: int = 500_000,
) -> Clip:
    """`seconds` of moving noise, one keyframe at the start (a replay restarts there)."""
    mime = {"vp8": "video/VP8", "h264": "video/H264"}[codec.lower()]
    parameters: dict[str, str | int | None] = {}
    if mime == "video/H264":
        parameters = {
            "packetization-mode": "1",
            "level-asymmetry-allowed": "1",
            "profile-level-id": "42e01f",
        }
    encoder = get_encoder(
        RTCRtpCodecParameters(
            mimeType=mime, clockRate=VIDEO_CLOCK, payloadType=96, parameters=parameters
        )
    )
    encoder.target_bitrate = bitrate  # type: ignore[attr-defined]
    count = max(1, round(seconds * fps))
    # Low-amplitude moving noise keeps the encoder near its target bitrate: a flat test
    # pattern would compress to a few hundred bytes per frame and understate packet rates.
    noise = bytes(112 + (b & 0x1F) for b in os.urandom(width * height * 2))
    frames = []
    for index in range(count):
        frame = av.VideoFrame(width, height, "yuv420p")
        offset = (index * 7919) % (len(noise) - width * height)
        frame.planes[0].update(noise[offset : offset + frame.planes[0].buffer_size])
        for plane in frame.planes[1:]:
            plane.update(bytes([128]) * plane.buffer_size)
        frame.pts = index * VIDEO_CLOCK // fps
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        payloads, _ = encoder.encode(frame, index == 0)
        frames.append(ClipFrame(tuple(payloads), index == 0))
    return Clip("video", mime, VIDEO_CLOCK, 1 / fps, tuple(frames))


def encode_audio_clip(*, seconds: float = 1.0, frequency: int = 440) -> Clip:
    """Opus in 20 ms frames of a sine tone."""
    encoder = get_encoder(
        RTCRtpCodecParameters(
            mimeType="audio/opus", clockRate=AUDIO_CLOCK, channels=2, payloadType=111
        )
    )
    samples = int(AUDIO_CLOCK * AUDIO_PTIME)
    frames = []
    for index in range(max(1, round(seconds / AUDIO_PTIME))):
        frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        start = index * samples
        tone = b"".join(
            int(8000 * math.sin(2 * math.pi * frequency * (start + n) / AUDIO_CLOCK)).to_bytes(
                2, "little", signed=True
            )
            for n in range(samples)
        )
        frame.planes[0].update(tone)
        frame.sample_rate = AUDIO_CLOCK
        frame.pts = start
        frame.time_base = Fraction(1, AUDIO_CLOCK)
        payloads, _ = encoder.encode(frame)
        if payloads:
            frames.append(ClipFrame(tuple(payloads), False))
    return Clip("audio", "audio/opus", AUDIO_CLOCK, AUDIO_PTIME, tuple(frames))


def encrypted_clip(clip: Clip, cryptor: FrameCryptor, identity: str) -> Clip:
    """`clip` as `identity` sends it end-to-end encrypted (signaling/client/e2ee.py): each frame
    reassembled, encrypted and packetized again (VP8, Opus)."""
    from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload

    frames = []
    for index, frame in enumerate(clip.frames):
        if clip.mime_type.lower() == "video/vp8":
            plain = b"".join(vp8_depayload(p) for p in frame.payloads)
            sealed = cryptor.encrypt(identity, "video", plain)
            payloads = tuple(Vp8Encoder._packetize(sealed, index + 1))  # noqa: SLF001
        elif clip.kind == "audio":
            payloads = tuple(cryptor.encrypt(identity, "audio", p) for p in frame.payloads)
        else:
            raise ValueError(f"E2EE load tests send VP8 or Opus, not {clip.mime_type}")
        frames.append(ClipFrame(payloads, frame.keyframe))
    return Clip(clip.kind, clip.mime_type, clip.clock_rate, clip.frame_interval, tuple(frames))
