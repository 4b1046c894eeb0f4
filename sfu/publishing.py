"""The publisher peer connection: the client offers, keyroom answers.

Each media section is matched to a track `add_track` granted (by its track id), gets the first
codec the room allows (plus its RTX), and is bound to that track in the ingress (MID, SSRCs,
header extensions). A section nothing granted is answered `inactive`: its RTP is dropped
(PROTOCOL 3). Once the transport exists its plaintext RTP goes synchronously to the ingress.

The data (application) section is answered rejected (port 0) to a participant without
`canPublishData`, and its SCTP association is not started: no data channel opens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from functools import partial

from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcsctptransport import RTCSctpTransport

from sfu import clock, internals
from sfu.advertise import advertise
from sfu.feedback import Feedback
from sfu.forwarder import CodecInfo, PublishedTrack
from sfu.ingress import Ingress
from sfu.negotiation import NegotiationError
from sfu.opusfmtp import enable_fec_and_dtx
from sfu.redsdp import answer_red, offered_red
from sfu.sdpinfo import (
    MAX_SECTIONS,
    BadSdp,
    MediaSection,
    attribute,
    describe_offer,
    join_sdp,
    read_mline,
    split_sdp,
)
from sfu.simulcast import answer_simulcast, simulcast_sections
from sfu.stats import DropReason, Stats


def choose_codec(
    codecs: list[RTCRtpCodecParameters], allowed: Iterable[str]
) -> tuple[RTCRtpCodecParameters, RTCRtpCodecParameters | None] | None:
    """The first negotiated codec the room allows, and its RTX codec if negotiated."""
    names = {name.lower() for name in allowed}
    for codec in codecs:
        name = codec.mimeType.split("/")[-1].lower()
        if name == "rtx" or name not in names or codec.payloadType is None:
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
        return codec, rtx
    return None


def reject_data_section(sdp: str) -> str:
    """`sdp` (an answer) with its application section rejected: port 0, out of the BUNDLE group
    (JSEP 5.3.1: a rejected section is no part of a bundle)."""
    session, sections = split_sdp(sdp)
    rejected = set()
    for lines in sections:
        kind, _, proto, formats = read_mline(lines[0])
        if kind == "application":
            lines[0] = f"m=application 0 {proto} {' '.join(formats)}".rstrip()
            mid = attribute(lines, "mid")
            if mid is not None:
                rejected.add(mid)
    for n, line in enumerate(session):
        if line.startswith("a=group:BUNDLE"):
            kept = [m for m in line.split()[1:] if m not in rejected]
            session[n] = " ".join(["a=group:BUNDLE", *kept])
    return join_sdp(session, sections)


class Publishing:
    def __init__(
        self,
        pc: RTCPeerConnection,
        *,
        ingress: Ingress,
        feedback: Feedback,
        stats: Stats,
        allowed_codecs: Callable[[], Iterable[str]],
        may_publish_data: Callable[[], bool],
        public_addresses: Mapping[str, str],
    ) -> None:
        self.pc = pc
        self.ingress = ingress
        self._feedback = feedback
        self.stats = stats
        # The room's current codec list, read at each offer.
        self.allowed_codecs = allowed_codecs
        # The participant's current data grant, read at each offer and association start.
        self._may_publish_data = may_publish_data
        self._sctp: RTCSctpTransport | None = None
        self._public_addresses = public_addresses
        self._lock = asyncio.Lock()
        self._transport: RTCDtlsTransport | None = None
        # Sends keyroom's feedback (RR, REMB, PLI) to the publisher once connected.
        self.sink: internals.RtpSink | None = None
        # The room's `simulcast` limit, read at each offer: off, simulcast offers are answered
        # without it (the client then sends one encoding).
        self.simulcast_allowed: Callable[[], bool] = lambda: True
        # The room's `audio_red`, read at each offer; RED offered (mid -> (RED payload type,
        # Opus payload type)) and what the answer accepts of it (sfu/redsdp.py).
        self.red_allowed: Callable[[], bool] = lambda: True
        self._red_offered: dict[str, tuple[int, int]] = {}
        self._red_accepted: dict[str, tuple[int, int]] = {}

    async def answer(
        self, sdp: str, tracks_by_cid: Mapping[str, PublishedTrack]
    ) -> tuple[str, list[PublishedTrack]]:
        """Answer the publisher's offer; returns the answer and the tracks it newly bound."""
        try:
            sections = describe_offer(sdp)
        except BadSdp as exc:
            raise NegotiationError(str(exc)) from None
        async with self._lock:
            pc = self.pc
            _check_section_total(pc, sections)
            if internals.adopt_remote_credentials(pc, sdp):
                # The client restarted ICE (a new network): the answer gets new credentials too.
                internals.renew_local_credentials(pc)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:
                raise NegotiationError(f"offer refused: {exc}") from None
            self._guard_data(pc.sctp)
            allowed = tuple(self.allowed_codecs())
            simulcast = self.simulcast_allowed()
            self._red_offered = offered_red(sdp) if self.red_allowed() else {}
            self._red_accepted = {}
            newly_bound = []
            for section in sections:
                transceiver = next((t for t in pc.getTransceivers() if t.mid == section.mid), None)
                if section.kind == "application" or transceiver is None:
                    continue
                track = tracks_by_cid.get(section.track_id or "")
                was_bound = track is not None and track.bound
                if not simulcast:
                    section = replace(section, simulcast=None)
                if self._accept(section, transceiver, track, allowed) and not was_bound:
                    assert track is not None
                    newly_bound.append(track)
            try:
                answer = await pc.createAnswer()
                await pc.setLocalDescription(answer)
            except Exception as exc:
                raise NegotiationError(f"offer refused: {exc}") from None
            self._hook()
            accepted = simulcast_sections(sections, tracks_by_cid) if simulcast else {}
            local = answer_simulcast(enable_fec_and_dtx(pc.localDescription.sdp), accepted)
            local = answer_red(local, self._red_accepted)
            if pc.sctp is not None and not self._may_publish_data():
                local = reject_data_section(local)
            return advertise(local, self._public_addresses), newly_bound

    def _guard_data(self, sctp: RTCSctpTransport | None) -> None:
        """The data channels' transport, once the offer made one: its association starts only
        with `canPublishData`, and its reassembly drops are counted."""
        if sctp is None or sctp is self._sctp:
            return
        self._sctp = sctp
        internals.gate_association(sctp, self._may_publish_data)
        # The stats only: a callback reaching `sctp` (self holds it) would keep it alive.
        internals.on_data_dropped(sctp, partial(self.stats.drop, DropReason.DATA_OVERFLOW))

    def _accept(
        self,
        section: MediaSection,
        transceiver: RTCRtpTransceiver,
        track: PublishedTrack | None,
        allowed: tuple[str, ...],
    ) -> bool:
        """Bind one media section to its granted track, or answer it `inactive`."""
        if (
            track is None
            or track.kind != section.kind
            or section.direction not in ("sendonly", "sendrecv")
            or (track.mid is not None and track.mid != section.mid)
        ):
            # PROTOCOL 3: a section no add_track granted gets nothing; its RTP is dropped.
            transceiver.direction = "inactive"
            return False
        chosen = choose_codec(internals.negotiated_codecs(transceiver), allowed)
        if chosen is None:
            transceiver.direction = "inactive"
            return False
        codec, rtx = chosen
        internals.restrict_codecs(transceiver, [codec] + ([rtx] if rtx else []))
        assert codec.payloadType is not None
        transceiver.direction = "recvonly"
        if section.simulcast is not None:
            track.set_simulcast(section.simulcast)
        red = self._red_offered.get(section.mid)
        # Not with E2EE: the sender's transform encrypts the RED payload, headers included.
        if red and red[1] == codec.payloadType and track.encryption == "none" and track.red_wanted:
            self._red_accepted[section.mid] = red
        else:
            red = None
        self.ingress.bind(
            track,
            section.mid,
            section.media_ssrc,
            section.rtx_ssrc,
            CodecInfo(
                mime_type=codec.mimeType,
                clock_rate=codec.clockRate,
                payload_type=codec.payloadType,
                parameters=dict(codec.parameters),
                rtx_payload_type=rtx.payloadType if rtx else None,
                red_payload_type=red[0] if red else None,
            ),
            {e.id: e.uri for e in internals.negotiated_extensions(transceiver)},
        )
        return True

    def _hook(self) -> None:
        dtls = internals.bundle_transport(self.pc)
        if dtls is None or dtls is self._transport:
            return
        self._transport = dtls
        self.sink = internals.RtpSink(dtls)
        # Synchronous from the datagram callback: the queue hop and coroutines aiortc puts in
        # front of every packet cost more than the forwarding itself (docs/benchmarks.md).
        internals.hook_transport_fast(dtls, self.ingress.on_rtp, self._on_rtcp, self.stats.dropped)

    async def _on_rtcp(self, data: bytes) -> None:
        self._feedback.on_publisher_rtcp(data, clock.now())


def _check_section_total(pc: RTCPeerConnection, sections: list[MediaSection]) -> None:
    """Each offer may name new mids: without a total, repeated offers pile transceivers (and
    their memory and answer time) up without end."""
    transceivers = pc.getTransceivers()
    known = {t.mid for t in transceivers}
    added = {s.mid for s in sections if s.kind != "application"} - known
    if len(transceivers) + len(added) > MAX_SECTIONS:
        raise NegotiationError(
            f"more than {MAX_SECTIONS} media sections on this connection in total"
        )
