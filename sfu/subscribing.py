"""The subscriber peer connection: keyroom offers, the client answers.

One sendonly section per subscribed track, offered with the publisher's own codec (never
transcoded), plus the `_reliable`/`_lossy` data channels. Subscription changes made while an
offer awaits its answer are gathered into the next offer. Once the answer is in, each new
down-track is bound to its negotiated section (payload type, SSRC, extension ids).

A section whose track went away is offered `inactive`; once an answer has accepted that, the
section is free and the next track of its kind takes it over (new msid, codec and down-track,
same mid and sender SSRC), as browsers and LiveKit recycle m-lines. So a subscriber's SDP grows
with the tracks it receives at once, never with the meeting's history of publishes; and as
sections retire only through answers, at most MAX_SECTIONS exist (further tracks wait).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from sfu import clock, internals
from sfu.advertise import advertise
from sfu.datarelay import DataRelay
from sfu.fanout import pool as fanout_pool
from sfu.feedback import Feedback
from sfu.forwarder import DownTrack, PublishedTrack
from sfu.negotiation import NegotiationError
from sfu.redsdp import SubscriberRed
from sfu.rtx import RtxStream
from sfu.sdpinfo import MAX_SECTIONS
from sfu.sendbudget import BudgetedSink
from sfu.stats import DropReason, Stats
from sfu.tasks import TaskSet
from sfu.twcc import URI as TRANSPORT_CC
from sfu.twcc import TransportSequence
from sfu.twccsdp import (
    TransportCcState,
    accepted_transport_cc,
    has_media,
    offer_transport_cc,
)

log = logging.getLogger("keyroom.participant")

ANSWER_TIMEOUT = 15.0

Notify = Callable[[dict[str, Any]], None]


class Subscribing:
    def __init__(
        self,
        pc: RTCPeerConnection,
        *,
        sid: str,
        subscriptions: dict[str, DownTrack],
        notify: Notify,
        relay: DataRelay,
        feedback: Feedback,
        rearm: Callable[[], None],
        tasks: TaskSet,
        stats: Stats,
        public_addresses: Mapping[str, str],
    ) -> None:
        self.pc = pc
        self.sid = sid
        self.subscriptions = subscriptions  # the participant's own: track sid -> down-track
        self._notify = notify
        self._relay = relay
        self._feedback = feedback
        self._rearm = rearm  # the owner's timer, after the feedback's deadlines moved
        self._tasks = tasks
        self.stats = stats
        self._public_addresses = public_addresses
        self.closed = False
        self._pending: list[DownTrack] = []  # new down-tracks awaiting the next offer
        self._transceivers: dict[DownTrack, RTCRtpTransceiver] = {}  # their sections
        # A section's life after its down-track: still sending in the local description, to be
        # offered inactive next; offered inactive, answer pending; inactive in an applied
        # answer, free to carry the next track of its kind. Only a free section is reused: one
        # made inactive in the offer in flight may still carry the old track's media.
        self._stopping: list[RTCRtpTransceiver] = []
        self._retiring: list[RTCRtpTransceiver] = []
        self._free: list[RTCRtpTransceiver] = []
        # Next sequence number of a recycled section, continuing its previous tracks' (the
        # sender SSRC stays: a jump back would be refused by SRTP and look like loss).
        self._next_seq: dict[RTCRtpTransceiver, int] = {}
        self._at_cap = False
        self._negotiation: asyncio.Task[None] | None = None
        self.gathering: asyncio.Future[None] | None = None  # the offer's ICE gathering
        self._renegotiate = False
        self._restart_ice = False  # the next offer carries new ICE credentials (restart_ice)
        self._answer: asyncio.Future[str] | None = None
        # Sends the down-tracks' RTP and the translated Sender Reports once connected.
        self.sink: internals.RtpSink | None = None
        self._video_sink: BudgetedSink | None = None  # the sink, within the video budget
        # a=msid stream id: the publisher's sid, or `PA_..|TR_..` for LiveKit SDKs.
        self.stream_id: Callable[[PublishedTrack], str] = lambda track: track.publisher_sid
        self.transport_cc = TransportCcState()
        self.red = SubscriberRed()  # RED for audio (sfu/redsdp.py)

    def subscribe(self, track: PublishedTrack) -> bool:
        if track.sid in self.subscriptions or self.closed:
            return False
        down = DownTrack(track, self.sid)
        self.subscriptions[track.sid] = down
        self._pending.append(down)
        self.start()
        return True

    def unsubscribe(self, track_sid: str) -> DownTrack | None:
        down = self.subscriptions.pop(track_sid, None)
        if down is None:
            return None
        if down in down.track.down_tracks:
            down.track.down_tracks.remove(down)
        if down.track.red is not None:
            down.track.red.detach(down)
        if (workers := fanout_pool.current()) is not None:
            workers.release(down)
        self._feedback.unwatch(down)
        if down in self._pending:
            self._pending.remove(down)
        transceiver = self._transceivers.pop(down, None)
        if transceiver is not None:
            self._stopping.append(transceiver)
            rewriter = down.rewriter
            if rewriter is not None:
                # Where the next track on this SSRC goes on: SRTP refuses to send an index
                # far behind the last one sent on it.
                self._next_seq[transceiver] = (rewriter.last_out_seq + rewriter.started) & 0xFFFF
        self.start()
        return down

    def start(self) -> None:
        """Send a new offer now, or after the answer to the one in flight."""
        if self.closed:
            return
        if self._negotiation is not None and not self._negotiation.done():
            self._renegotiate = True
            return
        self._negotiation = self._tasks.spawn(self._negotiate())

    async def _negotiate(self) -> None:
        pc = self.pc
        while not self.closed:
            self._renegotiate = False
            # Media sections first: an aiortc offerer whose data channel precedes its first
            # transceiver never connects under max-bundle.
            self._apply_changes()
            if not self._relay.opened:
                self._relay.use_channels(
                    {
                        "_reliable": pc.createDataChannel("_reliable", ordered=True),
                        "_lossy": pc.createDataChannel("_lossy", ordered=False, maxRetransmits=0),
                    }
                )
            if self._restart_ice:
                self._restart_ice = False
                internals.renew_local_credentials(pc)
            offer = await pc.createOffer()
            # Shielded and kept: cancelled mid-gathering, aioice leaks the UDP socket it is
            # binding; `Participant.close` waits for it before closing the connection.
            self.gathering = asyncio.ensure_future(pc.setLocalDescription(offer))
            await asyncio.shield(self.gathering)
            self._hook()
            self._answer = asyncio.get_running_loop().create_future()
            self._notify({"type": "offer", "target": "subscriber", "sdp": self._offer_sdp()})
            try:
                answer_sdp = await asyncio.wait_for(self._answer, ANSWER_TIMEOUT)
            except TimeoutError:
                log.info("participant %s: no subscriber answer in time", self.sid)
                return
            finally:
                self._answer = None
            self._decide_transport_cc(answer_sdp)
            self.red.answered(answer_sdp)
            internals.adopt_remote_credentials(pc, answer_sdp)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
            except Exception as exc:  # aiortc refuses a client's bad answer in assorted ways
                # The offer is still unanswered: offer again, or every later change would stall.
                log.info("participant %s: subscriber answer refused: %s", self.sid, exc)
                continue
            self._configure_down_tracks()
            self._sections_freed()
            if not self._renegotiate:
                return

    def _offer_sdp(self) -> str:
        sdp = advertise(self.pc.localDescription.sdp, self._public_addresses)
        sdp = self.red.offer(sdp)
        if self.transport_cc.decided and self.transport_cc.accepted is None:
            return sdp
        if not self.transport_cc.decided and not self.transport_cc.allowed():
            return sdp
        state = self.transport_cc
        reserved = internals.offered_extension_ids()
        sdp, state.offered = offer_transport_cc(sdp, reserved, state.accepted)
        return sdp

    def _decide_transport_cc(self, answer: str) -> None:
        """The first answer with media settles transport-cc for this connection; the sink stamps
        from now (no down-track was configured before: none had a section)."""
        if self.transport_cc.decided or not has_media(answer):
            return
        self.transport_cc.decided = True
        offered = self.transport_cc.offered
        if offered is None or not accepted_transport_cc(answer, offered) or self.sink is None:
            return
        self.transport_cc.accepted = offered
        log.info("participant %s: transport-cc negotiated (extension id %d)", self.sid, offered)
        sequence = TransportSequence(offered)
        self.sink.transport_sequence = sequence
        self._feedback.transport_sequence = sequence
        self._feedback.congestion.paced = True

    def _apply_changes(self) -> None:
        for stopping in self._stopping:
            stopping.direction = "inactive"
        self._retiring += self._stopping
        self._stopping.clear()
        waiting: list[DownTrack] = []
        for down in self._pending:
            track = down.track
            transceiver = self._section_for(track.kind)
            if transceiver is None:
                waiting.append(down)
                continue
            transceiver.setCodecPreferences(capabilities_for(track))
            internals.set_sender_msid(transceiver, self.stream_id(track), track.sid)
            self._transceivers[down] = transceiver
        self._pending = waiting

    def _section_for(self, kind: str) -> RTCRtpTransceiver | None:
        """A free section of this kind, sending again, else a new one; None at the cap."""
        free = next((t for t in self._free if t.kind == kind), None)
        if free is not None:
            self._free.remove(free)
            free.direction = "sendonly"
            self.stats.sections_reused += 1
            return free
        if len(self.pc.getTransceivers()) >= MAX_SECTIONS:
            # Sections retire only through answers: a client that does not answer while others
            # churn would otherwise grow them without end. The track waits for a free section.
            if not self._at_cap:
                log.info(
                    "participant %s: %d subscriber sections, tracks wait", self.sid, MAX_SECTIONS
                )
            self._at_cap = True
            return None
        return self.pc.addTransceiver(kind, direction="sendonly")

    def _sections_freed(self) -> None:
        """The answer is in: sections it made inactive are free, for a waiting track too."""
        self._free += self._retiring
        self._retiring.clear()
        kinds = {t.kind for t in self._free}
        if any(down.track.kind in kinds for down in self._pending):
            self._renegotiate = True

    def _configure_down_tracks(self) -> None:
        sink, video_sink = self.sink, self._video_sink
        if sink is None or video_sink is None:
            return
        for down, transceiver in self._transceivers.items():
            if down.rewriter is not None or transceiver.mid is None:
                continue
            track = down.track
            codecs = internals.negotiated_codecs(transceiver)
            media = next((c for c in codecs if not c.mimeType.lower().endswith("/rtx")), None)
            if media is None or media.payloadType is None or track.codec is None:
                continue
            payload_types = {track.codec.payload_type: media.payloadType}
            red = self._red_down(track, transceiver.mid, media.payloadType)
            if red is not None:
                payload_types[red[0]] = red[1]
            down.configure(
                sink=video_sink if track.kind == "video" else sink,
                out_ssrc=internals.sender_ssrc(transceiver),
                mid=transceiver.mid,
                payload_types=payload_types,
                extensions=self._extensions(transceiver),
                seq_start=self._next_seq.pop(transceiver, None),
            )
            down.rtx = rtx_stream(transceiver, codecs, media.payloadType)
            self._feedback.watch(down)
            if red is not None and track.red is not None:
                track.red.attach(down, media.payloadType)  # RED as it came (sfu/redtrack.py)
            else:
                track.down_tracks.append(down)
            if (workers := fanout_pool.current()) is not None:
                workers.adopt(down, sink)  # its copies go out from a worker (sfu/fanout/)
            track.request_keyframe()

    def _red_down(self, track: PublishedTrack, mid: str, opus_pt: int) -> tuple[int, int] | None:
        """(publisher's RED payload type, this subscriber's) when both sides negotiated RED for
        the track's section, over the section's Opus; None: the track goes out as plain Opus."""
        codec = track.codec
        if track.red is None or codec is None or codec.red_payload_type is None:
            return None
        if self.red.payload_type is None or self.red.accepted.get(mid) != opus_pt:
            return None
        return codec.red_payload_type, self.red.payload_type

    def _extensions(self, transceiver: RTCRtpTransceiver) -> dict[str, int]:
        """The section's negotiated extensions by URI, transport-cc included when accepted."""
        extensions = {e.uri: e.id for e in internals.negotiated_extensions(transceiver)}
        if self.transport_cc.accepted is not None:
            extensions[TRANSPORT_CC] = self.transport_cc.accepted
        return extensions

    def restart_ice(self) -> None:
        """The client asks for an ICE restart (a new network): offer new ICE credentials."""
        self._restart_ice = True
        self.start()

    def resync(self) -> None:
        """After a socket change: repeat the offer still awaiting an answer, or make a new one
        if the last offer timed out unanswered."""
        if self._answer is not None and not self._answer.done():
            self._notify({"type": "offer", "target": "subscriber", "sdp": self._offer_sdp()})
        elif self.pc.signalingState == "have-local-offer":
            self.start()

    def handle_answer(self, sdp: str) -> None:
        if self._answer is None or self._answer.done():
            raise NegotiationError("no subscriber offer is waiting for an answer")
        if not isinstance(sdp, str) or not sdp.strip():
            raise NegotiationError("empty SDP")
        self._answer.set_result(sdp)

    def _hook(self) -> None:
        if self.sink is not None:
            return
        dtls = internals.bundle_transport(self.pc)
        if dtls is None:
            return
        self.sink = internals.RtpSink(dtls)
        self._video_sink = BudgetedSink(self.sink, self._feedback.congestion.budget)
        internals.hook_transport(dtls, self._on_rtp, self._on_rtcp)
        self._feedback.start_sender_reports(clock.now())
        self._rearm()

    async def _on_rtp(self, data: bytes, arrival_time_ms: int = 0) -> None:
        # The subscriber PC is receive-only for the client: nothing it sends is forwarded.
        self.stats.drop(DropReason.NOT_GRANTED)

    async def _on_rtcp(self, data: bytes) -> None:
        self._feedback.on_subscriber_rtcp(data, clock.now())

    def stop(self) -> None:
        """Forward nothing more to this subscriber and offer nothing more."""
        self.closed = True
        for track_sid in list(self.subscriptions):
            self.unsubscribe(track_sid)
        if (workers := fanout_pool.current()) is not None:
            workers.forget(self.sid)
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()


def capabilities_for(track: PublishedTrack) -> list[RTCRtpCodecCapability]:
    """The one codec the publisher sends: subscribers get it as is, never transcoded."""
    codec = track.codec
    assert codec is not None
    wanted = codec.mime_type.lower()
    # The publisher's negotiated codec carries aiortc's own parameters (H264 profile and
    # packetization mode), so an exact match picks the same capability.
    capabilities = RTCRtpSender.getCapabilities(track.kind).codecs
    chosen = [
        c
        for c in capabilities
        if c.mimeType.lower() == wanted
        and (wanted != "video/h264" or c.parameters == codec.parameters)
    ][:1]
    # Video also offers RTX: NACKed packets are resent on their own SSRC (aiortc adds the apt).
    return chosen + [c for c in capabilities if c.mimeType.lower() == "video/rtx"][: len(chosen)]


def rtx_stream(
    transceiver: RTCRtpTransceiver, codecs: list[RTCRtpCodecParameters], media_pt: int
) -> RtxStream | None:
    """The section's RTX stream if the subscriber accepted RTX for its media payload type."""
    rtx = next(
        (
            c
            for c in codecs
            if c.mimeType.lower().endswith("/rtx") and c.parameters.get("apt") == media_pt
        ),
        None,
    )
    if rtx is None or rtx.payloadType is None:
        return None
    return RtxStream(
        internals.sender_rtx_ssrc(transceiver), rtx.payloadType, random.getrandbits(16)
    )
