"""One `/rtc` WebSocket: authentication first, then the signaling protocol (PROTOCOL section 2)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from auth.grants import SOURCE_KIND, role_relay_only
from auth.policy import may_publish_track, may_subscribe, may_update_own_metadata
from auth.tokens import Claims, TokenError
from sfu.config import room_limits
from sfu.forwarder import PublishedTrack
from sfu.metrics import record_join
from sfu.participant import NegotiationError, Participant
from sfu.room import JoinRefused, Room, new_sid
from signaling.frames import FrameError, parse_frame
from signaling.protocol import (
    CLOSE_JOIN_TIMEOUT,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL,
    CLOSE_RATE_LIMITED,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED,
    JOIN_REFUSAL_CLOSE,
    LEAVE_CLOSE,
    PROTOCOL_VERSION,
)
from signaling.state import ServerState

log = logging.getLogger("keyroom.session")

DEFAULT_SOURCE = {"video": "camera", "audio": "microphone"}


class Session:
    def __init__(self, state: ServerState, ws: web.WebSocketResponse, peer: str) -> None:
        self.state = state
        self.ws = ws
        self.peer = peer
        self.participant: Participant | None = None
        self.room: Room | None = None
        self.claims: Claims | None = None
        self._outbox: asyncio.Queue[tuple[dict[str, Any], int | None] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._bad_frames: list[float] = []
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._ending = False
        self._end_reason = "disconnected"
        self._resumed = False
        self.resume_token = ""
        self._join_started = time.monotonic()

    # -- output ---------------------------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        """Queue a frame; frames leave in order even when queued from synchronous code."""
        if not self._ending:
            self._outbox.put_nowait((frame, None))

    def reply(self, req: int | None, frame: dict[str, Any]) -> None:
        if req is not None:
            frame = {**frame, "req": req}
        self.send(frame)

    def ok(self, req: int | None) -> None:
        if req is not None:
            self.send({"type": "ok", "req": req})

    def error(self, req: int | None, code: str, message: str) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if req is not None:
            frame["req"] = req
        self.send(frame)

    def end(self, reason: str, *, close_code: int | None = None) -> None:
        """End the session from the server side: `leave` with the reason, then close."""
        if self._ending:
            return
        self.send({"type": "leave", "reason": reason})
        self._ending = True
        self._end_reason = reason
        self._outbox.put_nowait(({}, close_code or LEAVE_CLOSE.get(reason, CLOSE_NORMAL)))

    async def _write_loop(self) -> None:
        while True:
            item = await self._outbox.get()
            if item is None:
                return
            frame, close_code = item
            if self.ws.closed:
                return
            if close_code is not None:
                await self.ws.close(code=close_code)
                return
            try:
                await self.ws.send_str(orjson.dumps(frame).decode())
            except (ConnectionError, RuntimeError):
                return

    async def _refuse(self, code: str, message: str, close_code: int, req: int | None) -> None:
        reason = "timeout" if close_code == CLOSE_JOIN_TIMEOUT else code
        record_join(False, reason, time.monotonic() - self._join_started)
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if req is not None:
            frame["req"] = req
        try:
            await self.ws.send_str(orjson.dumps(frame).decode())
        except (ConnectionError, RuntimeError):
            pass
        await self.ws.close(code=close_code)

    # -- life -----------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if not await self._join():
                return
            self._writer = asyncio.ensure_future(self._write_loop())
            self._flush_join()
            await self._read_loop()
        finally:
            await self._cleanup()

    async def _join(self) -> bool:
        state = self.state
        try:
            message = await self.ws.receive(timeout=state.config.server.join_timeout)
        except TimeoutError:
            await self._refuse("invalid_message", "no join in time", CLOSE_JOIN_TIMEOUT, None)
            return False
        if message.type == WSMsgType.BINARY:
            await self.ws.close(code=CLOSE_UNSUPPORTED)
            return False
        if message.type != WSMsgType.TEXT:
            return False
        self._join_started = time.monotonic()
        try:
            frame = parse_frame(message.data)
        except FrameError as exc:
            await self._refuse("invalid_message", exc.message, CLOSE_PROTOCOL, exc.req)
            return False
        req = frame.get("req")
        if frame["type"] == "resume":
            return await self._resume(frame, req)
        if frame["type"] != "join":
            await self._refuse(
                "invalid_message", "the first frame must be join or resume", CLOSE_PROTOCOL, req
            )
            return False
        if frame.get("protocol", PROTOCOL_VERSION) != PROTOCOL_VERSION:
            await self._refuse(
                "invalid_message",
                f"unsupported protocol version (server speaks {PROTOCOL_VERSION})",
                CLOSE_PROTOCOL,
                req,
            )
            return False
        now = time.time()
        ip_key = f"ip:{self.peer}"
        if state.brake.blocked(ip_key, now):
            state.audit.record("join_refused", ip=self.peer, reason="rate_limited")
            await self._refuse("rate_limited", "too many attempts", CLOSE_RATE_LIMITED, req)
            return False
        try:
            claims = state.verifier.verify_join(frame["token"], now)
            if state.store.is_revoked(
                claims.room or "", claims.identity or "", claims.issued_at, now
            ):
                raise TokenError("revoked")
        except TokenError as exc:
            # The precise reason goes to the audit log only: the client learns nothing about why.
            state.brake.failure(ip_key, now)
            state.audit.record("join_refused", ip=self.peer, reason=exc.reason)
            await self._refuse("unauthorized", "unauthorized", CLOSE_UNAUTHORIZED, req)
            return False
        assert claims.room is not None and claims.identity is not None
        identity_key = f"id:{claims.identity}"
        if state.brake.blocked(identity_key, now):
            state.audit.record(
                "join_refused", ip=self.peer, room=claims.room, identity=claims.identity,
                reason="rate_limited",
            )  # fmt: skip
            await self._refuse("rate_limited", "too many attempts", CLOSE_RATE_LIMITED, req)
            return False
        try:
            self._admit(claims, frame, req)
        except JoinRefused as exc:
            if exc.code == "unauthorized":
                state.brake.failure(ip_key, now)
                state.brake.failure(identity_key, now)
            state.audit.record(
                "join_refused", ip=self.peer, room=claims.room, identity=claims.identity,
                reason=exc.reason or exc.code,
            )  # fmt: skip
            text = "unauthorized" if exc.code == "unauthorized" else exc.message
            await self._refuse(exc.code, text, JOIN_REFUSAL_CLOSE[exc.code], req)
            return False
        assert self.participant is not None
        record_join(True, "join", time.monotonic() - self._join_started)
        state.audit.record(
            "join_accepted", ip=self.peer, room=claims.room, identity=claims.identity,
            participant=self.participant.sid, key_id=claims.key_id,
        )  # fmt: skip
        return True

    def _admit(self, claims: Claims, frame: dict[str, Any], req: int | None) -> None:
        """Admission is synchronous: concurrent joins cannot slip past a limit in between."""
        state = self.state
        assert claims.room is not None and claims.identity is not None
        room = state.rooms.get(claims.room)
        if room is None and not state.config.auth.auto_create_rooms:
            raise JoinRefused("not_found", "no such room")
        if state.node_full(new_room=room is None):
            raise JoinRefused("server_full", "the server is full")
        limits = room.limits if room is not None else room_limits(state.config, claims.room)
        now = time.time()
        if limits.single_use_tokens:
            # Checked before admission and spent after it, with no await in between: a
            # concurrent join with the same token id cannot pass the check too.
            if claims.jti is None:
                raise JoinRefused("unauthorized", "unauthorized", reason="single_use_without_jti")
            if state.store.jti_spent(claims.jti, now):
                raise JoinRefused("unauthorized", "unauthorized", reason="jti_reused")
        evicted = room.check_admission(claims.identity) if room is not None else None
        if limits.single_use_tokens and claims.jti is not None:
            state.store.use_jti(
                claims.jti, expires_at=claims.exp + state.config.auth.leeway, now=now
            )
        if room is None:
            room = state.rooms.create(claims.room, limits=room_limits(state.config, claims.room))
        if evicted is not None:
            room.detach(evicted, "duplicate_identity")
            other = state.sessions_by_participant.get(evicted.sid)
            if other is not None:
                # Its own cleanup closes the peer connections.
                other.end("duplicate_identity")
            else:
                state.forget_parked(evicted)
                state.spawn(evicted.close())
        participant = Participant(
            sid=new_sid("PA"),
            identity=claims.identity,
            name=claims.name,
            metadata=claims.metadata,
            grant=claims.grant,
            room=room,
            notify=self.send,
            stats=state.stats,
            auto_subscribe=bool(frame.get("auto_subscribe", True)),
            # Empty public_ips: nothing to rewrite (finalize checks the lengths otherwise).
            relay_only=role_relay_only(state.config.roles, claims.role),
            public_addresses=dict(
                zip(state.config.rtc.ips, state.config.rtc.public_ips, strict=False)
            ),
        )
        participant.on_connection_failed = self._on_connection_failed
        self.participant = participant
        self.room = room
        self.claims = claims
        room.add(participant)
        state.sessions_by_participant[participant.sid] = self
        self._send_joined(req)
        self._arm_expiry(claims)

    def _send_joined(self, req: int | None) -> None:
        participant, room = self.participant, self.room
        assert participant is not None and room is not None
        from auth.turn import ice_servers

        turn = self.state.config.turn
        self.resume_token = secrets.token_urlsafe(32)
        self.reply(
            req,
            {
                "type": "joined",
                "room": room.info(),
                "participant": participant.info(with_permissions=True),
                "participants": [p.info() for p in room.visible_to(participant)],
                # Fresh TURN REST credentials on every joined (resume too): they expire.
                "ice_servers": ice_servers(
                    turn.urls, turn.secret, participant.identity, now=time.time(), ttl=turn.ttl
                ),
                "ice_transport_policy": (
                    "relay" if participant.relay_only or room.limits.relay_only else "all"
                ),
                "resume_token": self.resume_token,
            },
        )

    async def _resume(self, frame: dict[str, Any], req: int | None) -> bool:
        """Re-attach a participant whose socket dropped (PROTOCOL 2.7); nobody sees it leave."""
        state = self.state
        parked = state.take_parked(frame["resume_token"])
        if parked is None:
            state.audit.record("resume_refused", ip=self.peer, reason="unknown_resume_token")
            await self._refuse("unauthorized", "unauthorized", CLOSE_UNAUTHORIZED, req)
            return False
        if parked.claims.exp + state.config.auth.leeway < time.time():
            state.audit.record(
                "resume_refused", ip=self.peer, room=parked.room.name,
                identity=parked.participant.identity, reason="expired",
            )  # fmt: skip
            state.spawn(parked.room.remove(parked.participant, "token_expired"))
            await self._refuse("unauthorized", "unauthorized", CLOSE_UNAUTHORIZED, req)
            return False
        participant = parked.participant
        self.participant, self.room, self.claims = participant, parked.room, parked.claims
        participant.notify = self.send
        participant.on_connection_failed = self._on_connection_failed
        state.sessions_by_participant[participant.sid] = self
        self._send_joined(req)
        for held in parked.frames:
            if held.get("type") != "offer":  # the offer still waiting is sent again below
                self.send(held)
        participant.resync_subscriber()
        self._arm_expiry(parked.claims)
        self._resumed = True
        record_join(True, "resume", time.monotonic() - self._join_started)
        return True

    def _flush_join(self) -> None:
        assert self.room is not None and self.participant is not None
        if not self._resumed:
            self.room.subscribe_all(self.participant)

    async def _read_loop(self) -> None:
        limits = self.state.config.limits
        async for message in self.ws:
            if message.type == WSMsgType.BINARY:
                await self.ws.close(code=CLOSE_UNSUPPORTED)
                return
            if message.type != WSMsgType.TEXT:
                return
            try:
                frame = parse_frame(message.data)
                await self._dispatch(frame)
            except FrameError as exc:
                self.error(exc.req, exc.code, exc.message)
                if exc.code == "invalid_message" and self._too_many_bad_frames(limits):
                    self.end("protocol_error", close_code=CLOSE_RATE_LIMITED)
            if self._ending:
                return

    def _too_many_bad_frames(self, limits: Any) -> bool:
        now = time.monotonic()
        self._bad_frames = [t for t in self._bad_frames if now - t < limits.bad_frame_window]
        self._bad_frames.append(now)
        return len(self._bad_frames) > limits.max_bad_frames

    async def _cleanup(self) -> None:
        for timer in (self._expiry_timer, self._refresh_timer):
            if timer is not None:
                timer.cancel()
        participant, room, claims = self.participant, self.room, self.claims
        if participant is not None and room is not None and claims is not None:
            if self.state.sessions_by_participant.get(participant.sid) is self:
                del self.state.sessions_by_participant[participant.sid]
                if self._ending or not self.state.park(
                    self.resume_token, participant, room, claims
                ):
                    await room.remove(participant, self._end_reason)
        if self._writer is not None:
            if not self._ending:
                self._outbox.put_nowait(None)
            try:
                await asyncio.wait_for(self._writer, 2)
            except (TimeoutError, asyncio.CancelledError):
                self._writer.cancel()
        if not self.ws.closed:
            await self.ws.close()

    def _on_connection_failed(self, participant: Participant) -> None:
        log.info("participant %s: peer connection failed", participant.sid)
        self.end("connection_failed", close_code=CLOSE_NORMAL)

    # -- token life -----------------------------------------------------------------------------

    def _arm_expiry(self, claims: Claims) -> None:
        for timer in (self._expiry_timer, self._refresh_timer):
            if timer is not None:
                timer.cancel()
        if claims.exp is None:
            return
        loop = asyncio.get_running_loop()
        remaining = claims.exp + self.state.config.auth.leeway - time.time()
        self._expiry_timer = loop.call_later(max(remaining, 0), self.end, "token_expired")
        notice = claims.exp - self.state.config.auth.refresh_notice - time.time()
        self._refresh_timer = loop.call_later(
            max(notice, 0),
            self.send,
            {"type": "token_refresh_required", "expires_at": int(claims.exp)},
        )

    def _refresh(self, frame: dict[str, Any]) -> None:
        assert self.claims is not None
        req = frame.get("req")
        state, now = self.state, time.time()
        try:
            claims = state.verifier.verify_join(frame["token"], now)
            if claims.identity != self.claims.identity or claims.room != self.claims.room:
                raise TokenError("identity_or_room_differs")
            if state.store.is_revoked(
                claims.room or "", claims.identity or "", claims.issued_at, now
            ):
                raise TokenError("revoked")
        except TokenError as exc:
            state.audit.record(
                "refresh_refused", room=self.claims.room, identity=self.claims.identity,
                reason=exc.reason,
            )  # fmt: skip
            raise FrameError("unauthorized", "unauthorized", req) from None
        self.claims = claims
        self._arm_expiry(claims)
        self.ok(req)

    # -- requests -------------------------------------------------------------------------------

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        participant, room = self.participant, self.room
        assert participant is not None and room is not None
        kind = frame["type"]
        req = frame.get("req")
        if kind == "ping":
            self.reply(req, {"type": "pong"})
        elif kind == "leave":
            self.ok(req)  # every request with a req gets its one reply, this one too
            self._ending = True
            self._end_reason = "left"
            self._outbox.put_nowait(({}, CLOSE_NORMAL))
        elif kind == "add_track":
            self._add_track(frame, participant, room)
        elif kind == "offer":
            try:
                answer, bound = await participant.handle_publisher_offer(frame["sdp"])
            except NegotiationError as exc:
                raise FrameError("invalid_message", str(exc), req) from None
            self.reply(req, {"type": "answer", "target": "publisher", "sdp": answer})
            for track in bound:
                room.track_bound(participant, track)
        elif kind == "answer":
            try:
                participant.handle_subscriber_answer(frame["sdp"])
            except NegotiationError as exc:
                raise FrameError("invalid_message", str(exc), req) from None
            self.ok(req)
        elif kind == "trickle":
            try:
                await participant.add_ice_candidate(frame["target"], frame["candidate"])
            except NegotiationError as exc:
                raise FrameError("invalid_message", str(exc), req) from None
            self.ok(req)
        elif kind == "subscribe":
            self._subscribe(frame, participant, room)
        elif kind == "unpublish":
            if not room.unpublish(participant, frame["track_sid"], notify_publisher=True):
                raise FrameError("not_found", "no such track of yours", req)
            self.ok(req)
        elif kind == "mute":
            muted_track = participant.tracks.get(frame["track_sid"])
            if muted_track is None:
                raise FrameError("not_found", "no such track of yours", req)
            room.set_muted(participant, muted_track, frame["muted"], notify_publisher=False)
            self.ok(req)
        elif kind == "set_quality":
            if room.find_track(frame["track_sid"]) is None:
                raise FrameError("not_found", "no such track", req)
            self.ok(req)  # single-layer tracks: every quality is the one layer
        elif kind == "refresh":
            self._refresh(frame)
        elif kind == "update_metadata":
            self._update_metadata(frame, participant, room)
        else:
            raise FrameError("invalid_message", f"{kind} is only valid as the first frame", req)

    def _update_metadata(self, frame: dict[str, Any], participant: Participant, room: Room) -> None:
        req = frame.get("req")
        decision = may_update_own_metadata(participant.grant)
        if not decision.allowed:
            self.state.audit.record(
                "metadata_refused", room=room.name, identity=participant.identity,
                reason=decision.reason,
            )  # fmt: skip
            raise FrameError("forbidden", "you may not update your metadata", req)
        limits = self.state.config.limits
        name = frame.get("name", participant.name)
        metadata = frame.get("metadata", participant.metadata)
        if len(name.encode()) > limits.max_name_bytes:
            raise FrameError("invalid_message", f"name over {limits.max_name_bytes} bytes", req)
        if len(metadata.encode()) > limits.max_metadata_bytes:
            raise FrameError(
                "invalid_message", f"metadata over {limits.max_metadata_bytes} bytes", req
            )
        participant.name, participant.metadata = name, metadata
        room.participant_updated(participant)
        self.ok(req)

    def _add_track(self, frame: dict[str, Any], participant: Participant, room: Room) -> None:
        req = frame.get("req")
        kind = frame["kind"]
        source = frame.get("source", DEFAULT_SOURCE[kind])
        if SOURCE_KIND[source] != kind:
            raise FrameError("invalid_message", f"source {source} cannot carry {kind}", req)
        decision = may_publish_track(participant.grant, kind, source)
        if not decision.allowed:
            self.state.audit.record(
                "publish_refused", room=room.name, identity=participant.identity,
                kind=kind, source=source, reason=decision.reason,
            )  # fmt: skip
            raise FrameError("forbidden", "you may not publish this track", req)
        if participant.track_by_cid(frame["cid"]) is not None:
            raise FrameError("conflict", "a track with this cid was already added", req)
        if self.state.node_tracks_full():
            raise FrameError("limit_exceeded", "the server has its maximum of tracks", req)
        limits = room.limits
        if limits.max_tracks_per_participant and (
            len(participant.tracks) >= limits.max_tracks_per_participant
        ):
            raise FrameError("limit_exceeded", "too many tracks for this participant", req)
        if limits.max_publishers and not participant.tracks:
            publishers = sum(1 for p in room.participants.values() if p.tracks)
            if publishers >= limits.max_publishers:
                raise FrameError("limit_exceeded", "the room has its maximum of publishers", req)
        track = PublishedTrack(
            sid=new_sid("TR"),
            cid=frame["cid"],
            kind=kind,
            source=source,
            name=frame.get("name", ""),
            publisher_sid=participant.sid,
            muted=frame.get("muted", False),
            keyframe_interval=self.state.config.rtc.keyframe_interval,
        )
        participant.add_track(track)
        self.reply(req, {"type": "track_published", "cid": track.cid, "track": track.info()})

    def _subscribe(self, frame: dict[str, Any], participant: Participant, room: Room) -> None:
        req = frame.get("req")
        wanted = frame.get("subscribe", True)
        decision = may_subscribe(participant.grant)
        if wanted and not decision.allowed:
            self.state.audit.record(
                "subscribe_refused", room=room.name, identity=participant.identity,
                reason=decision.reason,
            )  # fmt: skip
            raise FrameError("forbidden", "you may not subscribe", req)
        found = []
        for track_sid in frame["track_sids"]:
            owner = room.find_track(track_sid)
            if owner is None or owner[0] is participant or owner[0].hidden or not owner[1].bound:
                raise FrameError("not_found", f"no such track {track_sid[:64]}", req)
            found.append(owner[1])
        limit = room.limits.max_subscriptions_per_participant
        if wanted and limit:
            new = sum(1 for t in found if t.sid not in participant.subscriptions)
            if len(participant.subscriptions) + new > limit:
                raise FrameError("limit_exceeded", "too many subscriptions", req)
        for track in found:
            if wanted:
                participant.subscribe(track)
            else:
                participant.unsubscribe(track.sid)
        self.ok(req)
