"""A participant's media plane: its two peer connections and what flows through them.

The publisher PC (client offers) receives the participant's tracks; its plaintext RTP goes straight
to the forwarding core. The subscriber PC (server offers) carries one sendonly section per
subscribed track plus the `_reliable`/`_lossy` data channels.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from aiortc import RTCDataChannel, RTCRtpSender, RTCSessionDescription
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import candidate_from_sdp

from auth.grants import VideoGrant
from auth.policy import may_publish_data
from sfu import iceguard, internals
from sfu.advertise import advertise
from sfu.forwarder import AUDIO_LEVEL, CodecInfo, DownTrack, PublishedTrack
from sfu.metrics import forward_timer_start, forward_timer_stop
from sfu.rtcp import (
    Fir,
    MalformedPacket,
    Nack,
    Pli,
    RtcpMessage,
    SenderReport,
    build_pli,
    build_remb,
    build_rr,
    parse_rtcp,
)
from sfu.rtp import get_extension, parse_rtp
from sfu.sdpinfo import BadSdp, describe_offer
from sfu.stats import DropReason, Stats
from signaling.protocol import DATA_CHANNELS

if TYPE_CHECKING:
    from sfu.room import Room

log = logging.getLogger("keyroom.participant")

ANSWER_TIMEOUT = 15.0
PUBLISHER_REPORT_INTERVAL = 1.0
# REMB sent when the room sets no max_video_bitrate: generous, so congestion control, not
# keyroom, decides; it only has to be present for a browser to leave its start bitrate.
DEFAULT_VIDEO_BITRATE_CAP = 4_000_000
# Data messages held per channel until the subscriber's channel opens.
MAX_HELD_DATA = 256
SENDER_REPORT_INTERVAL = 1.0

Notify = Callable[[dict[str, Any]], None]


class NegotiationError(Exception):
    """A client's SDP or candidate was refused; the message is safe to show the client."""


class Participant:
    def __init__(
        self,
        *,
        sid: str,
        identity: str,
        name: str,
        metadata: str,
        grant: VideoGrant,
        room: Room,
        notify: Notify,
        stats: Stats,
        auto_subscribe: bool,
        allowed_codecs: tuple[str, ...],
        max_data_bytes: int,
        keyframe_interval: float,
        public_addresses: Mapping[str, str] | None = None,
        relay_only: bool = False,
    ) -> None:
        self.sid = sid
        self.identity = identity
        self.name = name
        self.metadata = metadata
        self.grant = grant
        self.room = room
        self.notify = notify
        self.stats = stats
        self.auto_subscribe = auto_subscribe
        self.allowed_codecs = tuple(c.lower() for c in allowed_codecs)
        self.max_data_bytes = max_data_bytes
        self.keyframe_interval = keyframe_interval
        # A role with `relay_only = true`: TURN only for this participant, whatever the room says.
        self.relay_only = relay_only
        # [rtc] public_ips: bound address -> address the SDP advertises (1:1 NAT).
        self.public_addresses = dict(public_addresses or {})
        self.joined_at = int(time.time())
        self.closed = False

        self.tracks: dict[str, PublishedTrack] = {}
        self._tracks_by_cid: dict[str, PublishedTrack] = {}
        self._tracks_by_ssrc: dict[int, PublishedTrack | None] = {}
        self._tracks_by_mid: dict[str, PublishedTrack] = {}
        self._publisher_mid_ext: int | None = None

        self.subscriptions: dict[str, DownTrack] = {}
        self._down_by_ssrc: dict[int, DownTrack] = {}
        self._pending_down: list[DownTrack] = []
        self._removed_down: list[DownTrack] = []
        self._transceivers: dict[DownTrack, Any] = {}

        self.publisher_pc = internals.new_peer_connection()
        self.subscriber_pc = internals.new_peer_connection()
        # Remote candidate hygiene, relay-only enforcement and media-source hygiene
        # (docs/security-transport.md).
        iceguard.guard_peer_connections(
            sid,
            lambda: self.relay_only or self.room.limits.relay_only,
            {"publisher": self.publisher_pc, "subscriber": self.subscriber_pc},
            self.stats.dropped,
        )
        self._publisher_transport: RTCDtlsTransport | None = None
        self._publisher_sink: internals.RtpSink | None = None
        self._subscriber_sink: internals.RtpSink | None = None
        # SSRC of the feedback (PLI) keyroom sends to this publisher.
        self._rtcp_ssrc = random.getrandbits(32)
        self._sub_channels: dict[str, RTCDataChannel] = {}
        self._held_data: dict[str, list[bytes]] = {}
        self._pub_lock = asyncio.Lock()
        self._negotiation: asyncio.Task[None] | None = None
        self._renegotiate = False
        self._answer: asyncio.Future[str] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keyframe_timers: dict[str, asyncio.TimerHandle] = {}
        self._publisher_reports_task: asyncio.Task[None] | None = None

        self.publisher_pc.on("datachannel", self._on_publisher_channel)
        self.publisher_pc.on("connectionstatechange", self._on_state_change)
        self.subscriber_pc.on("connectionstatechange", self._on_state_change)
        self.on_connection_failed: Callable[[Participant], None] | None = None

    # -- info ---------------------------------------------------------------------------------

    @property
    def hidden(self) -> bool:
        return self.grant.hidden

    def info(self, *, with_permissions: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "sid": self.sid,
            "identity": self.identity,
            "name": self.name,
            "metadata": self.metadata,
            "joined_at": self.joined_at,
            "tracks": [t.info() for t in self.tracks.values() if t.bound],
        }
        if with_permissions:
            data["permissions"] = self.grant.to_permissions()
        return data

    def connection_state(self) -> dict[str, str]:
        return {
            "publisher": self.publisher_pc.connectionState,
            "subscriber": self.subscriber_pc.connectionState,
        }

    # -- publishing -----------------------------------------------------------------------------

    def add_track(self, track: PublishedTrack) -> None:
        self.tracks[track.sid] = track
        self._tracks_by_cid[track.cid] = track

    def track_by_cid(self, cid: str) -> PublishedTrack | None:
        return self._tracks_by_cid.get(cid)

    def remove_track(self, track_sid: str) -> PublishedTrack | None:
        track = self.tracks.pop(track_sid, None)
        if track is None:
            return None
        self._tracks_by_cid.pop(track.cid, None)
        if track.mid is not None:
            self._tracks_by_mid.pop(track.mid, None)
        for ssrc in (track.ssrc, track.rtx_ssrc):
            if ssrc is not None:
                # Keep the SSRC known so later packets count as "unpublished", not "unknown".
                self._tracks_by_ssrc[ssrc] = None
        timer = self._keyframe_timers.pop(track.sid, None)
        if timer is not None:
            timer.cancel()
        return track

    async def handle_publisher_offer(self, sdp: str) -> tuple[str, list[PublishedTrack]]:
        """Answer the publisher's offer; returns the answer and the tracks it newly bound."""
        try:
            sections = describe_offer(sdp)
        except BadSdp as exc:
            raise NegotiationError(str(exc)) from None
        async with self._pub_lock:
            pc = self.publisher_pc
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:
                raise NegotiationError(f"offer refused: {exc}") from None
            newly_bound = []
            for section in sections:
                if section.kind == "application":
                    continue
                transceiver = next((t for t in pc.getTransceivers() if t.mid == section.mid), None)
                if transceiver is None:
                    continue
                track = self._tracks_by_cid.get(section.track_id or "")
                if (
                    track is None
                    or track.kind != section.kind
                    or section.direction not in ("sendonly", "sendrecv")
                    or (track.mid is not None and track.mid != section.mid)
                ):
                    # PROTOCOL 3: a section no add_track granted gets nothing; its RTP is dropped.
                    transceiver.direction = "inactive"
                    continue
                codec = self._choose_codec(transceiver)
                if codec is None:
                    transceiver.direction = "inactive"
                    continue
                transceiver.direction = "recvonly"
                if not track.bound:
                    newly_bound.append(track)
                self._bind(track, section.mid, section.media_ssrc, section.rtx_ssrc, codec)
                track.extensions = {
                    e.id: e.uri for e in internals.negotiated_extensions(transceiver)
                }
                track.audio_level_id = next(
                    (i for i, uri in track.extensions.items() if uri == AUDIO_LEVEL), None
                )
                self._publisher_mid_ext = next(
                    (i for i, uri in track.extensions.items() if uri.endswith("sdes:mid")),
                    self._publisher_mid_ext,
                )
            try:
                answer = await pc.createAnswer()
                await pc.setLocalDescription(answer)
            except Exception as exc:
                raise NegotiationError(f"offer refused: {exc}") from None
            self._hook_publisher()
            if self._publisher_reports_task is None:
                self._publisher_reports_task = self._spawn(self._publisher_reports())
            return advertise(pc.localDescription.sdp, self.public_addresses), newly_bound

    def _choose_codec(self, transceiver: Any) -> CodecInfo | None:
        codecs = internals.negotiated_codecs(transceiver)
        for codec in codecs:
            name = codec.mimeType.split("/")[-1].lower()
            if name == "rtx" or name not in self.allowed_codecs or codec.payloadType is None:
                continue
            rtx = next(
                (
                    c
                    for c in codecs
                    if c.mimeType.lower().endswith("/rtx")
                    and c.parameters.get("apt") == codec.payloadType
                ),
                None,
            )
            internals.restrict_codecs(transceiver, [codec] + ([rtx] if rtx else []))
            return CodecInfo(
                mime_type=codec.mimeType,
                clock_rate=codec.clockRate,
                payload_type=codec.payloadType,
                parameters=dict(codec.parameters),
                rtx_payload_type=rtx.payloadType if rtx else None,
            )
        return None

    def _bind(
        self,
        track: PublishedTrack,
        mid: str,
        ssrc: int | None,
        rtx_ssrc: int | None,
        codec: CodecInfo,
    ) -> None:
        track.mid = mid
        track.codec = codec
        self._tracks_by_mid[mid] = track
        if ssrc is not None and track.ssrc is None:
            track.ssrc = ssrc
            self._tracks_by_ssrc[ssrc] = track
        if rtx_ssrc is not None and track.rtx_ssrc is None:
            track.rtx_ssrc = rtx_ssrc
            # keyroom does not NACK publishers: their RTX stream only carries padding probes.
            self._tracks_by_ssrc[rtx_ssrc] = None

    def _hook_publisher(self) -> None:
        dtls = internals.bundle_transport(self.publisher_pc)
        if dtls is None or dtls is self._publisher_transport:
            return
        self._publisher_transport = dtls
        self._publisher_sink = internals.RtpSink(dtls)
        # Synchronous from the datagram callback: the queue hop and coroutines aiortc puts in
        # front of every packet cost more than the forwarding itself (docs/benchmarks.md).
        internals.hook_transport_fast(
            dtls, self._on_publisher_rtp, self._on_publisher_rtcp, self.stats.dropped
        )

    def _on_publisher_rtp(self, data: bytes) -> None:
        stats = self.stats
        try:
            info = parse_rtp(data)
        except MalformedPacket:
            stats.drop(DropReason.MALFORMED)
            return
        try:
            track = self._tracks_by_ssrc[info.ssrc]
        except KeyError:
            track = self._learn_ssrc(data, info)
            if track is None:
                stats.drop(DropReason.UNKNOWN_SSRC)
                return
        if track is None:
            stats.drop(DropReason.NOT_GRANTED)
            return
        stats.packets_in += 1
        stats.bytes_in += len(data)
        before = track.counters.packets_out
        started = forward_timer_start(stats.packets_in)
        track.forward(data, info)
        forward_timer_stop(started)
        stats.packets_out += track.counters.packets_out - before
        stats.bytes_out += (track.counters.packets_out - before) * len(data)

    def _learn_ssrc(self, data: bytes, info: Any) -> PublishedTrack | None:
        # Sections without a=ssrc (e.g. Firefox) are identified by the MID header extension.
        if self._publisher_mid_ext is None:
            return None
        mid = get_extension(data, info, self._publisher_mid_ext)
        if mid is None:
            return None
        track = self._tracks_by_mid.get(mid.decode("ascii", "replace"))
        if track is None or track.ssrc is not None or track.sid not in self.tracks:
            return None
        track.ssrc = info.ssrc
        self._tracks_by_ssrc[info.ssrc] = track
        return track

    def _rtcp_messages(self, data: bytes) -> list[RtcpMessage]:
        try:
            return parse_rtcp(data)
        except MalformedPacket:
            self.stats.drop(DropReason.MALFORMED)
            return []

    async def _on_publisher_rtcp(self, data: bytes) -> None:
        for message in self._rtcp_messages(data):
            if isinstance(message, SenderReport):
                track = self._tracks_by_ssrc.get(message.ssrc)
                if track:
                    track.on_sender_report(message.ntp, message.rtp_ts, time.monotonic())

    async def _publisher_reports(self) -> None:
        """Once a second: Receiver Reports for every track, and a REMB capping video bitrate.

        The stock receiver that would send these is disabled; without them a browser's
        congestion control gets no feedback. REMB carries one bitrate for all listed SSRCs,
        so the cap sent is the per-track limit times the number of video tracks."""
        previous: dict[str, tuple[float, int]] = {}
        while not self.closed:
            await asyncio.sleep(PUBLISHER_REPORT_INTERVAL)
            sink = self._publisher_sink
            now = time.monotonic()
            blocks, video_ssrcs = [], []
            for track in list(self.tracks.values()):
                if track.ssrc is None or not track.receive.started:
                    continue
                blocks.append(track.receive.report_block(track.ssrc, now))
                then, octets = previous.get(track.sid, (now, track.counters.bytes_in))
                if now > then:
                    track.bitrate = int((track.counters.bytes_in - octets) * 8 / (now - then))
                previous[track.sid] = (now, track.counters.bytes_in)
                if track.kind == "video":
                    video_ssrcs.append(track.ssrc)
            if sink is None or not blocks:
                continue
            sink.send(build_rr(self._rtcp_ssrc, blocks[:31]))
            if video_ssrcs:
                per_track = self.room.limits.max_video_bitrate or DEFAULT_VIDEO_BITRATE_CAP
                sink.send(build_remb(self._rtcp_ssrc, per_track * len(video_ssrcs), video_ssrcs))

    def request_keyframe(self, track: PublishedTrack) -> None:
        """Ask the publisher for a keyframe, at most once per keyframe interval per track."""
        if track.kind != "video" or track.sid not in self.tracks:
            return
        loop = asyncio.get_running_loop()
        if track.throttle.request(loop.time()):
            self._send_pli(track)
            return
        due = track.throttle.next_due()
        if due is not None and track.sid not in self._keyframe_timers:
            self._keyframe_timers[track.sid] = loop.call_at(due, self._deferred_keyframe, track)

    def _deferred_keyframe(self, track: PublishedTrack) -> None:
        self._keyframe_timers.pop(track.sid, None)
        if track.throttle.due(asyncio.get_running_loop().time()):
            self._send_pli(track)

    def _send_pli(self, track: PublishedTrack) -> None:
        if self._publisher_sink is None or track.ssrc is None:
            return
        if self._publisher_sink.send(build_pli(self._rtcp_ssrc, track.ssrc)):
            self.stats.keyframe_requests += 1

    # -- data -----------------------------------------------------------------------------------

    def _on_publisher_channel(self, channel: RTCDataChannel) -> None:
        if channel.label not in DATA_CHANNELS:
            self.stats.drop(DropReason.NOT_GRANTED)
            channel.close()
            return

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            self._on_data(channel.label, message)

    def _on_data(self, label: str, message: str | bytes) -> None:
        if not may_publish_data(self.grant).allowed:
            self.stats.drop(DropReason.NOT_GRANTED)
            return
        raw = message.encode() if isinstance(message, str) else message
        if len(raw) > self.max_data_bytes:
            self.stats.drop(DropReason.TOO_LARGE)
            return
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.stats.drop(DropReason.MALFORMED)
            return
        if not isinstance(envelope, dict):
            self.stats.drop(DropReason.MALFORMED)
            return
        topic = envelope.get("topic", "")
        payload = envelope.get("payload", "")
        to = envelope.get("to")
        if (
            not isinstance(topic, str)
            or not isinstance(payload, str)
            or not (to is None or (isinstance(to, list) and all(isinstance(i, str) for i in to)))
        ):
            self.stats.drop(DropReason.MALFORMED)
            return
        self.room.deliver_data(self, label, topic, payload, to)

    def send_data(self, label: str, message: bytes) -> bool:
        """Deliver on the subscriber PC; held (bounded) while the channel is still opening."""
        channel = self._sub_channels.get(label)
        if channel is None or channel.readyState in ("closing", "closed"):
            return False
        if channel.readyState == "open":
            channel.send(message.decode())
            return True
        held = self._held_data.setdefault(label, [])
        if len(held) >= MAX_HELD_DATA:
            self.stats.drop(DropReason.TOO_LARGE)
            return False
        held.append(message)
        return True

    def _flush_held_data(self, label: str) -> None:
        channel = self._sub_channels[label]
        for message in self._held_data.pop(label, []):
            channel.send(message.decode())

    # -- subscribing ----------------------------------------------------------------------------

    def subscribe(self, track: PublishedTrack) -> bool:
        if track.sid in self.subscriptions or self.closed:
            return False
        down = DownTrack(track, self.sid)
        self.subscriptions[track.sid] = down
        self._pending_down.append(down)
        self.start_negotiation()
        return True

    def unsubscribe(self, track_sid: str) -> DownTrack | None:
        down = self.subscriptions.pop(track_sid, None)
        if down is None:
            return None
        if down in down.track.down_tracks:
            down.track.down_tracks.remove(down)
        if down in self._pending_down:
            self._pending_down.remove(down)
        else:
            self._removed_down.append(down)
        if down.out_ssrc is not None:
            self._down_by_ssrc.pop(down.out_ssrc, None)
        if not self.closed:
            self.start_negotiation()
        return down

    def start_negotiation(self) -> None:
        """Send a new subscriber offer now, or after the answer to the one in flight."""
        if self.closed:
            return
        if self._negotiation is not None and not self._negotiation.done():
            self._renegotiate = True
            return
        self._negotiation = self._spawn(self._negotiate())

    async def _negotiate(self) -> None:
        pc = self.subscriber_pc
        while not self.closed:
            self._renegotiate = False
            if not self._sub_channels:
                # Media sections first: an aiortc offerer whose data channel precedes its first
                # transceiver never connects under max-bundle.
                self._apply_subscription_changes()
                self._sub_channels = {
                    "_reliable": pc.createDataChannel("_reliable", ordered=True),
                    "_lossy": pc.createDataChannel("_lossy", ordered=False, maxRetransmits=0),
                }
                for label, channel in self._sub_channels.items():
                    channel.on("open", partial(self._flush_held_data, label))
            else:
                self._apply_subscription_changes()
            offer = await pc.createOffer()
            await pc.setLocalDescription(offer)
            self._hook_subscriber()
            loop = asyncio.get_running_loop()
            self._answer = loop.create_future()
            sdp = advertise(pc.localDescription.sdp, self.public_addresses)
            self.notify({"type": "offer", "target": "subscriber", "sdp": sdp})
            try:
                answer_sdp = await asyncio.wait_for(self._answer, ANSWER_TIMEOUT)
            except TimeoutError:
                log.info("participant %s: no subscriber answer in time", self.sid)
                return
            finally:
                self._answer = None
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
            self._configure_down_tracks()
            if not self._renegotiate:
                return

    def _apply_subscription_changes(self) -> None:
        pc = self.subscriber_pc
        for down in self._removed_down:
            transceiver = self._transceivers.pop(down, None)
            if transceiver is not None:
                transceiver.direction = "inactive"
        self._removed_down.clear()
        for down in self._pending_down:
            track = down.track
            transceiver = pc.addTransceiver(track.kind, direction="sendonly")
            transceiver.setCodecPreferences(_capabilities_for(track))
            internals.set_sender_msid(transceiver, track.publisher_sid, track.sid)
            self._transceivers[down] = transceiver
        self._pending_down.clear()

    def _configure_down_tracks(self) -> None:
        sink = self._subscriber_sink
        if sink is None:
            return
        for down, transceiver in self._transceivers.items():
            if down.rewriter is not None or transceiver.mid is None:
                continue
            track = down.track
            codecs = internals.negotiated_codecs(transceiver)
            media = next((c for c in codecs if not c.mimeType.lower().endswith("/rtx")), None)
            if media is None or media.payloadType is None or track.codec is None:
                continue
            out_ssrc = internals.sender_ssrc(transceiver)
            down.configure(
                sink=sink,
                out_ssrc=out_ssrc,
                mid=transceiver.mid,
                payload_types={track.codec.payload_type: media.payloadType},
                extensions={e.uri: e.id for e in internals.negotiated_extensions(transceiver)},
            )
            self._down_by_ssrc[out_ssrc] = down
            track.down_tracks.append(down)
            publisher = self.room.participants.get(track.publisher_sid)
            if publisher is not None:
                publisher.request_keyframe(track)

    def resync_subscriber(self) -> None:
        """After a socket change: repeat the offer still awaiting an answer, or make a new one
        if the last offer timed out unanswered."""
        if self._answer is not None and not self._answer.done():
            self.notify(
                {
                    "type": "offer",
                    "target": "subscriber",
                    "sdp": advertise(
                        self.subscriber_pc.localDescription.sdp, self.public_addresses
                    ),
                }
            )
        elif self.subscriber_pc.signalingState == "have-local-offer":
            self.start_negotiation()

    def handle_subscriber_answer(self, sdp: str) -> None:
        if self._answer is None or self._answer.done():
            raise NegotiationError("no subscriber offer is waiting for an answer")
        if not isinstance(sdp, str) or not sdp.strip():
            raise NegotiationError("empty SDP")
        self._answer.set_result(sdp)

    def _hook_subscriber(self) -> None:
        if self._subscriber_sink is not None:
            return
        dtls = internals.bundle_transport(self.subscriber_pc)
        if dtls is None:
            return
        self._subscriber_sink = internals.RtpSink(dtls)
        internals.hook_transport(dtls, self._on_subscriber_rtp, self._on_subscriber_rtcp)
        self._spawn(self._sender_reports())

    async def _on_subscriber_rtp(self, data: bytes, arrival_time_ms: int = 0) -> None:
        # The subscriber PC is receive-only for the client: nothing it sends is forwarded.
        self.stats.drop(DropReason.NOT_GRANTED)

    async def _on_subscriber_rtcp(self, data: bytes) -> None:
        for message in self._rtcp_messages(data):
            if isinstance(message, Pli):
                self._keyframe_for(message.media_ssrc)
            elif isinstance(message, Fir):
                for ssrc, _seqnr in message.entries:
                    self._keyframe_for(ssrc)
            elif isinstance(message, Nack):
                down = self._down_by_ssrc.get(message.media_ssrc)
                if down is not None:
                    sent, refused = down.retransmit(message.lost, asyncio.get_running_loop().time())
                    self.stats.retransmissions += sent
                    self.stats.dropped[DropReason.NACK_LIMITED.value] += refused

    def _keyframe_for(self, out_ssrc: int) -> None:
        down = self._down_by_ssrc.get(out_ssrc)
        if down is None:
            return
        publisher = self.room.participants.get(down.track.publisher_sid)
        if publisher is not None:
            publisher.request_keyframe(down.track)

    async def _sender_reports(self) -> None:
        # aiortc's own SR loop is disabled (it would report zero packets at NTP 0): translate the
        # publishers' SRs so subscribers can synchronise audio and video.
        while not self.closed:
            await asyncio.sleep(SENDER_REPORT_INTERVAL)
            sink = self._subscriber_sink
            if sink is None:
                continue
            for down in list(self.subscriptions.values()):
                report = down.sender_report()
                if report is not None:
                    sink.send(report)

    # -- ICE ------------------------------------------------------------------------------------

    async def add_ice_candidate(self, target: str, candidate: dict[str, Any]) -> None:
        pc = self.publisher_pc if target == "publisher" else self.subscriber_pc
        text = candidate.get("candidate")
        if not isinstance(text, str):
            raise NegotiationError("candidate.candidate must be a string")
        if not text:
            return  # end-of-candidates
        try:
            parsed = candidate_from_sdp(text.removeprefix("candidate:"))
        except Exception:
            raise NegotiationError("unparsable ICE candidate") from None
        mid = candidate.get("sdpMid")
        index = candidate.get("sdpMLineIndex")
        parsed.sdpMid = mid if isinstance(mid, str) else None
        parsed.sdpMLineIndex = index if isinstance(index, int) else None
        if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
            parsed.sdpMLineIndex = 0
        if pc.remoteDescription is None:
            raise NegotiationError(f"no {target} description to add a candidate to")
        try:
            await pc.addIceCandidate(parsed)
        except Exception:
            raise NegotiationError("ICE candidate refused") from None

    # -- life -----------------------------------------------------------------------------------

    def _on_state_change(self) -> None:
        if self.subscriber_pc.connectionState == "connected":
            # Keyframes asked for at subscription time may have arrived before the subscriber's
            # transport could carry them.
            for down in list(self.subscriptions.values()):
                publisher = self.room.participants.get(down.track.publisher_sid)
                if down.waiting_for_keyframe and publisher is not None:
                    publisher.request_keyframe(down.track)
        states = (self.publisher_pc.connectionState, self.subscriber_pc.connectionState)
        if "failed" in states and self.on_connection_failed is not None and not self.closed:
            self.on_connection_failed(self)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("participant %s task failed: %r", self.sid, task.exception())

    def detach(self) -> None:
        """Stop forwarding to this participant at once (peer connections close later)."""
        if self.closed:
            return
        self.closed = True
        for track_sid in list(self.subscriptions):
            self.unsubscribe(track_sid)
        for timer in self._keyframe_timers.values():
            timer.cancel()
        self._keyframe_timers.clear()
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()

    async def close(self) -> None:
        """Release every resource: tasks, peer connections, their sockets. Idempotent."""
        self.detach()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            self.publisher_pc.close(), self.subscriber_pc.close(), return_exceptions=True
        )


def _capabilities_for(track: PublishedTrack) -> list[RTCRtpCodecCapability]:
    """The one codec the publisher sends: subscribers get it as is, never transcoded."""
    codec = track.codec
    assert codec is not None
    wanted = codec.mime_type.lower()
    # The publisher's negotiated codec carries aiortc's own parameters (H264 profile and
    # packetization mode), so an exact match picks the same capability.
    return [
        c
        for c in RTCRtpSender.getCapabilities(track.kind).codecs
        if c.mimeType.lower() == wanted
        and (wanted != "video/h264" or c.parameters == codec.parameters)
    ][:1]
