"""`KeyroomClient`: one participant of a keyroom room, the SDK's entry point."""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import time
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection

from auth.keybinding import make_proof
from auth.keys import PrivateKey, load_private_key
from sfu.tasks import TaskSet
from signaling.client.connection import Connection
from signaling.client.consumers import EventConsumer
from signaling.client.e2ee import FrameCryptor, decrypt_receiver
from signaling.client.errors import Frame, KeyroomError, SessionClosed
from signaling.client.peers import peer_connection, rerun_connect
from signaling.client.publisher import Publisher
from signaling.client.redirects import join_following_redirects
from signaling.client.roster import Roster
from signaling.client.subscriber import RemoteTrack, Subscriber
from signaling.protocol import PROTOCOL_VERSION

log = logging.getLogger("signaling.client")

CLIENT_INFO = {"sdk": "python", "version": "0.1"}
CLIENT_KIND = "python"  # what this client's key proofs name (a grant's `clients`)

# How long connect() waits for the close that follows a refused join, to report its code.
_REFUSAL_CLOSE_WAIT = 2.0


class KeyroomClient(EventConsumer):
    """One participant of a keyroom room (see the package docstring for an example).

    State after `connect()`: `joined` (the whole `joined` payload), `room`, `participant` (own
    ParticipantInfo), `permissions`, `participants` (sid -> ParticipantInfo of the others, kept
    up to date from events, tracks included), `events` (every server event, in order),
    `remote_tracks` (mid -> RemoteTrack). After the session ends: `close_code` and
    `leave_reason`.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        auto_subscribe: bool = True,
        ice_servers: list[dict[str, Any]] | None = None,
        client_info: dict[str, Any] | None = None,
        ssl: ssl_module.SSLContext | None = None,
        key_file: str | None = None,
        key: PrivateKey | None = None,
        e2ee: FrameCryptor | None = None,
    ) -> None:
        """`url` is the signaling endpoint (ws://host:port/rtc, or wss://… verified against
        `ssl` when given, else the system's CAs). `ice_servers` (dicts shaped like
        `joined.ice_servers`) configure both PCs; without it they use no STUN/TURN server at
        all (aiortc would otherwise add a public STUN server): the servers that `joined`
        advertises are not used unless passed here. `ice_transport_policy: "relay"` in `joined`
        is honoured. `key_file` (PEM, EC P-256 or Ed25519) or `key` proves possession of the key
        a bound token names (`cnf.jkt`): see `proof()`. `e2ee` (its own): publish encrypted,
        decrypt every received track, ratchet the key when someone leaves."""
        self.key = key if key_file is None else load_private_key(Path(key_file).read_bytes())
        self.url = url
        self.e2ee = e2ee
        self.token = token
        self.auto_subscribe = auto_subscribe
        self.ice_servers = ice_servers or []
        self.client_info = client_info or dict(CLIENT_INFO)
        self.ssl = ssl
        self.events: list[Frame] = []
        self._connection = Connection(
            url,
            ssl,
            dispatch=self._dispatch,
            on_reply=self._on_reply,
            on_closed=self._on_closed,
            on_server_close=self._on_server_close,
        )
        super().__init__(TaskSet("keyroom client"))
        self._roster = Roster()
        # Looked up at each call, not bound now: tests wrap `request` on the instance.
        self._publisher = Publisher(self._connection, lambda frame: self.request(frame))
        self._subscriber = Subscriber(
            self._connection, self._roster, self._track_inbox, self._data_inbox, self._fire
        )
        if e2ee is not None:
            self.on("track", self._decrypt_track)
        self._torn_down = False
        self._teardown_lock = asyncio.Lock()
        self._server_teardown: asyncio.Future[None] | None = None

    # ---------------------------------------------------------------- state

    @property
    def joined(self) -> Frame:
        return self._roster.joined

    @property
    def room(self) -> Frame:
        return self._roster.room

    @property
    def participant(self) -> Frame:
        return self._roster.participant

    @property
    def permissions(self) -> Frame:
        return self._roster.permissions

    @property
    def participants(self) -> dict[str, Frame]:
        return self._roster.participants

    @property
    def remote_tracks(self) -> dict[str, RemoteTrack]:
        return self._subscriber.remote_tracks

    @property
    def publisher_pc(self) -> RTCPeerConnection | None:
        return self._publisher.pc

    @property
    def subscriber_pc(self) -> RTCPeerConnection | None:
        return self._subscriber.pc

    @property
    def close_code(self) -> int | None:
        return self._connection.close_code

    @property
    def leave_reason(self) -> str | None:
        return self._connection.leave_reason

    # Tests reach these to drop the socket alone (_ws) and to check that nothing is left running.
    @property
    def _ws(self) -> aiohttp.ClientWebSocketResponse | None:
        return self._connection.ws

    @property
    def _reader(self) -> asyncio.Task[None] | None:
        return self._connection.reader

    @property
    def _publisher_channels(self) -> dict[str, RTCDataChannel]:
        # For tests that send on a channel what send_data would not (a forged envelope).
        return self._publisher.channels

    # ---------------------------------------------------------------- session

    async def connect(self, timeout: float = 10) -> Frame:
        """Open the socket, join, and return the `joined` payload.

        Raises KeyroomError when the server refuses the join (with `close_code` set from the
        close that follows, e.g. 4401), SessionClosed when the socket closes without an error
        frame, aiohttp.WSServerHandshakeError when the upgrade is refused (e.g. 403).
        """
        try:
            # A bound token's proof needs a nonce: fetched while the socket opens.
            opening = self._connection.open(timeout)
            if self.key is None:
                await opening
                proof = None
            else:
                _, proof = await asyncio.gather(opening, self.proof(self.token, timeout))
            join = {
                "type": "join",
                "token": self.token,
                "protocol": PROTOCOL_VERSION,
                "auto_subscribe": self.auto_subscribe,
                "client": self.client_info,
            }
            if proof is not None:
                join["proof"] = proof
            prove = None if proof is None else partial(self.proof, self.token, timeout)
            request = partial(self.request, timeout=timeout)
            reply = await join_following_redirects(self._connection, join, request, prove, timeout)
            self.url = self._connection.url
            return reply
        except KeyroomError as exc:
            await self._connection.wait_reader(_REFUSAL_CLOSE_WAIT)
            exc.close_code = self.close_code
            await self._abort()
            raise
        except SessionClosed as exc:
            await self._abort()
            error = next((e for e in reversed(self.events) if e.get("type") == "error"), None)
            if error is not None:
                raise KeyroomError(
                    str(error.get("code")), str(error.get("message", "")), error, exc.close_code
                ) from exc
            raise
        except BaseException:
            await self._abort()
            raise

    async def proof(self, credential: str, timeout: float = 10) -> str:
        """A proof of possession of `key` for `credential` (a token for join or refresh, the
        resume token for resume), over a fresh nonce from the server."""
        if self.key is None:
            raise ValueError("this client has no key (key_file or key)")
        nonce = await self._connection.fetch_nonce(timeout)
        return make_proof(self.key, nonce=nonce, credential=credential, client=CLIENT_KIND)

    async def leave(self) -> None:
        """Send `leave`, close the socket cleanly, close both PCs; waits for all tasks."""
        ws = self._connection.ws
        if not self._connection.closed and ws is not None:
            try:
                # Waiting for the reply means the server has processed the leave (and told the
                # others) before this returns: leaves from one program happen in order.
                await self.request({"type": "leave"}, timeout=5)
            except (SessionClosed, ConnectionError, KeyroomError, TimeoutError):
                log.debug("no reply to leave; closing anyway")
            try:
                await ws.close()
            except (SessionClosed, ConnectionError):
                log.debug("socket already gone while leaving")
        await self._connection.wait_reader(None)
        await self._teardown()

    async def close(self) -> None:
        """Drop the session without `leave` (the TCP connection is cut, no close frame), as a
        network failure would; closes both PCs and waits for all tasks."""
        await self._abort()

    async def _abort(self) -> None:
        await self._connection.abort()
        await self._teardown()

    async def _teardown(self) -> None:
        async with self._teardown_lock:
            if self._torn_down:
                return
            self._torn_down = True
            self._connection.end(self.close_code)
            for pc in (self.publisher_pc, self.subscriber_pc):
                if pc is not None:
                    await pc.close()
            while self._tasks:
                await self._tasks.close()
            await self._connection.close_http()

    def _on_closed(self, exc: SessionClosed) -> None:
        for inbox in (self._event_inbox, self._track_inbox, self._data_inbox):
            inbox.close(exc)

    def _on_server_close(self) -> None:
        # The server ended the session: release the PCs now, not when the owner notices
        # (leave()/close() then wait for this same teardown).
        self._server_teardown = asyncio.ensure_future(self._teardown())

    # ---------------------------------------------------------------- requests

    async def request(self, frame: Frame, timeout: float = 10) -> Frame:
        """Send `frame` with a fresh integer `req` and return the server's direct reply.

        Raises KeyroomError for an `error` reply, SessionClosed if the session ends first,
        TimeoutError after `timeout` seconds.
        """
        return await self._connection.request(frame, timeout)

    async def send_raw(self, text: str | bytes) -> None:
        """Send `text` as is (bytes as a binary frame): for tests of malformed frames."""
        await self._connection.send_raw(text)

    async def ping(self) -> float:
        """Round trip of a `ping`/`pong`, in seconds."""
        start = time.perf_counter()
        await self.request({"type": "ping"})
        return time.perf_counter() - start

    # ---------------------------------------------------------------- incoming frames

    def _on_reply(self, frame: Frame) -> None:
        if frame.get("type") == "joined":
            self._on_joined(frame)

    def _dispatch(self, frame: Frame) -> None:
        kind = frame.get("type")
        if kind == "offer" and frame.get("target") == "subscriber":
            self._subscriber.offer(frame.get("sdp", ""))
        elif kind == "trickle":
            self._on_trickle(frame)
        else:
            self._on_event(frame)

    def _on_joined(self, frame: Frame) -> None:
        # Applied by the reader before the join future resolves: events that follow `joined`
        # immediately must land on this state, not be overwritten by it.
        self._roster.join(frame)
        relay_only = frame.get("ice_transport_policy") == "relay"
        self._publisher.pc = peer_connection(self.ice_servers, relay_only)
        subscriber_pc = peer_connection(self.ice_servers, relay_only)
        for pc in (self._publisher.pc, subscriber_pc):
            self._watch_connection(pc)
        self._subscriber.attach(subscriber_pc)
        self._tasks.spawn(self._subscriber.run())

    def _watch_connection(self, pc: RTCPeerConnection) -> None:
        def on_state() -> None:
            if pc.connectionState == "connected":
                self._tasks.spawn(rerun_connect(pc))

        pc.on("connectionstatechange", on_state)

    def _on_trickle(self, frame: Frame) -> None:
        candidate = frame.get("candidate")
        if not isinstance(candidate, dict):
            log.warning("trickle without a candidate object: %s", frame)
        elif frame.get("target") == "subscriber":
            self._subscriber.trickle(candidate)
        elif frame.get("target") == "publisher":
            self._tasks.spawn(self._publisher.trickle(candidate))

    def _on_event(self, frame: Frame) -> None:
        if frame.get("type") == "leave":
            self._connection.leave_reason = frame.get("reason")
            message = frame.get("message")
            self._connection.leave_message = message if isinstance(message, str) else None
        elif frame.get("type") == "participant_left" and self.e2ee is not None:
            self.e2ee.rekey()  # as the page does: who left cannot read what is sent from now on
        changed = self._roster.apply(frame)
        if changed is not None:
            self._subscriber.resolve(changed)
        self.events.append(frame)
        self._event_inbox.put(frame)
        self._fire(str(frame.get("type")), frame)
        self._fire("*", frame)

    # ---------------------------------------------------------------- media and data

    async def wait_ready(self, timeout: float = 10) -> None:
        """Wait until the subscriber PC is connected and its `_reliable`/`_lossy` channels are
        open, i.e. until this participant can receive data messages."""
        await self._subscriber.wait_ready(timeout)

    async def publish(
        self,
        track: MediaStreamTrack,
        *,
        source: str = "camera",
        name: str = "",
        e2ee: FrameCryptor | None = None,
        simulcast: tuple[str, ...] = (),
    ) -> Frame:
        """Announce `track` (`add_track`, cid = track.id), then send it on the publisher PC.
        `simulcast`: offer it as these RIDs, lowest quality first (e.g. ("q", "h", "f")); aiortc
        sends one encoding only, so the caller writes each layer's RTP itself (loadtest/).

        Returns the granted TrackInfo. Raises KeyroomError for a refused `add_track`, or
        `forbidden` when the server's answer rejects the track's media section. With `e2ee`,
        the track is declared `"encryption":"e2ee"` and every frame encrypted (client/e2ee.py).
        """
        identity = str(self.joined.get("participant", {}).get("identity", ""))
        return await self._publisher.publish(
            track, source, name, e2ee or self.e2ee, identity, simulcast
        )

    async def restart_ice(self) -> None:
        """ICE restart of both peer connections (docs/protocol.md 2.7): the server offers the
        subscriber PC new credentials (`ice_restart`), the publisher PC offers its own. The
        session stays. Host candidates are not gathered again (aioice cannot): after a change
        of local address, rejoin with `resume` instead."""
        await self.request({"type": "ice_restart"})
        await self._publisher.restart_ice()

    async def renegotiate_publisher(self) -> set[str]:
        """Offer the publisher PC's current state and apply the answer; returns the mids the
        answer rejected. Lets tests add transceivers/channels by hand on `publisher_pc`."""
        return await self._publisher.renegotiate()

    async def unpublish(self, track_sid: str) -> None:
        """`unpublish` the track, stop sending it and renegotiate its section to inactive."""
        await self.request({"type": "unpublish", "track_sid": track_sid})
        await self._publisher.unpublish(track_sid)

    async def mute(self, track_sid: str, muted: bool) -> None:
        """Tell the server a published track is (un)muted; media keeps flowing from aiortc."""
        await self.request({"type": "mute", "track_sid": track_sid, "muted": muted})

    async def subscribe(self, track_sids: list[str], subscribe: bool = True) -> None:
        """Explicitly (un)subscribe; the server follows with a subscriber offer."""
        await self.request({"type": "subscribe", "track_sids": track_sids, "subscribe": subscribe})

    async def send_data(
        self,
        payload: str,
        *,
        topic: str = "",
        to: list[str] | None = None,
        reliable: bool = True,
        timeout: float = 10,
    ) -> None:
        """Send a data envelope on the publisher PC's `_reliable` (or `_lossy`) channel.

        The channels are created on first use and negotiated on their own: an aiortc offerer
        whose first offer holds a data channel created before a media transceiver never
        connects, so data never shares a first offer with media. Raises KeyroomError
        `forbidden` if the server's answer rejected the data section.
        """
        envelope: Frame = {"topic": topic, "payload": payload}
        if to is not None:
            envelope["to"] = to
        await self._publisher.send_data(envelope, reliable, timeout)

    # ---------------------------------------------------------------- consumers

    def _decrypt_track(self, remote: RemoteTrack) -> None:
        """Synchronous, inside the "track" event: before aiortc starts the track's decoder."""
        assert self.e2ee is not None and self.subscriber_pc is not None
        receiver = next(
            t.receiver for t in self.subscriber_pc.getTransceivers() if t.mid == remote.mid
        )
        remote.decryption = decrypt_receiver(
            receiver, self.e2ee, lambda: remote.participant_identity, remote.kind
        )
