"""A load-test publisher of simulcast video, without encoding: three clips of three sizes,
encoded once, each replayed as its own RTP stream (own SSRC, sequence and timestamps) with the
MID and RID header extensions, as Chromium sends `sendEncodings` with rids. It follows the
server's `dynacast` events as a page does with `setParameters`: a layer switched off is not
sent, one switched back on restarts at a keyframe.

Every packet carries the load tester's trailer (loadtest/clients.py) with the layer in the
flags' high bits, so a subscriber tells which layer it receives without decoding.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections import Counter
from typing import Any

from loadtest.clients import (
    CONNECT_TIMEOUT,
    FLAG_KEYFRAME,
    TRAILER,
    ParkedTrack,
    track_name,
    wait_connected,
)
from loadtest.clip import Clip, encode_video_clip
from sfu import internals
from sfu.forwarder import SDES_MID
from sfu.rtcp import Fir, Pli, parse_rtcp
from sfu.rtp import MalformedPacket
from sfu.simulcast import rid_extension_ids
from signaling.client import KeyroomClient

RIDS = ("q", "h", "f")
# (width, height, bitrate) of each layer: quarter, half and full of 320x240.
LAYER_SIZES = ((80, 60, 60_000), (160, 120, 200_000), (320, 240, 700_000))
LAYER_SHIFT = 4
_HEADER = struct.Struct("!BBHII")


def layer_of(flags: int) -> int:
    """The simulcast layer a trailer's flags name."""
    return flags >> LAYER_SHIFT


def encode_simulcast_clips(seconds: float = 1.0, fps: int = 15) -> tuple[Clip, ...]:
    return tuple(
        encode_video_clip("vp8", seconds=seconds, fps=fps, width=w, height=h, bitrate=b)
        for w, h, b in LAYER_SIZES
    )


def _extensions(mid_id: int, mid: str, rid_id: int, rid: str) -> bytes:
    elements = bytes([mid_id << 4 | len(mid) - 1]) + mid.encode()
    elements += bytes([rid_id << 4 | len(rid) - 1]) + rid.encode()
    elements += b"\0" * (-len(elements) % 4)
    return struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements


class SimulcastPublisher:
    def __init__(
        self, client: KeyroomClient, clips: tuple[Clip, ...], track_no: int, errors: Counter[str]
    ) -> None:
        self.client = client
        self.clips = clips
        self.track_no = track_no
        self.errors = errors
        self.track_sid = ""
        self.active = [True] * len(clips)
        self.bytes_sent = [0] * len(clips)
        self.keyframe_requests = 0
        self.dynacast_events: list[dict[str, Any]] = []
        self._restart = [True] * len(clips)
        self._sink: internals.RtpSink | None = None
        self._pt = 0
        self._headers: list[bytes] = []
        client.on("dynacast", self._on_dynacast)

    async def start(self) -> None:
        client = self.client
        track = ParkedTrack("video")
        rids = RIDS[: len(self.clips)]
        info = await client.publish(
            track, source="camera", name=track_name(self.track_no), simulcast=rids
        )
        self.track_sid = info["sid"]
        await wait_connected(client, "publisher", CONNECT_TIMEOUT)
        pc = client.publisher_pc
        assert pc is not None
        transceiver = next(t for t in pc.getTransceivers() if t.sender.track is track)
        codec = next(
            c
            for c in internals.negotiated_codecs(transceiver)
            if not c.mimeType.lower().endswith("/rtx")
        )
        assert codec.payloadType is not None and transceiver.mid is not None
        self._pt = codec.payloadType
        mid_id = next(
            e.id for e in internals.negotiated_extensions(transceiver) if e.uri == SDES_MID
        )
        rid_id = rid_extension_ids(pc.localDescription.sdp)[0]
        self._headers = [_extensions(mid_id, transceiver.mid, rid_id, rid) for rid in rids]
        dtls = internals.bundle_transport(pc)
        assert dtls is not None
        self._sink = internals.RtpSink(dtls)
        internals.hook_transport(dtls, _ignore, self._on_rtcp)

    def _on_dynacast(self, frame: dict[str, Any]) -> None:
        if frame.get("track_sid") != self.track_sid:
            return
        self.dynacast_events.append(frame)
        for index, layer in enumerate(frame.get("layers", [])[: len(self.clips)]):
            active = bool(layer.get("active"))
            if active and not self.active[index]:
                self._restart[index] = True
            self.active[index] = active

    async def _on_rtcp(self, data: bytes) -> None:
        try:
            messages = parse_rtcp(data)
        except MalformedPacket:
            self.errors["publisher:malformed_rtcp"] += 1
            return
        if any(isinstance(m, Pli | Fir) for m in messages):
            self.keyframe_requests += 1
            self._restart = [True] * len(self.clips)

    async def run(self, until: float) -> None:
        """Send every active layer's clip in a loop until loop time `until`."""
        sink = self._sink
        assert sink is not None
        loop = asyncio.get_running_loop()
        count = len(self.clips)
        seqs = [random.randrange(1 << 16) for _ in range(count)]
        stamps = [random.randrange(1 << 32) for _ in range(count)]
        ssrcs = random.sample(range(1, 1 << 32), count)
        positions = [0] * count
        indexes = [0] * count
        interval = self.clips[0].frame_interval
        due = loop.time()
        while due < until:
            for layer, clip in enumerate(self.clips):
                if self._restart[layer]:
                    self._restart[layer] = False
                    positions[layer] = 0
                if self.active[layer]:
                    frame = clip.frames[positions[layer]]
                    last = len(frame.payloads) - 1
                    for n, payload in enumerate(frame.payloads):
                        flags = layer << LAYER_SHIFT
                        if frame.keyframe and n == 0:
                            flags |= FLAG_KEYFRAME
                        marker = 0x80 if n == last else 0
                        packet = (
                            _HEADER.pack(0x90, self._pt | marker, seqs[layer], stamps[layer],
                                         ssrcs[layer])
                            + self._headers[layer]
                            + payload
                            + TRAILER.pack(self.track_no, flags, indexes[layer],
                                           time.monotonic_ns())
                        )  # fmt: skip
                        if sink.send(packet):
                            self.bytes_sent[layer] += len(packet)
                        seqs[layer] = (seqs[layer] + 1) & 0xFFFF
                        indexes[layer] += 1
                    positions[layer] = (positions[layer] + 1) % len(clip.frames)
                stamps[layer] = (stamps[layer] + clip.ticks_per_frame) & 0xFFFFFFFF
            due += interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)


async def _ignore(data: bytes, arrival_time_ms: int = 0) -> None:
    pass
