"""The subscriber side of a client: the server's offers, the remote tracks and data they bring."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from sfu.internals.icerestart import adopt_remote_credentials, renew_local_credentials
from sfu.sdpinfo import MediaSectionInfo, describe_sections
from signaling.client.connection import Connection
from signaling.client.errors import Frame, SessionClosed
from signaling.client.inbox import Inbox
from signaling.client.peers import add_candidate, reroute, transceiver_of
from signaling.client.roster import Roster
from signaling.client.sdp import make_rejected_sections_applicable
from signaling.protocol import DATA_CHANNELS

log = logging.getLogger("signaling.client")


@dataclass
class RemoteTrack:
    """A track received on the subscriber PC and the publisher it belongs to.

    `track` is aiortc's RemoteStreamTrack: call `await track.recv()` (or `count_frames`) to
    consume decoded frames, otherwise they pile up in memory. `participant_identity` and `info`
    (TrackInfo) are filled from the client's participant state, as soon as it knows them.
    `ended` turns true when the server's offer stops sending on the track's section.
    """

    track: MediaStreamTrack
    track_sid: str
    participant_sid: str
    participant_identity: str
    kind: str
    info: Frame | None
    mid: str | None = None
    ended: bool = False
    decryption: Any = None  # with E2EE: its decrypting queue (`failures` counts bad frames)


class Subscriber:
    """Answers the server's offers on the subscriber PC and reports what they bring.

    Offers and trickles are applied strictly in arrival order by one worker (`run`). New remote
    tracks are put in `tracks` and data messages in `data`, each also given to `fire` ("track",
    "data").
    """

    def __init__(
        self,
        connection: Connection,
        roster: Roster,
        tracks: Inbox[RemoteTrack],
        data: Inbox[Frame],
        fire: Callable[[str, Any], None],
    ) -> None:
        self.pc: RTCPeerConnection | None = None
        # mid -> RemoteTrack
        self.remote_tracks: dict[str, RemoteTrack] = {}
        self._tracks = tracks
        self._data = data
        self._connection = connection
        self._roster = roster
        self._fire = fire
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        # Known before setRemoteDescription: its "track" events look their section up here.
        self._sections: dict[str, MediaSectionInfo] = {}
        self._channels: dict[str, RTCDataChannel] = {}

    def attach(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        pc.on("track", self._on_remote_track)
        pc.on("datachannel", self._on_channel)

    def offer(self, sdp: str) -> None:
        self._queue.put_nowait(("offer", sdp))

    def trickle(self, candidate: Frame) -> None:
        self._queue.put_nowait(("trickle", candidate))

    async def run(self) -> None:
        while True:
            kind, payload = await self._queue.get()
            pc = self.pc
            assert pc is not None
            try:
                if kind == "offer":
                    await self._answer(pc, payload)
                else:
                    await add_candidate(pc, payload)
            except SessionClosed:
                return
            except Exception:
                if self._connection.closed or pc.connectionState == "closed":
                    return  # an offer still queued while leaving: nothing left to apply it to
                log.exception("failed to apply a subscriber %s", kind)

    async def _answer(self, pc: RTCPeerConnection, offer: str) -> None:
        local = pc.localDescription
        offer = make_rejected_sections_applicable(offer, local.sdp if local else None)
        sections = describe_sections(offer)
        self._sections = {s.mid: s for s in sections if s.mid is not None}
        if adopt_remote_credentials(pc, offer):
            renew_local_credentials(pc)  # the server restarted ICE: so does the answer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        self._refresh_remote_tracks(pc, sections)
        await pc.setLocalDescription(await pc.createAnswer())
        await self._connection.send(
            {"type": "answer", "target": "subscriber", "sdp": pc.localDescription.sdp}
        )

    def resolve(self, participant_sid: str) -> None:
        """Fill identity/TrackInfo of remote tracks once the participant state has them."""
        info = self._roster.participants.get(participant_sid)
        if info is None:
            return
        for remote in self.remote_tracks.values():
            if remote.participant_sid == participant_sid:
                remote.participant_identity = info.get("identity", "")
                remote.info = next(
                    (t for t in info.get("tracks") or [] if t.get("sid") == remote.track_sid),
                    remote.info,
                )

    def _on_remote_track(self, track: MediaStreamTrack) -> None:
        pc = self.pc
        transceiver = transceiver_of(pc, track) if pc is not None else None
        section = self._sections.get(transceiver.mid or "") if transceiver else None
        if section is None:
            log.warning("remote %s track without a known section", track.kind)
            return
        self._emit_remote_track(track, section)

    def _emit_remote_track(self, track: MediaStreamTrack, section: MediaSectionInfo) -> None:
        # aiortc's RemoteStreamTrack.id is the msid track id only when the SDP carries a WMS
        # msid-semantic; the section's own msid is authoritative.
        remote = RemoteTrack(
            track=track,
            track_sid=section.track_id or track.id,
            participant_sid=section.stream_id or "",
            participant_identity="",
            kind=track.kind,
            info=None,
            mid=section.mid,
        )
        if section.mid is not None:
            self.remote_tracks[section.mid] = remote
        self.resolve(remote.participant_sid)
        self._tracks.put(remote)
        self._fire("track", remote)

    def _refresh_remote_tracks(
        self, pc: RTCPeerConnection, sections: list[MediaSectionInfo]
    ) -> None:
        """Follow re-offers: end tracks whose section stopped, and report a section that is
        recycled for another track (a new msid after it went inactive, PROTOCOL 2.4) or resumed
        as a new RemoteTrack on the same aiortc track, since aiortc raises no second "track"
        event for a transceiver; its receiver is told the section's new SSRCs and codec."""
        for section in sections:
            remote = self.remote_tracks.get(section.mid or "")
            if remote is None:
                continue
            if section.rejected or section.direction == "recvonly":
                remote.ended = True
            elif remote.ended or remote.track_sid != section.track_id:
                remote.ended = True
                transceiver = next((t for t in pc.getTransceivers() if t.mid == section.mid), None)
                if transceiver is not None and section.ssrcs:
                    reroute(transceiver, section.ssrcs)
                self._emit_remote_track(remote.track, section)

    def _on_channel(self, channel: RTCDataChannel) -> None:
        self._channels[channel.label] = channel

        def on_message(message: str | bytes) -> None:
            try:
                data = orjson.loads(message)
            except orjson.JSONDecodeError:
                log.warning("undecodable data on %s: %.200r", channel.label, message)
                return
            if not isinstance(data, dict):
                log.warning("non-object data on %s: %.200r", channel.label, message)
                return
            data["channel"] = channel.label
            self._data.put(data)
            self._fire("data", data)

        channel.on("message", on_message)

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the PC is connected and its `_reliable`/`_lossy` channels are open."""
        async with asyncio.timeout(timeout):
            while not self._ready():
                if self._connection.closed:
                    raise self._connection.error()
                await asyncio.sleep(0.02)

    def _ready(self) -> bool:
        return (
            self.pc is not None
            and self.pc.connectionState == "connected"
            and all(
                label in self._channels and self._channels[label].readyState == "open"
                for label in DATA_CHANNELS
            )
        )
