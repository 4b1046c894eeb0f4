"""The publisher side of a client: its tracks and data channels, offered to the server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
from aiortc import (
    MediaStreamTrack,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)

from sfu.sdpinfo import describe_sections
from sfu.simulcast import offer_simulcast
from signaling.client.connection import Connection
from signaling.client.e2ee import FrameCryptor, encrypt_sender
from signaling.client.errors import Frame, KeyroomError
from signaling.client.peers import add_candidate, resend
from signaling.client.sdp import make_rejected_sections_applicable
from signaling.protocol import DATA_CHANNELS


class Publisher:
    """Negotiates the publisher PC (the client offers), one negotiation at a time.

    Its requests go through `request` (the client's), closed-session checks to `connection`.
    """

    def __init__(
        self, connection: Connection, request: Callable[[Frame], Awaitable[Frame]]
    ) -> None:
        self.pc: RTCPeerConnection | None = None
        self._connection = connection
        self._request = request
        self._lock = asyncio.Lock()
        self._published: dict[str, RTCRtpTransceiver] = {}
        # Sections of unpublished tracks, answered inactive: the next track of their kind is
        # sent on one of them, so the offer (and the server's count of sections, PROTOCOL 3)
        # grows with the tracks published at once, not with every publish ever made.
        self._free: list[RTCRtpTransceiver] = []
        self.channels: dict[str, RTCDataChannel] = {}
        self._data_refused = False
        # RIDs of the sections offered as simulcast (aiortc offers none: written in by hand).
        self._simulcast: dict[RTCRtpTransceiver, tuple[str, ...]] = {}

    async def publish(
        self,
        track: MediaStreamTrack,
        source: str,
        name: str,
        e2ee: FrameCryptor | None = None,
        identity: str = "",
        simulcast: tuple[str, ...] = (),
    ) -> Frame:
        async with self._lock:
            reply = await self._request(
                {
                    "type": "add_track",
                    "cid": track.id,
                    "kind": track.kind,
                    "source": source,
                    "name": name,
                    "muted": False,
                    "encryption": "none" if e2ee is None else "e2ee",
                }
            )
            info: Frame = reply["track"]
            pc = self._require_pc()
            transceiver = self._take_free(track)
            if transceiver is None:
                transceiver = pc.addTransceiver(track, direction="sendonly")
            if e2ee is not None:
                encrypt_sender(transceiver.sender, e2ee, identity, track.kind)
            self._published[info["sid"]] = transceiver
            if simulcast:
                self._simulcast[transceiver] = simulcast
            rejected = await self._negotiate()
        if transceiver.mid in rejected:
            raise KeyroomError("forbidden", f"the server rejected the media of track {info['sid']}")
        return info

    async def renegotiate(self) -> set[str]:
        async with self._lock:
            return await self._negotiate()

    async def _negotiate(self) -> set[str]:
        """Offer the PC's current state, apply the answer; returns the mids it rejected."""
        pc = self._require_pc()
        await pc.setLocalDescription(await pc.createOffer())
        layers = {t.mid: rids for t, rids in self._simulcast.items() if t.mid is not None}
        offer = offer_simulcast(pc.localDescription.sdp, layers)
        reply = await self._request({"type": "offer", "target": "publisher", "sdp": offer})
        answer = str(reply.get("sdp", ""))
        rejected = {s.mid for s in describe_sections(answer) if s.rejected and s.mid is not None}
        await pc.setRemoteDescription(
            RTCSessionDescription(
                sdp=make_rejected_sections_applicable(answer, offer), type="answer"
            )
        )
        return rejected

    def _require_pc(self) -> RTCPeerConnection:
        if self.pc is None or self._connection.closed:
            raise self._connection.error()
        return self.pc

    def _take_free(self, track: MediaStreamTrack) -> RTCRtpTransceiver | None:
        transceiver = next((t for t in self._free if t.kind == track.kind), None)
        if transceiver is not None:
            self._free.remove(transceiver)
            resend(transceiver, track)  # its msid now names the new track
            transceiver.direction = "sendonly"
        return transceiver

    async def unpublish(self, track_sid: str) -> None:
        transceiver = self._published.pop(track_sid, None)
        if transceiver is None:
            return
        async with self._lock:
            await transceiver.sender.stop()
            # Frees the track for a later publish(); aiortc refuses a track that has a sender.
            transceiver.sender.replaceTrack(None)
            transceiver.direction = "inactive"
            self._simulcast.pop(transceiver, None)
            await self._negotiate()
            self._free.append(transceiver)

    async def send_data(self, envelope: Frame, reliable: bool, timeout: float) -> None:
        channel = await self._channel("_reliable" if reliable else "_lossy", timeout)
        channel.send(orjson.dumps(envelope).decode())

    async def _channel(self, label: str, timeout: float) -> RTCDataChannel:
        async with self._lock:
            if not self.channels:
                pc = self._require_pc()
                for name, options in DATA_CHANNELS.items():
                    self.channels[name] = pc.createDataChannel(name, **options)
                rejected = await self._negotiate()
                sctp = pc.sctp
                self._data_refused = sctp is not None and sctp.mid in rejected
        if self._data_refused:
            raise KeyroomError("forbidden", "the server rejected the data channels")
        channel = self.channels[label]
        if channel.readyState != "open":
            opened = asyncio.Event()
            channel.once("open", opened.set)
            if channel.readyState != "open":
                await asyncio.wait_for(opened.wait(), timeout)
        return channel

    async def trickle(self, candidate: Frame) -> None:
        # After the negotiation in flight, if any: the answer must be applied first.
        async with self._lock:
            if self.pc is not None:
                await add_candidate(self.pc, candidate)
