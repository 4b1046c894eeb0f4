"""Cheap load-test participants: publishers replay a clip, subscribers count packets.

Both are `KeyroomClient`s (the real signaling and two real aiortc peer connections each), with
aiortc's media pipeline bypassed the way the server bypasses it:
- a publisher's transceiver carries a `ParkedTrack` whose recv() never returns, so aiortc never
  creates an encoder; the publisher writes the clip's RTP itself through `internals.RtpSink`
  (SRTP protect + sendto), with its own sequence numbers and timestamps;
- a subscriber's receivers are never started (no decoder thread), and plaintext RTP is taken from
  the datagram callback (`internals.hook_transport_fast`) and only counted.

Every packet carries a trailer at the end of its payload (the SFU forwards payloads untouched):
track number, flags, the publisher's packet index and its send time on CLOCK_MONOTONIC, so a
subscriber in the same process measures loss and one-way latency through the SFU per stream.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpTransceiver
from aiortc.codecs import CODECS, is_rtx
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from loadtest.clip import Clip
from loadtest.reservoir import Reservoir
from loadtest.sentcache import FLAG_RESENT, SentCache, resent
from sfu import internals
from sfu.rtcp import Fir, Nack, Pli, parse_rtcp
from sfu.rtp import MalformedPacket
from signaling.client import KeyroomClient, RemoteTrack
from signaling.client.e2ee import FrameCryptor

# track number, flags, packet index, send time (ns, CLOCK_MONOTONIC)
TRAILER = struct.Struct("!HBIQ")
FLAG_KEYFRAME = 1
_RTP_HEADER = struct.Struct("!BBHII")
CONNECT_TIMEOUT = 10.0
# Latency samples kept per run; beyond it, samples are taken at random (reservoir sampling).
MAX_LATENCY_SAMPLES = 200_000
# The same, per second of the run, for the latency-over-time plot.
MAX_SAMPLES_PER_SECOND = 2_000


class LoadClient(Protocol):
    """What publishers and subscribers use of a participant: `KeyroomClient`'s members, which a
    baseline server's adapter (`loadtest.baseline_relay.BaselineClient`) also provides."""

    @property
    def publisher_pc(self) -> RTCPeerConnection | None: ...

    @property
    def subscriber_pc(self) -> RTCPeerConnection | None: ...

    async def connect(self, timeout: float = ...) -> dict[str, Any]: ...

    async def publish(
        self, track: MediaStreamTrack, *, source: str = ..., name: str = ...
    ) -> dict[str, Any]: ...

    def on(self, event_type: str, callback: Callable[[Any], Any]) -> None: ...

    async def leave(self) -> None: ...

    async def close(self) -> None: ...


def prefer_video_codec(mime_type: str) -> None:
    """Make every peer connection of this (load-generator) process offer `mime_type` first.

    An aiortc answerer, keyroom's included, picks the first common codec in the offer's order,
    and aiortc offers VP8 first: publishing the H264 clip needs H264 at the head of the offer.
    The load generator's `KeyroomClient` adds its transceivers itself, so the order is set where
    aiortc reads it for every offer, the process-wide codec list (its RTX entries keep following
    their codecs: the sort is stable and an RTX entry goes with the codec it repairs).
    """
    video = CODECS["video"]
    wanted = {c.payloadType for c in video if c.mimeType.lower() == mime_type.lower()}

    def rank(codec: RTCRtpCodecParameters) -> int:
        if is_rtx(codec):
            return 0 if codec.parameters.get("apt") in wanted else 1
        return 0 if codec.payloadType in wanted else 1

    video.sort(key=rank)


def track_name(track_no: int) -> str:
    return f"load-{track_no}"


def track_number(name: str) -> int:
    """The publisher's track number from the name it published under (`track_name`)."""
    return int(name.rsplit("-", 1)[1])


class ParkedTrack(MediaStreamTrack):
    """A track aiortc's sender waits on forever: it announces msid and SSRC, never encodes."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self) -> Any:
        await asyncio.Event().wait()


async def wait_connected(client: LoadClient, which: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            pc = client.publisher_pc if which == "publisher" else client.subscriber_pc
            if pc is not None and pc.connectionState == "connected":
                return
            if pc is not None and pc.connectionState in ("failed", "closed"):
                raise ConnectionError(f"{which} connection {pc.connectionState}")
            await asyncio.sleep(0.01)


class Latencies:
    """One-way latency samples (ns) of all subscribers, bounded by reservoir sampling, overall
    and per second since `origin_ns` (for the plot)."""

    __slots__ = (
        "origin_ns",
        "_all",
        "_window",
        "_seconds",
        "_second",
        "_second_ends_ns",
        "_current",
    )

    def __init__(self, origin_ns: int | None = None) -> None:
        self.origin_ns = time.monotonic_ns() if origin_ns is None else origin_ns
        self._all = Reservoir(MAX_LATENCY_SAMPLES)
        self._window: Reservoir | None = None  # the measured window's, once it ended
        self._seconds: dict[int, Reservoir] = {}
        # The second being filled, so most values find their reservoir without a division.
        self._second = -1
        self._second_ends_ns = self.origin_ns
        self._current = Reservoir(MAX_SAMPLES_PER_SECOND)

    @property
    def samples(self) -> list[int]:
        """The measured window's samples once it ended (`start_window`, `end_window`), else
        all so far."""
        return (self._window or self._all).values

    @property
    def seen(self) -> int:
        return (self._window or self._all).seen

    def start_window(self) -> None:
        """Overall samples from now on only: the joins' ramp before is not the steady load."""
        self._all = Reservoir(MAX_LATENCY_SAMPLES)

    def end_window(self) -> None:
        self._window, self._all = self._all, Reservoir(MAX_LATENCY_SAMPLES)

    @property
    def by_second(self) -> dict[int, list[int]]:
        return {second: r.values for second, r in self._seconds.items()}

    def add(self, now_ns: int, value: int) -> None:
        self._all.offer(value)
        if not self._second_ends_ns - 1_000_000_000 <= now_ns < self._second_ends_ns:
            self._second = (now_ns - self.origin_ns) // 1_000_000_000
            self._second_ends_ns = self.origin_ns + (self._second + 1) * 1_000_000_000
            current = self._seconds.get(self._second)
            if current is None:
                current = self._seconds[self._second] = Reservoir(MAX_SAMPLES_PER_SECOND)
            self._current = current
        self._current.offer(value)


def next_frame(position: int, count: int, keyframes_on_request: bool) -> int:
    """The clip's frame after `position` (of `count`; frame 0 is its one keyframe). Looping
    back to the keyframe sends one every pass (2 s): after the subscribers' joins, whose
    keyframe requests reset every publisher at once, every publisher's keyframe then falls in
    the same frame interval, every pass, in every room (at 28 rooms of 4 publishers, 3,100
    packets in ~75 ms: more than half a server core forwards in that time; docs/benchmarks.md,
    "What held the loop"). With `keyframes_on_request` the loop skips the keyframe, as a
    browser's encoder sends one only when asked."""
    following = (position + 1) % count
    return 1 if following == 0 and keyframes_on_request and count > 1 else following


class Publisher:
    """Publishes one track and replays `clip` on it at the clip's pace."""

    def __init__(
        self,
        client: LoadClient,
        clip: Clip,
        track_no: int,
        errors: Counter[str],
        trailer: bool = True,
        room: str = "",
        e2ee: FrameCryptor | None = None,
    ) -> None:
        self.client = client
        self.e2ee = e2ee  # declares the track end-to-end encrypted (its clip already is)
        self.clip = clip
        self.track_no = track_no
        self.room = room
        self.errors = errors
        # Off for servers that decode: the trailer would corrupt the bitstream they decode.
        self.trailer = trailer
        self.track_sid = ""
        self.packets_sent = 0
        self.packets_dropped = 0  # simulated loss
        self.keyframe_requests = 0
        self.nacked = 0  # sequence numbers the server NACKed
        self.resent = 0  # of those, packets resent from the cache (`SentCache`)
        self._sent: SentCache | None = None  # None: NACKs go unanswered
        self._sink: internals.RtpSink | None = None
        self._ssrc = 0
        self._pt = 0
        self._keyframe_wanted = False

    async def start(self) -> None:
        client = self.client
        track = ParkedTrack(self.clip.kind)
        source = "camera" if self.clip.kind == "video" else "microphone"
        name = track_name(self.track_no)
        if self.e2ee is not None:
            assert isinstance(client, KeyroomClient)
            info = await client.publish(track, source=source, name=name, e2ee=self.e2ee)
        else:
            info = await client.publish(track, source=source, name=name)
        self.track_sid = info["sid"]
        await wait_connected(client, "publisher", CONNECT_TIMEOUT)
        assert client.publisher_pc is not None
        transceiver = _transceiver_with(client.publisher_pc.getTransceivers(), track)
        codec = next(
            c
            for c in internals.negotiated_codecs(transceiver)
            if not c.mimeType.lower().endswith("/rtx")
        )
        if codec.mimeType.lower() != self.clip.mime_type.lower():
            raise RuntimeError(f"server chose {codec.mimeType}, the clip is {self.clip.mime_type}")
        assert codec.payloadType is not None
        self._pt = codec.payloadType
        self._ssrc = internals.sender_ssrc(transceiver)
        dtls = internals.bundle_transport(client.publisher_pc)
        assert dtls is not None
        self._sink = internals.RtpSink(dtls)
        internals.hook_transport(dtls, _ignore_rtp, self._on_rtcp)

    async def _on_rtcp(self, data: bytes) -> None:
        try:
            messages = parse_rtcp(data)
        except MalformedPacket:
            self.errors["publisher:malformed_rtcp"] += 1
            return
        for message in messages:
            if isinstance(message, Pli | Fir):
                self.keyframe_requests += 1
                self._keyframe_wanted = True
            elif isinstance(message, Nack) and message.media_ssrc == self._ssrc:
                self._answer(message.lost)

    def _answer(self, lost: tuple[int, ...]) -> None:
        """Resend what a NACK asks for and the cache still holds, as a browser does."""
        self.nacked += len(lost)
        sent, sink = self._sent, self._sink
        if sent is None or sink is None:
            return
        now = time.monotonic_ns()
        for seq in lost:
            packet = sent.to_resend(seq, now)
            if packet is not None and sink.send(resent(packet, self.trailer)):
                self.resent += 1

    async def run(
        self,
        until: float,
        loss: float,
        pace_ms: float = 0.0,
        keyframes_on_request: bool = False,
        answer_nacks: bool = True,
    ) -> None:
        """Send the clip in a loop until loop time `until`; restart at its keyframe on PLI.
        `pace_ms` > 0: start on a random phase of the frame interval and spread each frame's
        packets over that many ms, in steps of the loop's 1 ms timer resolution.
        `keyframes_on_request`: the clip's keyframe only at the start and on PLI/FIR, as a
        browser's encoder (`next_frame`). `answer_nacks`: resend NACKed packets from a cache of
        the last ones sent (loadtest/sentcache.py), as a browser does (a packet lost on purpose,
        `loss`, is never cached: that stays simulated loss)."""
        sink = self._sink
        assert sink is not None
        clip = self.clip
        loop = asyncio.get_running_loop()
        frames = clip.frames
        seq = random.randrange(1 << 16)
        ts = random.randrange(1 << 32)
        position = 0
        due = loop.time()
        if pace_ms > 0:
            due += random.uniform(0, clip.frame_interval)
            await asyncio.sleep(due - loop.time())
        pack_header = _RTP_HEADER.pack
        pack_trailer = TRAILER.pack
        trailer = self.trailer
        sent = self._sent = SentCache() if answer_nacks else None
        while due < until:
            if self._keyframe_wanted and clip.kind == "video":
                self._keyframe_wanted = False
                position = 0
            frame = frames[position]
            last = len(frame.payloads) - 1
            per_step = math.ceil(len(frame.payloads) / pace_ms) if pace_ms > 0 else 0
            for n, payload in enumerate(frame.payloads):
                if per_step and n and n % per_step == 0:
                    await asyncio.sleep(0.001)
                flags = FLAG_KEYFRAME if frame.keyframe and n == 0 else 0
                index = self.packets_sent + self.packets_dropped
                if loss and random.random() < loss:
                    self.packets_dropped += 1
                else:
                    packet = (
                        pack_header(
                            0x80, self._pt | (0x80 if n == last else 0), seq, ts, self._ssrc
                        )
                        + payload
                        + (
                            pack_trailer(self.track_no, flags, index, time.monotonic_ns())
                            if trailer
                            else b""
                        )
                    )
                    if sink.send(packet):
                        self.packets_sent += 1
                        if sent is not None:
                            sent.put(seq, packet)
                    else:
                        self.errors["publisher:send_failed"] += 1
                        self.packets_dropped += 1
                seq = (seq + 1) & 0xFFFF
            ts = (ts + clip.ticks_per_frame) & 0xFFFFFFFF
            position = next_frame(position, len(frames), keyframes_on_request)
            due += clip.frame_interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)


@dataclass
class StreamStats:
    """What one subscriber received of one published track."""

    first_ns: int
    first_keyframe_ns: int | None = None
    packets: int = 0
    bytes: int = 0  # RTP packets' plaintext size
    resent: int = 0  # of `packets`, repairs (the publisher answered a NACK; no latency sample)
    min_index: int = 1 << 32
    max_index: int = -1

    @property
    def expected(self) -> int:
        return max(0, self.max_index - self.min_index + 1)

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.packets)


class Subscriber:
    """Subscribes to everything (auto_subscribe) and counts packets per track, never decoding."""

    def __init__(
        self,
        client: LoadClient,
        latencies: Latencies,
        errors: Counter[str],
        room: str = "",
        room_latencies: Latencies | None = None,
    ) -> None:
        self.client = client
        self.latencies = latencies
        self.errors = errors
        self.room = room
        # The room's own samples, kept beside the run's when a run has several rooms.
        self.room_latencies = room_latencies
        self.streams: dict[int, StreamStats] = {}
        self.drops: Counter[str] = Counter()
        self.join_started_ns = 0
        self.ended = False
        # Its RTP dropped by the kernel (loadtest/deaf.py): the report leaves it out.
        self.deaf = False
        self._fast: internals.FastPath | None = None
        client.on("track", self._on_track)

    def _on_track(self, remote: RemoteTrack) -> None:
        # Called inside setRemoteDescription, before aiortc schedules the receiver's start:
        # an instance-level no-op keeps this receiver from starting a decoder thread.
        pc = self.client.subscriber_pc
        if pc is None:
            return
        for transceiver in pc.getTransceivers():
            if transceiver.mid == remote.mid:
                transceiver.receiver.receive = _receive_nothing  # type: ignore[method-assign]
        # Hooked now, before DTLS connects: the server's first packet is the keyframe it asked
        # for on subscription, and it must not reach aiortc's (unstarted) receiver instead.
        dtls = internals.bundle_transport(pc)
        if self._fast is None and dtls is not None:
            self._fast = internals.hook_transport_fast(dtls, self._on_rtp, _ignore_rtcp, self.drops)

    async def start(self) -> None:
        await wait_connected(self.client, "subscriber", CONNECT_TIMEOUT)
        if self._fast is None:
            raise ConnectionError("subscriber connected without a media section")
        # Its sockets exist now: from here on packets skip aiortc's queue.
        self._fast.install()

    def _on_rtp(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if len(data) < 12 + TRAILER.size:
            self.errors["subscriber:short_packet"] += 1
            return
        track_no, flags, index, sent_ns = TRAILER.unpack_from(data, len(data) - TRAILER.size)
        stream = self.streams.get(track_no)
        if stream is None:
            stream = self.streams[track_no] = StreamStats(first_ns=now)
        stream.packets += 1
        stream.bytes += len(data)
        if index < stream.min_index:
            stream.min_index = index
        if index > stream.max_index:
            stream.max_index = index
        if flags & FLAG_KEYFRAME and stream.first_keyframe_ns is None:
            stream.first_keyframe_ns = now
        if flags & FLAG_RESENT:  # a repair: its latency is the NACK's round trip, not forwarding
            stream.resent += 1
            return
        self.latencies.add(now, now - sent_ns)
        if self.room_latencies is not None:
            self.room_latencies.add(now, now - sent_ns)


class PlainSubscriber(Subscriber):
    """A subscriber for servers that re-encode (the MediaRelay baseline): packets carry no
    trailer, so streams are told apart by SSRC (announced per track in the server's offer),
    loss is counted from RTP sequence numbers and keyframes are read from the payload
    descriptor. No latency: a re-encoded packet has no send time to compare with."""

    def __init__(
        self,
        client: LoadClient,
        latencies: Latencies,
        errors: Counter[str],
        room: str = "",
        room_latencies: Latencies | None = None,
    ) -> None:
        super().__init__(client, latencies, errors, room, room_latencies)
        self.ssrc_tracks: dict[int, int] = {}
        self.mime_types: dict[int, str] = {}
        self._last_index: dict[int, int] = {}

    def _on_track(self, remote: RemoteTrack) -> None:
        info = remote.info or {}
        for ssrc in info.get("ssrcs", ()):
            self.ssrc_tracks[ssrc] = track_number(remote.track_sid)
            self.mime_types[ssrc] = info.get("mime_type", "")
        super()._on_track(remote)

    def _on_rtp(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if len(data) < 13:
            self.errors["subscriber:short_packet"] += 1
            return
        _, _, seq, _, ssrc = _RTP_HEADER.unpack_from(data)
        track_no = self.ssrc_tracks.get(ssrc)
        if track_no is None:
            self.errors["subscriber:unknown_ssrc"] += 1
            return
        stream = self.streams.get(track_no)
        last = self._last_index.get(track_no)
        if stream is None or last is None:
            stream = self.streams[track_no] = StreamStats(first_ns=now)
            index = seq
        else:
            # Extend the 16-bit sequence number around the last one seen (wrap and reorder).
            index = last + ((seq - last + 0x8000) & 0xFFFF) - 0x8000
        self._last_index[track_no] = max(index, last if last is not None else index)
        stream.packets += 1
        stream.bytes += len(data)
        stream.min_index = min(stream.min_index, index)
        stream.max_index = max(stream.max_index, index)
        if stream.first_keyframe_ns is None and starts_keyframe(self.mime_types[ssrc], data):
            stream.first_keyframe_ns = now


def starts_keyframe(mime_type: str, packet: bytes) -> bool:
    """Whether an RTP packet (plaintext) carries the start of a VP8 keyframe or an H264 IDR
    (or the SPS that precedes one)."""
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:  # header extension: 4-byte header, then length in 32-bit words
        if len(packet) < offset + 4:
            return False
        offset += 4 + 4 * int.from_bytes(packet[offset + 2 : offset + 4], "big")
    payload = packet[offset:]
    if not payload:
        return False
    mime = mime_type.lower()
    if mime == "video/vp8":
        descriptor = payload[0]
        i = 1
        if descriptor & 0x80 and len(payload) > 1:  # X: extension bits follow
            extension = payload[1]
            i = 2
            if extension & 0x80 and len(payload) > i:  # I: picture id, 7 or 15 bits
                i += 2 if payload[i] & 0x80 else 1
            i += (1 if extension & 0x40 else 0) + (1 if extension & 0x30 else 0)
        start_of_partition_0 = descriptor & 0x10 and descriptor & 0x07 == 0
        return bool(start_of_partition_0 and len(payload) > i and not payload[i] & 0x01)
    if mime == "video/h264":
        nal = payload[0] & 0x1F
        if nal == 24 and len(payload) > 3:  # STAP-A: the first aggregated NAL unit
            nal = payload[3] & 0x1F
        elif nal == 28 and len(payload) > 1 and payload[1] & 0x80:  # FU-A start
            nal = payload[1] & 0x1F
        return nal in (5, 7)
    return False


def _transceiver_with(transceivers: list[RTCRtpTransceiver], track: Any) -> RTCRtpTransceiver:
    return next(t for t in transceivers if t.sender.track is track)


async def _receive_nothing(parameters: object) -> None:
    return None


async def _ignore_rtp(data: bytes, arrival_time_ms: int = 0) -> None:
    return None


async def _ignore_rtcp(data: bytes) -> None:
    return None
