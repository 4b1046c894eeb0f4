"""A participant driven by LiveKit's own Python SDK (`livekit`, native libwebrtc): the tests'
and the load tester's second, independent WebRTC stack against keyroom's LiveKit edge.

It publishes paced synthetic video (RGBA frames that change every frame) and audio (a tone),
and counts the frames the SDK decodes per remote identity and kind. libwebrtc ignores loopback
interfaces: the server's `--rtc-ip` must be on a real interface (a veth pair in tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from array import array
from collections import Counter
from dataclasses import dataclass, field

from livekit import rtc

SAMPLE_RATE = 48000
AUDIO_FRAME = 480  # 10 ms, what libwebrtc's audio device works in


@dataclass
class Received:
    """Decoded frames per (identity, kind); the dimensions of the last video frame."""

    frames: Counter[tuple[str, str]] = field(default_factory=Counter)
    size: dict[str, tuple[int, int]] = field(default_factory=dict)
    data: list[tuple[str, str, bytes]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, identity: str, kind: str) -> int:
        return self.frames[(identity, kind)]

    def note(self) -> None:
        self.changed.set()

    async def until(self, check: object, timeout: float) -> None:
        """Wait until `check()` is true, woken by every counted frame."""
        assert callable(check)
        try:
            async with asyncio.timeout(timeout):
                while not check():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise TimeoutError(f"not within {timeout} s; received {dict(self.frames)}") from None


class SdkPeer:
    def __init__(
        self,
        identity: str,
        *,
        width: int = 320,
        height: int = 240,
        fps: int = 15,
        simulcast: bool = False,
    ):
        self.identity = identity
        self.simulcast = simulcast
        self.width, self.height, self.fps = width, height, fps
        self.room = rtc.Room()
        self.received = Received()
        self.disconnect_reason: int | None = None
        self.disconnected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.room.on("track_subscribed", self._on_track)
        self.room.on("data_received", self._on_data)
        self.room.on("disconnected", self._on_disconnected)

    async def connect(self, url: str, token: str, *, auto_subscribe: bool = True) -> None:
        await self.room.connect(url, token, rtc.RoomOptions(auto_subscribe=auto_subscribe))

    async def publish(self, *, video: bool = True, audio: bool = True) -> list[str]:
        """Publish and start feeding; returns the track sids."""
        sids = []
        if video:
            source = rtc.VideoSource(self.width, self.height)
            track = rtc.LocalVideoTrack.create_video_track("camera", source)
            # Single-layer unless asked: tests that assert the publisher's exact frame size need
            # the subscriber to receive the one encoding there is.
            options = rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_CAMERA, simulcast=self.simulcast
            )
            self._tasks.append(asyncio.ensure_future(self._feed_video(source)))
            sids.append((await self.room.local_participant.publish_track(track, options)).sid)
        if audio:
            sound = rtc.AudioSource(SAMPLE_RATE, 1)
            mic = rtc.LocalAudioTrack.create_audio_track("microphone", sound)
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            self._tasks.append(asyncio.ensure_future(self._feed_audio(sound)))
            sids.append((await self.room.local_participant.publish_track(mic, options)).sid)
        return sids

    async def _feed_video(self, source: rtc.VideoSource) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        data = bytearray(self.width * self.height * 4)
        for index in range(10**9):
            bar = (index * 8) % self.width
            for row in range(0, self.height, 4):
                offset = (row * self.width + bar) * 4
                data[offset : offset + 32] = bytes([255, index % 256, 0, 255]) * 8
            frame = rtc.VideoFrame(self.width, self.height, rtc.VideoBufferType.RGBA, bytes(data))
            source.capture_frame(frame)
            await asyncio.sleep(max(0.0, start + (index + 1) / self.fps - loop.time()))

    async def _feed_audio(self, source: rtc.AudioSource) -> None:
        tone = array(
            "h",
            (int(8000 * math.sin(2 * math.pi * 440 * n / SAMPLE_RATE)) for n in range(SAMPLE_RATE)),
        ).tobytes()
        for index in range(10**9):
            offset = (index % (SAMPLE_RATE // AUDIO_FRAME)) * AUDIO_FRAME * 2
            chunk = tone[offset : offset + AUDIO_FRAME * 2]
            await source.capture_frame(rtc.AudioFrame(chunk, SAMPLE_RATE, 1, AUDIO_FRAME))

    def _on_track(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        self._tasks.append(asyncio.ensure_future(self._count(track, participant.identity)))

    async def _count(self, track: rtc.Track, identity: str) -> None:
        received = self.received
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            async for event in rtc.VideoStream(track):
                received.frames[(identity, "video")] += 1
                received.size[identity] = (event.frame.width, event.frame.height)
                received.note()
        else:
            async for _ in rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1):
                received.frames[(identity, "audio")] += 1
                received.note()

    def _on_data(self, packet: rtc.DataPacket) -> None:
        sender = packet.participant.identity if packet.participant is not None else ""
        self.received.data.append((sender, packet.topic or "", packet.data))
        self.received.note()

    def _on_disconnected(self, reason: int) -> None:
        self.disconnect_reason = reason
        self.disconnected.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.room.disconnect()
