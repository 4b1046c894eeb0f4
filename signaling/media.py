"""Cheap synthetic media for tests and bots, and a helper that drains received tracks.

Frames are built from a one-second cycle of precomputed planes, so producing one costs a few
memory copies; the encoder (VP8/Opus, in aiortc) is the only real CPU cost of a publisher.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from fractions import Fraction

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

VIDEO_CLOCK_RATE = 90000


class _Pacer:
    """Releases frame n at start + n * period, the way a real capture device would."""

    def __init__(self, period: float) -> None:
        self._period = period
        self._start: float | None = None
        self._index = 0

    async def next(self) -> int:
        """Wait for the next frame's slot and return its index (0, 1, 2, ...)."""
        now = time.monotonic()
        if self._start is None:
            self._start = now
        delay = self._start + self._index * self._period - now
        if delay > 0:
            await asyncio.sleep(delay)
        index = self._index
        self._index += 1
        return index


def _plane_bytes(rows: list[bytes], line_size: int) -> bytes:
    # PyAV may pad each row to line_size; the padding bytes are never displayed.
    return b"".join(row.ljust(line_size, b"\x00") for row in rows)


class SyntheticVideoTrack(MediaStreamTrack):
    """A video track of a bright bar sweeping across a gradient, at a steady `fps`.

    The picture changes every frame so the encoder produces real inter frames, and pts advance
    by exactly 90000 / fps in a 1/90000 time base.
    """

    kind = "video"

    def __init__(self, width: int = 160, height: int = 120, fps: int = 15) -> None:
        super().__init__()
        if width % 2 or height % 2:
            raise ValueError("width and height must be even (yuv420p)")
        self.width = width
        self.height = height
        self.fps = fps
        self._pacer = _Pacer(1 / fps)
        self._time_base = Fraction(1, VIDEO_CLOCK_RATE)
        self._cycle = [self._planes(i) for i in range(fps)]

    def _planes(self, index: int) -> tuple[bytes, bytes, bytes]:
        template = av.VideoFrame(self.width, self.height, "yuv420p")
        bar_width = max(2, self.width // 8)
        bar_x = index * (self.width - bar_width) // max(1, self.fps - 1)
        luma = bytes(
            235 if bar_x <= x < bar_x + bar_width else 16 + (x * 160) // self.width
            for x in range(self.width)
        )
        chroma_u = bytes([(64 + index * 128 // self.fps) % 256]) * (self.width // 2)
        chroma_v = bytes([128]) * (self.width // 2)
        y, u, v = template.planes
        return (
            _plane_bytes([luma] * self.height, y.line_size),
            _plane_bytes([chroma_u] * (self.height // 2), u.line_size),
            _plane_bytes([chroma_v] * (self.height // 2), v.line_size),
        )

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = await self._pacer.next()
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        for plane, data in zip(frame.planes, self._cycle[index % self.fps], strict=True):
            plane.update(data)
        frame.pts = index * VIDEO_CLOCK_RATE // self.fps
        frame.time_base = self._time_base
        return frame


class SyntheticAudioTrack(MediaStreamTrack):
    """A mono s16 sine tone in 20 ms frames; pts count samples in a 1/sample_rate time base."""

    kind = "audio"

    PTIME = 0.020

    def __init__(
        self, sample_rate: int = 48000, frequency: float = 440, amplitude: int = 8000
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.frequency = frequency
        self.samples_per_frame = int(sample_rate * self.PTIME)
        self._pacer = _Pacer(self.PTIME)
        self._time_base = Fraction(1, sample_rate)
        # One second of tone: an integer frequency loops over it without a click.
        tone = array(
            "h",
            (
                int(amplitude * math.sin(2 * math.pi * frequency * n / sample_rate))
                for n in range(sample_rate)
            ),
        )
        self._tone = tone.tobytes()
        self._frames_per_cycle = sample_rate // self.samples_per_frame

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = await self._pacer.next()
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.samples_per_frame)
        chunk = 2 * self.samples_per_frame
        offset = (index % self._frames_per_cycle) * chunk
        frame.planes[0].update(self._tone[offset : offset + chunk])
        frame.sample_rate = self.sample_rate
        frame.pts = index * self.samples_per_frame
        frame.time_base = self._time_base
        return frame


async def count_frames(
    track: MediaStreamTrack, duration: float, *, enough: int | None = None
) -> int:
    """Receive and count decoded frames of `track` for `duration` seconds, or until `enough`.

    aiortc queues every decoded frame of a remote track without bound, so a track that is
    received must be drained; this returns early (with the count so far) when the track ends.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    count = 0
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return count
        try:
            await asyncio.wait_for(track.recv(), remaining)
        except (TimeoutError, MediaStreamError):
            return count
        count += 1
        if enough is not None and count >= enough:
            return count


class FrameCounter:
    """Drains a received track in the background and counts its frames until stopped.

    Use it when frames must be counted while the test does other things:
    `counter = FrameCounter(track)`, later `counter.count`, finally `await counter.stop()`.
    """

    def __init__(self, track: MediaStreamTrack) -> None:
        self.track = track
        self.count = 0
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while True:
                await self.track.recv()
                self.count += 1
        except MediaStreamError:
            return

    async def wait_for(self, frames: int, timeout: float = 10) -> int:
        """Wait until at least `frames` frames were counted; raise TimeoutError otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.count < frames:
            if self._task.done() or loop.time() >= deadline:
                raise TimeoutError(f"{self.count} frames of {frames} after {timeout} s")
            await asyncio.sleep(0.02)
        return self.count

    async def stop(self) -> int:
        """Stop draining (the track itself stays live) and return the final count."""
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        return self.count
