"""The client's aiortc peer connections: configuration, candidates, and aiortc 1.16 workarounds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import candidate_from_sdp

from signaling.client.errors import Frame

log = logging.getLogger("signaling.client")


def peer_connection(ice_servers: list[dict[str, Any]], relay_only: bool) -> RTCPeerConnection:
    """A max-bundle PC using exactly `ice_servers` (dicts shaped like `joined.ice_servers`)."""
    policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
    # iceServers is never None: aiortc would add a public STUN server.
    servers = [
        RTCIceServer(
            urls=server["urls"],
            username=server.get("username"),
            credential=server.get("credential"),
        )
        for server in ice_servers
    ]
    return RTCPeerConnection(
        RTCConfiguration(
            iceServers=servers, iceTransportPolicy=policy, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE
        )
    )


async def add_candidate(pc: RTCPeerConnection, candidate: Frame) -> None:
    """Apply a trickled candidate object (PROTOCOL 2.4); a bad one is logged and ignored."""
    text = str(candidate.get("candidate") or "").removeprefix("candidate:")
    if not text:
        return  # end-of-candidates: aiortc needs no signal for it
    try:
        ice = candidate_from_sdp(text)
        ice.sdpMid = candidate.get("sdpMid")
        ice.sdpMLineIndex = candidate.get("sdpMLineIndex")
        await pc.addIceCandidate(ice)
    except Exception as exc:  # a bad candidate must not break the session
        log.warning("ignored bad trickle candidate %r: %s", candidate, exc)


def restart_transceivers(pc: RTCPeerConnection) -> asyncio.Future[None]:
    """Start the senders/receivers of `pc` that aiortc 1.16 left unstarted; call once connected.

    aiortc starts a transceiver's sender/receiver in its private `__connect`, and only when the
    DTLS transport is already "connected" at that moment. A transceiver negotiated while DTLS is
    still connecting is skipped and never started. `__connect` is idempotent (ICE/DTLS start
    only once, `send`/`receive` only once per transceiver), so running it again once the
    connection is up starts exactly the ones that were skipped.
    """
    return asyncio.ensure_future(rerun_connect(pc))


def rerun_connect(pc: RTCPeerConnection) -> Coroutine[Any, Any, None]:
    """The work of `restart_transceivers`, as a coroutine for a task set to run."""
    # Outside a class body the name is not mangled again: this is aiortc's private method.
    connect: Callable[[], Coroutine[Any, Any, None]]
    connect = pc._RTCPeerConnection__connect  # type: ignore[attr-defined]
    return connect()


def resend(transceiver: RTCRtpTransceiver, track: MediaStreamTrack) -> None:
    """Send `track` on a section whose sender was stopped (its track unpublished).

    A stopped aiortc sender never sends again, and `replaceTrack` on a live one would keep an
    encoder that refuses the new track's frames (their timestamps start over). The section gets
    a fresh sender, as a new section would: new SSRCs (its sequence numbers start anew, which
    SRTP refuses on an SSRC already used), the old stream id. aiortc starts it once the next
    answer is applied.
    """
    old = transceiver.sender
    sender = RTCRtpSender(track, old.transport)
    sender._stream_id = old._stream_id
    transceiver._RTCRtpTransceiver__sender = sender  # type: ignore[attr-defined]


def transceiver_of(pc: RTCPeerConnection, track: MediaStreamTrack) -> RTCRtpTransceiver | None:
    return next((t for t in pc.getTransceivers() if t.receiver.track is track), None)


def reroute(transceiver: RTCRtpTransceiver, ssrcs: Iterable[int]) -> None:
    """Route `ssrcs`, in the section's current codecs, to the transceiver's receiver.

    aiortc routes by the SSRCs and payload types it learned when the receiver started, and
    depayloads only the codecs of that moment; a new stream on an old (recycled) section may
    have new SSRCs and another codec. Call after the description is applied (it sets the
    transceiver's codecs).
    """
    receiver = transceiver.receiver
    codecs = list(transceiver._codecs)
    known: dict[int, RTCRtpCodecParameters] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
    known.update((codec.payloadType, codec) for codec in codecs if codec.payloadType is not None)
    router = receiver.transport._rtp_router
    router.register_receiver(
        receiver, list(ssrcs), [c.payloadType for c in codecs if c.payloadType is not None]
    )
