"""The single list of every aiortc/aioice/pylibsrtp internal this package relies on, checked.

`verify_internals()` runs at server start-up and in a test, so an upgrade that moves one of them
fails loudly instead of silently forwarding nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aioice
import aioice.ice
import aioice.stun
import aioice.turn
import aiortc
import aiortc.codecs
import aiortc.codecs.vpx
import aiortc.rtcicetransport
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import aiortc.rtcsctptransport
import pylibsrtp
from aiortc import RTCDataChannel, RTCPeerConnection, RTCRtpTransceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcsctptransport import DataChunk, InboundStream, RTCSctpTransport

PINNED_AIORTC = "1.16.0"
PINNED_AIOICE = "0.13.0"

# (owner, attribute): read or replaced somewhere in this package.
ATTRIBUTES: list[tuple[object, str]] = [
    (RTCDtlsTransport, "_handle_rtp_data"),
    (RTCDtlsTransport, "_handle_rtcp_data"),
    (RTCDtlsTransport, "_recv_next"),
    (RTCDtlsTransport, "_state"),
    (aioice.ice.Connection, "_nominated"),
    # ICE restart (icerestart.py) swaps the credentials of a live connection.
    (aioice.ice.Connection, "_local_username"),
    (aioice.ice.Connection, "_local_password"),
    (aioice.ice.Connection, "_closing"),
    (aioice.ice.Connection, "query_consent"),
    (aioice.ice.StunProtocol, "send_data"),
    (aioice.ice, "get_host_addresses"),
    (aiortc.rtcrtpreceiver.RTCRtpReceiver, "receive"),
    (aiortc.rtcrtpsender.RTCRtpSender, "send"),
    (aiortc.rtcrtpreceiver, "get_decoder"),
    (aiortc.rtcrtpsender, "get_encoder"),
    # The Python client's E2EE (signaling/client/e2ee.py): frames between encoder and packetizer.
    (aiortc.rtcrtpsender.RTCRtpSender, "_next_encoded_frame"),
    (aiortc.codecs.vpx.Vp8Encoder, "_packetize"),
    (aiortc.codecs.vpx, "vp8_depayload"),
    (RTCRtpTransceiver, "_codecs"),
    (RTCRtpTransceiver, "_headerExtensions"),
    # The ids of aiortc's offers, kept clear of the transport-cc id (sfu/twccsdp.py).
    (aiortc.codecs, "HEADER_EXTENSIONS"),
    # guard_remote_candidates, guard_media_sources (sfu/iceguard.py) and FastPath.
    (RTCPeerConnection, "_RTCPeerConnection__createDtlsTransport"),
    (aioice.ice.Connection, "add_remote_candidate"),
    (aioice.ice.Connection, "request_received"),
    (aioice.ice.Connection, "gather_candidates"),
    (aioice.ice.Connection, "_protocols"),
    (aioice.ice.Connection, "_check_list"),
    (aioice.ice.CandidatePair, "protocol"),
    (aioice.ice.CandidatePair, "remote_addr"),
    (aioice.ice.CandidatePair, "state"),
    (aioice.ice.CandidatePair.State, "SUCCEEDED"),
    (aioice.ice.StunProtocol, "datagram_received"),
    # bind_media_ports replaces get_component_candidates for host-only gathering.
    (aioice.ice.Connection, "get_component_candidates"),
    (aioice.ice.Connection, "stun_server"),
    (aioice.ice.Connection, "turn_server"),
    (aioice.ice, "candidate_foundation"),
    (aioice.ice, "candidate_priority"),
    (aioice.turn, "UDP_SOCKET_BUFFER_SIZE"),
    # sharedport.py: a StunProtocol per connection on the shared socket.
    (aioice.ice.StunProtocol, "send_stun"),
    (aioice.ice.StunProtocol, "transactions"),
    (aioice.ice.StunProtocol, "receiver"),
    (aioice.ice.StunProtocol, "connection_made"),
    (aioice.ice.StunProtocol, "connection_lost"),
    (aioice.ice.Connection, "local_username"),
    # sctp.py: bounded reassembly (replaces _receive_data_chunk) and the gated association.
    (RTCSctpTransport, "_receive_data_chunk"),
    (RTCSctpTransport, "_advertised_rwnd"),
    (RTCSctpTransport, "_inbound_streams"),
    (RTCSctpTransport, "_sack_needed"),
    (RTCSctpTransport, "_mark_received"),
    (RTCSctpTransport, "_get_inbound_stream"),
    (RTCSctpTransport, "_receive"),
    (RTCSctpTransport, "_reset_deferred_streams"),
    (RTCSctpTransport, "start"),
    (InboundStream, "reassembly"),
    (InboundStream, "sequence_number"),
    (InboundStream, "add_chunk"),
    (InboundStream, "pop_messages"),
    (DataChunk, "user_data"),
    (DataChunk, "stream_seq"),
    (aiortc.rtcsctptransport, "SCTP_DATA_UNORDERED"),
    (RTCDataChannel, "transport"),
]

# (owner, function, names its code must use, message): behaviour this package relies on inside
# a function it does not replace. The guards replace the called methods per instance: they only
# see what goes through them.
REFERENCES: list[tuple[object, str, tuple[str, ...], str]] = [
    (pylibsrtp.Session, "__init__", ("_srtp", "_cdata", "_buffer"), "pylibsrtp.Session.{name}"),
    (
        RTCDtlsTransport,
        "_recv_next",
        ("_handle_rtp_data", "_handle_rtcp_data", "_rx_srtp"),
        "RTCDtlsTransport._recv_next no longer calls {name}",
    ),
    (
        aioice.ice.StunProtocol,
        "datagram_received",
        ("data_received", "request_received"),
        "StunProtocol.datagram_received no longer calls {name}",
    ),
    (
        aioice.stun.Transaction,
        "_Transaction__retry",
        ("send_stun",),
        "stun.Transaction.__retry no longer sends through {name}",
    ),
    (
        aiortc.rtcicetransport.RTCIceGatherer,
        "gather",
        ("gather_candidates",),
        "RTCIceGatherer.gather no longer calls {name}",
    ),
    (
        aiortc.rtcicetransport.RTCIceTransport,
        "addRemoteCandidate",
        ("add_remote_candidate",),
        "RTCIceTransport.addRemoteCandidate no longer calls {name}",
    ),
    (
        RTCSctpTransport,
        "_receive_data_chunk",
        (
            "_sack_needed",
            "_mark_received",
            "_get_inbound_stream",
            "add_chunk",
            "_advertised_rwnd",
            "pop_messages",
            "_receive",
            "_reset_deferred_streams",
        ),
        "RTCSctpTransport._receive_data_chunk (replaced by sfu/internals/sctp.py) no longer uses"
        " {name}",
    ),  # fmt: skip
    (
        RTCPeerConnection,
        "_RTCPeerConnection__connect",
        ("start",),
        "RTCPeerConnection.__connect no longer starts the SCTP transport with {name}",
    ),
    (
        RTCDtlsTransport,
        "_setup_srtp",
        ("_rx_srtp", "_tx_srtp"),
        "RTCDtlsTransport._setup_srtp no longer sets {name}",
    ),
]


class InternalsMoved(RuntimeError):
    """An aiortc/aioice internal keyroom relies on is missing: the pinned version changed."""


def verify_internals() -> None:
    """Fail loudly if an internal of `ATTRIBUTES` or `REFERENCES` is gone, or a version moved."""
    missing = [*_missing_attributes(), *_missing_references(), *_moved_versions()]
    if missing:
        raise InternalsMoved("aiortc/aioice internals moved: " + "; ".join(missing))


def _missing_attributes() -> list[str]:
    return [
        f"{getattr(owner, '__name__', owner)}.{name}"
        for owner, name in ATTRIBUTES
        if not _has(owner, name)
    ]


def _missing_references() -> list[str]:
    missing = []
    for owner, function, names, message in REFERENCES:
        code = _code(getattr(owner, function, None))
        used = code.co_names if code is not None else ()
        missing += [message.format(name=name) for name in names if name not in used]
    return missing


def _moved_versions() -> list[str]:
    moved = []
    if aiortc.__version__ != PINNED_AIORTC:
        moved.append(f"aiortc {aiortc.__version__} != pinned {PINNED_AIORTC}")
    if getattr(aioice, "__version__", PINNED_AIOICE) != PINNED_AIOICE:
        moved.append(f"aioice {aioice.__version__} != pinned {PINNED_AIOICE}")
    return moved


def _code(function: Callable[..., Any] | None) -> Any:
    return getattr(function, "__code__", None)


def _has(owner: object, name: str) -> bool:
    if hasattr(owner, name):
        return True
    # Instance attributes assigned in __init__ show up as names in its code object.
    code = _code(getattr(owner, "__init__", None))
    return code is not None and name in code.co_names
