"""What the publisher and subscriber negotiations share: the error a client is shown, and
trickled ICE candidates."""

from __future__ import annotations

from typing import Any

from aiortc import RTCPeerConnection
from aiortc.sdp import candidate_from_sdp


class NegotiationError(Exception):
    """A client's SDP or candidate was refused; the message is safe to show the client."""


async def add_ice_candidate(pc: RTCPeerConnection, target: str, candidate: dict[str, Any]) -> None:
    """Add a trickled candidate (`{candidate, sdpMid, sdpMLineIndex}`) to `pc`, the `target`
    (publisher or subscriber) connection."""
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
