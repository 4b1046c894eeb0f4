"""A participant's media plane: its two peer connections and what flows through them.

The publisher PC (client offers, sfu/publishing.py) receives the participant's tracks; its
plaintext RTP goes straight through the ingress (sfu/ingress.py) to the forwarding core. The
subscriber PC (server offers, sfu/subscribing.py) carries one sendonly section per subscribed
track plus the data channels (sfu/datarelay.py). RTCP in both directions is the feedback state
machine's (sfu/feedback.py); this class owns the parts, their one timer, and does their I/O.
Room limits are read from the room at the moment of use, so an admin PATCH applies at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol

from auth.grants import VideoGrant
from auth.policy import may_publish_data
from sfu import clock, gcpolicy, iceguard, internals
from sfu.config import LimitsConfig
from sfu.datarelay import DataRelay, Envelope
from sfu.feedback import Feedback
from sfu.forwarder import DownTrack, PublishedTrack, no_keyframe_source
from sfu.ingress import Ingress
from sfu.negotiation import NegotiationError, add_ice_candidate
from sfu.publishing import Publishing
from sfu.stats import Stats
from sfu.subscribing import Notify, Subscribing
from sfu.tasks import TaskSet

__all__ = ["NegotiationError", "Notify", "Participant", "RoomView"]


class RoomView(Protocol):
    """What a participant uses of its room."""

    @property
    def limits(self) -> LimitsConfig: ...

    def deliver_data(self, sender: Participant, label: str, envelope: Envelope) -> int: ...


class Participant:
    def __init__(
        self,
        *,
        sid: str,
        identity: str,
        name: str,
        metadata: str,
        grant: VideoGrant,
        room: RoomView,
        notify: Notify,
        stats: Stats,
        auto_subscribe: bool,
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
        # A role with `relay_only = true`: TURN only for this participant, whatever the room says.
        self.relay_only = relay_only
        # The client kind its token's key proved (signaling/binding.py); None: a bearer token.
        self.bound_client: str | None = None
        # [rtc] public_ips: bound address -> address the SDP advertises (1:1 NAT).
        addresses = dict(public_addresses or {})
        self.joined_at = int(time.time())
        self.closed = False
        self.tracks: dict[str, PublishedTrack] = {}
        self._tracks_by_cid: dict[str, PublishedTrack] = {}
        self.subscriptions: dict[str, DownTrack] = {}
        self._tasks = TaskSet(f"participant {sid}")
        self.on_connection_failed: Callable[[Participant], None] | None = None
        # A video track over limits.max_video_bitrate (sfu/bitratecap.py): warned, paused.
        self.on_bitrate: Callable[[Participant, PublishedTrack, str, int, int], None] | None = None
        # The settings behind refused remote candidates: told to the client if a PC fails.
        self.ice_refusals: list[str] = []
        self._timer = clock.TimerDriver(self)
        self._build_media(addresses)
        self.publishing.simulcast_allowed = lambda: self.room.limits.simulcast
        self.subscribing.transport_cc.allowed = lambda: self.room.limits.transport_cc
        self.publishing.red_allowed = self.subscribing.red.allowed = self._red_allowed

    def _red_allowed(self) -> bool:
        return self.room.limits.audio_red

    def _build_media(self, addresses: dict[str, str]) -> None:
        """The two peer connections and the parts that work on them."""
        sid, stats = self.sid, self.stats
        self.publisher_pc = internals.new_peer_connection()
        self.subscriber_pc = internals.new_peer_connection()
        # Candidate, relay-only and media-source hygiene (docs/security-transport.md).
        iceguard.guard_peer_connections(
            sid,
            lambda: self.relay_only or self.room.limits.relay_only,
            {"publisher": self.publisher_pc, "subscriber": self.subscriber_pc},
            self.stats.dropped,
            self.ice_refusals,
        )
        ingress = Ingress(self.tracks, stats)
        ingress.on_gap = self._uplink_gap
        ingress.on_repair = lambda nacks: nacks.on_repair(clock.now())
        self.feedback = self._new_feedback(ingress)
        self.publishing = Publishing(
            self.publisher_pc,
            ingress=ingress,
            feedback=self.feedback,
            stats=stats,
            allowed_codecs=lambda: self.room.limits.allowed_codecs,
            may_publish_data=self._may_publish_data,
            public_addresses=addresses,
        )
        self.data = DataRelay(
            stats=stats,
            may_publish=self._may_publish_data,
            max_bytes=lambda: self.room.limits.max_data_message_bytes,
            deliver=self._deliver_data,
        )
        self.subscribing = Subscribing(
            self.subscriber_pc,
            sid=sid,
            subscriptions=self.subscriptions,
            notify=lambda frame: self.notify(frame),
            relay=self.data,
            feedback=self.feedback,
            rearm=self._timer.update,
            tasks=self._tasks,
            stats=stats,
            public_addresses=addresses,
        )
        self.publisher_pc.on("datachannel", self.data.on_publisher_channel)
        self.publisher_pc.on("connectionstatechange", self._on_state_change)
        self.subscriber_pc.on("connectionstatechange", self._on_state_change)

    def _new_feedback(self, ingress: Ingress) -> Feedback:
        return Feedback(
            tracks=self.tracks,
            subscriptions=self.subscriptions,
            stats=self.stats,
            max_video_bitrate=lambda: self.room.limits.max_video_bitrate,
            rtcp_ssrc=random.getrandbits(32),
            uplink=ingress.nacks,
            phase=clock.phases.take(),
        )

    def _may_publish_data(self) -> bool:
        return may_publish_data(self.grant).allowed

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

    @property
    def subscriber_sections(self) -> int:
        """Media sections of the subscriber connection: bounded by the tracks received at once,
        as sections are recycled (sfu/subscribing.py)."""
        return len(self.subscriber_pc.getTransceivers())

    def connection_quality(self) -> dict[str, object]:
        """RTT, loss, jitter, estimated bandwidth and level (sfu/quality.py)."""
        return self.feedback.quality.snapshot(self.feedback.rtt.rtt).as_dict()

    def connection_state(self) -> dict[str, str]:
        return {
            "publisher": self.publisher_pc.connectionState,
            "subscriber": self.subscriber_pc.connectionState,
        }

    # -- publishing -----------------------------------------------------------------------------

    def add_track(self, track: PublishedTrack) -> None:
        self.tracks[track.sid] = track
        self._tracks_by_cid[track.cid] = track
        self.stats.tracks += 1
        track.request_keyframe = partial(self._request_keyframe, track)

    def track_by_cid(self, cid: str) -> PublishedTrack | None:
        return self._tracks_by_cid.get(cid)

    def remove_track(self, track_sid: str) -> PublishedTrack | None:
        track = self.tracks.pop(track_sid, None)
        if track is None:
            return None
        self._tracks_by_cid.pop(track.cid, None)
        self.stats.tracks -= 1
        self.stats.bitrate_in -= track.bitrate
        track.request_keyframe = no_keyframe_source
        self.publishing.ingress.forget(track)
        self.feedback.forget_track(track)
        self._timer.update()
        return track

    async def handle_publisher_offer(self, sdp: str) -> tuple[str, list[PublishedTrack]]:
        """Answer the publisher's offer; returns the answer and the tracks it newly bound."""
        answer = await self.publishing.answer(sdp, self._tracks_by_cid)
        self.feedback.start_publisher_reports(clock.now())
        self._timer.update()
        return answer

    def set_quality(self, track_sid: str, max_layer: int) -> bool:
        """Cap the layer this participant receives of a track; False if not subscribed."""
        down = self.subscriptions.get(track_sid)
        if down is None:
            return False
        down.max_layer = max_layer
        for changed in self.feedback.congestion.reallocate(clock.now()):
            changed.track.request_keyframe()
        return True

    def _uplink_gap(self) -> None:
        self.feedback.uplink_gap(clock.now())
        self._timer.update()

    def _request_keyframe(self, track: PublishedTrack) -> None:
        self.feedback.request_keyframe(track, clock.now())
        self._flush()

    # -- the one timer --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self.feedback.next_deadline()

    def handle_timer(self, now: float) -> None:
        self.feedback.handle_timer(now)
        actions, self.feedback.bitrate_actions = self.feedback.bitrate_actions, []
        for track, action, bitrate, limit in actions:
            if self.on_bitrate is not None:
                self.on_bitrate(self, track, action, bitrate, limit)
        self._flush()

    def _flush(self) -> None:
        """Send what the feedback has queued, and re-arm the timer for its next deadline."""
        self.feedback.drain(self.publishing.sink, self.subscribing.sink)
        for event in self.feedback.events:
            self.notify(event)
        self.feedback.events.clear()
        if self.feedback.quality_changes:
            self.feedback.quality_changes.clear()
            self.notify({"type": "connection_quality", **self.connection_quality()})
        self._timer.update()

    # -- data -----------------------------------------------------------------------------------

    def _deliver_data(self, label: str, envelope: Envelope) -> None:
        self.room.deliver_data(self, label, envelope)

    def send_data(self, label: str, message: bytes) -> bool:
        """Deliver on the subscriber PC; held (bounded) while the channel is still opening."""
        return self.data.send(label, message)

    # -- subscribing ----------------------------------------------------------------------------

    def subscribe(self, track: PublishedTrack) -> bool:
        return self.subscribing.subscribe(track)

    def unsubscribe(self, track_sid: str) -> DownTrack | None:
        return self.subscribing.unsubscribe(track_sid)

    def start_negotiation(self) -> None:
        """Send a new subscriber offer now, or after the answer to the one in flight."""
        self.subscribing.start()

    def resync_subscriber(self) -> None:
        """After a socket change: repeat the offer still awaiting an answer, or make a new one
        if the last offer timed out unanswered."""
        self.subscribing.resync()

    def restart_ice(self) -> None:
        """ICE restart of the subscriber PC (the publisher PC restarts by the client's offer)."""
        self.subscribing.restart_ice()

    def handle_subscriber_answer(self, sdp: str) -> None:
        self.subscribing.handle_answer(sdp)

    # -- ICE ------------------------------------------------------------------------------------

    async def add_ice_candidate(self, target: str, candidate: dict[str, Any]) -> None:
        pc = self.publisher_pc if target == "publisher" else self.subscriber_pc
        await add_ice_candidate(pc, target, candidate)

    # -- life -----------------------------------------------------------------------------------

    def _on_state_change(self) -> None:
        if self.subscriber_pc.connectionState == "connected":
            # Keyframes asked for at subscription time may have arrived before the subscriber's
            # transport could carry them.
            for down in list(self.subscriptions.values()):
                if down.waiting_for_keyframe:
                    down.track.request_keyframe()
        states = (self.publisher_pc.connectionState, self.subscriber_pc.connectionState)
        if "failed" in states and self.on_connection_failed is not None and not self.closed:
            self.on_connection_failed(self)

    def detach(self) -> None:
        """Stop forwarding to this participant at once (peer connections close later)."""
        if self.closed:
            return
        self.closed = True
        gcpolicy.departed()  # its cycles are garbage soon: the server's full collections count them
        self.subscribing.stop()
        self.feedback.stop()
        clock.phases.give_back(self.feedback.phase)
        self._timer.stop()

    async def close(self) -> None:
        """Release every resource: tasks, peer connections, their sockets. Idempotent."""
        self.detach()
        await self._tasks.close()
        if self.subscribing.gathering is not None:
            await asyncio.gather(self.subscribing.gathering, return_exceptions=True)
        await asyncio.gather(
            self.publisher_pc.close(), self.subscriber_pc.close(), return_exceptions=True
        )
