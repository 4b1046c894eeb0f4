"""Peer connections as the server makes them, and the transceiver state it reads and sets."""

from __future__ import annotations

import aiortc
import aiortc.codecs
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpTransceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters


def new_peer_connection() -> RTCPeerConnection:
    # iceServers=[]: otherwise aiortc adds a public STUN server and advertises a reflexive address.
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=aiortc.RTCBundlePolicy.MAX_BUNDLE)
    )


def bundle_transport(pc: RTCPeerConnection) -> RTCDtlsTransport | None:
    """The single DTLS transport every m-line of a max-bundle connection shares."""
    transceivers = pc.getTransceivers()
    if transceivers:
        return transceivers[0].receiver.transport
    if pc.sctp is not None:
        return pc.sctp.transport
    return None


def set_sender_msid(transceiver: RTCRtpTransceiver, stream_id: str, track_id: str) -> None:
    """What the offer says in `a=msid:<stream> <track>` for this sender (PROTOCOL 2.4)."""
    transceiver.sender._stream_id = stream_id
    transceiver.sender._track_id = track_id


def sender_ssrc(transceiver: RTCRtpTransceiver) -> int:
    return int(transceiver.sender._ssrc)


def sender_rtx_ssrc(transceiver: RTCRtpTransceiver) -> int:
    """The RTX SSRC aiortc announced for this sender (`a=ssrc-group:FID`)."""
    return int(transceiver.sender._rtx_ssrc)


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    return list(transceiver._codecs)


def restrict_codecs(transceiver: RTCRtpTransceiver, codecs: list[RTCRtpCodecParameters]) -> None:
    """Answer with exactly these codecs, so the publisher's codec is known before it sends."""
    transceiver._codecs = codecs


def offered_extension_ids() -> frozenset[int]:
    """Every header extension id aiortc's offers give an audio or a video section: a section
    added later carries them even where the offers so far had no such section."""
    return frozenset(e.id for kind in aiortc.codecs.HEADER_EXTENSIONS.values() for e in kind)


def negotiated_extensions(
    transceiver: RTCRtpTransceiver,
) -> list[RTCRtpHeaderExtensionParameters]:
    return list(transceiver._headerExtensions)
