"""This node's membership of the cluster: its heartbeat in the registry, room placement, the
shared access-control replica, the bus, and drain.

Nothing here is on the media path: Redis is asked at a join (one round trip), at an admin
call, at each heartbeat and on a decision (revoke, spent token id, refused attempt). When Redis
cannot be reached, rooms already here keep running and joins that need the cluster are refused
with `server_full`; the heartbeat keeps trying and, when Redis answers again (perhaps restarted
empty), this node registers again and re-publishes what it knows (revocations, its rooms).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, RedisError

from auth.tokens import TokenError
from sfu.config import Config
from sfu.participant import Participant
from sfu.room import Room
from sfu.tasks import TaskSet
from signaling.cluster.load import LoadMeter
from signaling.cluster.names import Names
from signaling.cluster.scripts import CLAIM, PLACE, RELEASE
from signaling.cluster.shared import ClusterAuthStore, ClusterBrake
from signaling.messages import Error, Join, Redirect, ServerMessage
from signaling.state import ServerState

log = logging.getLogger("keyroom.cluster")

# How long a join waits for Redis before it is refused: a stalled Redis must not hold sockets.
REDIS_TIMEOUT = 1.0
UNAVAILABLE = "cluster state unavailable; try again"

# What a failed Redis call raises: its own errors, a socket error, or our time limit.
REDIS_DOWN = (RedisError, OSError, TimeoutError)


def default_url(config: Config) -> str:
    """Where other nodes send this node's joins when `advertise_url` is unset: the listening
    address, or for a wildcard one (0.0.0.0, ::) the first media address."""
    server = config.server
    scheme = "wss" if server.tls_cert is not None else "ws"
    host = server.host
    if host in ("0.0.0.0", "::", "") and config.rtc.ips:
        host = config.rtc.ips[0]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{server.port}/rtc"


class ClusterNode:
    def __init__(self, state: ServerState, client: aioredis.Redis | None = None) -> None:
        cluster = state.config.cluster
        assert cluster.redis_url is not None
        self.state = state
        self.config = cluster
        self.names = Names(cluster.prefix)
        server = state.config.server
        self.node_id = cluster.node_id or f"{server.host}:{server.port}-{secrets.token_hex(3)}"
        self.url = cluster.advertise_url or default_url(state.config)
        self.redis = client or aioredis.Redis.from_url(
            cluster.redis_url,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            decode_responses=True,
        )
        self._place = self.redis.register_script(PLACE)
        self._release = self.redis.register_script(RELEASE)
        self._claim = self.redis.register_script(CLAIM)
        self.draining = False
        self.healthy = False
        self._closed = False
        self._boot: str | None = None
        self._meter = LoadMeter(cluster.capacity)
        self._tasks = TaskSet("cluster")
        self._beat = asyncio.Event()
        self._room_gone = asyncio.Event()
        self._held: set[str] = set()  # rooms started here whose placement is not yet released
        self.on_drained: Callable[[], None] = lambda: None
        store, brake = state.store, state.brake
        if isinstance(store, ClusterAuthStore):
            store.replica = self
        if isinstance(brake, ClusterBrake):
            brake.replica = self
        state.rooms.listeners.append(self._on_room_event)

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks.spawn(self._heartbeat_loop())
        self._tasks.spawn(self._bus_loop())

    async def close(self) -> None:
        """Leave the registry (rooms here are placed again on their next join) and stop."""
        self.state.rooms.listeners.remove(self._on_room_event)
        self._closed = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REDIS_TIMEOUT * 2):  # a stuck Redis call must not hang
                await self._tasks.close()

        def leave(pipe: Pipeline) -> None:
            for room in self._held | set(self.state.rooms.rooms):
                pipe.evalsha(self._release.sha, 1, self.names.room(room), self.node_id)
            pipe.delete(self.names.node(self.node_id))
            pipe.zrem(self.names.nodes, self.node_id)

        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self._execute(leave)
        except REDIS_DOWN:
            log.warning("could not leave the cluster registry: Redis unreachable")
        await self.redis.aclose()

    async def _execute(self, build: Callable[[Pipeline], None]) -> list[Any]:
        """One round trip of the commands `build` queues. Scripts run by their hash: a Redis
        that restarted empty no longer knows them, so they are loaded and the batch sent again
        (its commands are all idempotent)."""
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            build(pipe)
            try:
                return list(await pipe.execute())
            except NoScriptError:
                if attempt:
                    raise
                for script in (self._place, self._release, self._claim):
                    await self.redis.script_load(script.script)
        raise AssertionError("unreachable")

    # -- heartbeat ------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while not self._closed:
            try:
                async with asyncio.timeout(REDIS_TIMEOUT * 2):
                    await self.heartbeat(time.time())
                if not self.healthy:
                    log.info("cluster: registered in Redis as %s (%s)", self.node_id, self.url)
                self.healthy = True
            except REDIS_DOWN as exc:
                if self.healthy:
                    log.warning("cluster: Redis unreachable (%s); retrying", exc)
                self.healthy = False
                self._boot = None  # whatever Redis holds when it is back, copy everything
            self._beat.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.heartbeat):
                    await self._beat.wait()

    def beat_now(self) -> None:
        self._beat.set()

    async def heartbeat(self, now: float) -> None:
        """Refresh this node's entry (expiring after `node_ttl`) and, if Redis lost its data or
        this node lost Redis, publish again what this node knows."""
        state = self.state
        load = self._meter.sample(
            now=now, packets_out=state.stats.packets_out, cpu=time.process_time(),
            participants=state.rooms.participant_count(), rooms=len(state.rooms.rooms),
            tracks=state.stats.tracks,
        )  # fmt: skip
        fields: dict[Any, Any] = dict(load)
        fields["url"], fields["region"] = self.url, self.config.region
        fields["capacity"] = str(self.config.capacity)
        fields["draining"] = "1" if self.draining else "0"
        key = self.names.node(self.node_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, int(self.config.node_ttl * 1000))
        pipe.zadd(self.names.nodes, {self.node_id: float(load["load"])})
        pipe.set(self.names.boot, secrets.token_hex(8), nx=True)
        pipe.get(self.names.boot)
        boot = (await pipe.execute())[-1]
        if boot != self._boot:
            await self.resync(now)
            self._boot = boot

    async def resync(self, now: float) -> None:
        """Redis is new to this node: claim the rooms held here, then merge revocations both
        ways (each node keeps them in SQLite, so a Redis restarted empty forgets none)."""
        store = self.state.store
        assert isinstance(store, ClusterAuthStore)

        def publish(pipe: Pipeline) -> None:
            for room in self.state.rooms.rooms:
                pipe.evalsha(self._claim.sha, 1, self.names.room(room), self.node_id)
            for room, identity, revoked_at, expires_at in store.revocations(now):
                key = self.names.revoked(room, identity)
                pipe.set(key, repr(revoked_at), pxat=int(expires_at * 1000), nx=True)

        await self._execute(publish)
        async for key in self.redis.scan_iter(match=self.names.revoked_prefix + "*", count=500):
            await self._copy_revocation(key, now)
        log.info("cluster: state synchronised with Redis")

    async def _copy_revocation(self, key: str, now: float) -> None:
        pair = self.names.revoked_pair(key)
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        value, ttl = await pipe.execute()
        if pair is None or value is None or ttl is None or ttl <= 0:
            return
        store = self.state.store
        assert isinstance(store, ClusterAuthStore)
        store.copy_revocation(pair[0], pair[1], float(value), now + ttl / 1000)

    # -- joins ----------------------------------------------------------------------------------

    async def route(self, join: Join, wall: float) -> ServerMessage | None:
        """None: admit here (the usual checks follow). Else the first frame's answer: a
        redirect to the room's node, or a refusal when the cluster cannot say where it is."""
        state = self.state
        try:
            claims = state.verifier.verify_join(join.token, wall)
        except TokenError:
            return None  # refused here, with the audit entry and the brake's charge
        room, identity = claims.room or "", claims.identity or ""
        here = state.rooms.get(room) is not None
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                owner = await self._lookup(room, identity, claims.jti, place=not here, now=wall)
        except REDIS_DOWN:
            if here:
                return None  # a running room needs nothing from the cluster
            return Error(code="server_full", message=UNAVAILABLE, req=join.req)
        if here or owner is None or owner[0] == self.node_id:
            if owner is None and not here:
                return Error(code="server_full", message="no node can take the room", req=join.req)
            return None
        return Redirect(url=owner[1], req=join.req)

    async def _lookup(
        self, room: str, identity: str, jti: str | None, *, place: bool, now: float
    ) -> tuple[str, str] | None:
        """Where `room` lives (placing it, if asked) in the same round trip as the shared
        decisions about this token, which are copied here for admission to read."""

        def lookup(pipe: Pipeline) -> None:
            pipe.get(self.names.revoked(room, identity))
            pipe.pttl(self.names.revoked(room, identity))
            if jti is not None:
                pipe.pttl(self.names.jti(jti))
            if place:
                load = 1 / self.config.capacity
                pipe.evalsha(self._place.sha, 2, self.names.room(room), self.names.nodes,
                             self.names.node_prefix, load)  # fmt: skip

        results = await self._execute(lookup)
        store = self.state.store
        assert isinstance(store, ClusterAuthStore)
        revoked_at, ttl = results[0], results[1]
        if revoked_at is not None and ttl > 0:
            store.copy_revocation(room, identity, float(revoked_at), now + ttl / 1000)
        if jti is not None and results[2] > 0:
            store.copy_jti(jti, now + results[2] / 1000, now)
        if not place or not results[-1]:
            return None
        owner, url = results[-1]
        return str(owner), str(url)

    async def owner_url(self, room: str) -> tuple[str, str] | None:
        """The live node holding `room` (id, signaling URL), without placing it."""
        owner = await self.redis.get(self.names.room(room))
        if owner is None:
            return None
        url = await self.redis.hget(self.names.node(str(owner)), "url")
        return None if url is None else (str(owner), str(url))

    async def node_urls(self) -> dict[str, str]:
        """Every live node's signaling URL."""
        ids = [str(n) for n in await self.redis.zrange(self.names.nodes, 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for node_id in ids:
            pipe.hget(self.names.node(node_id), "url")
        urls = await pipe.execute()
        return {n: str(u) for n, u in zip(ids, urls, strict=True) if u is not None}

    # -- shared decisions (signaling/cluster/shared.py calls these) -----------------------------

    def revoked(self, room: str, identity: str, revoked_at: float, expires_at: float) -> None:
        self._tasks.spawn(self._publish_revocation(room, identity, revoked_at, expires_at))

    async def _publish_revocation(
        self, room: str, identity: str, revoked_at: float, expires_at: float
    ) -> None:
        message = {"op": "revoke", "from": self.node_id, "room": room, "identity": identity,
                   "revoked_at": revoked_at, "expires_at": expires_at}  # fmt: skip
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(self.names.revoked(room, identity), repr(revoked_at),
                     pxat=int(expires_at * 1000))  # fmt: skip
            pipe.publish(self.names.bus, json.dumps(message))
            await pipe.execute()
        except REDIS_DOWN:
            # Kept in SQLite: published at the next resync, when Redis answers again.
            log.warning("cluster: revocation of %r in %r not yet published", identity, room)
            self._boot = None

    def jti_used(self, jti: str, expires_at: float) -> None:
        self._tasks.spawn(self._spend(jti, expires_at))

    async def _spend(self, jti: str, expires_at: float) -> None:
        try:
            await self.redis.set(self.names.jti(jti), "1", pxat=int(expires_at * 1000))
        except REDIS_DOWN:
            log.warning("cluster: a spent single-use token id was not published")

    def failed(self, key: str, now: float) -> None:
        self._tasks.spawn(self._count_failure(key, now))

    async def _count_failure(self, key: str, now: float) -> None:
        brake = self.state.brake
        assert isinstance(brake, ClusterBrake)
        bucket = int(now // brake.window)
        name = self.names.brake(key, bucket)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(name)
            pipe.expire(name, int(brake.window * 2) + 1)
            count, _ = await pipe.execute()
        except REDIS_DOWN:
            return  # the local brake still counts
        brake.cluster_count(key, int(count), (bucket + 1) * brake.window)

    # -- bus ------------------------------------------------------------------------------------

    async def _bus_loop(self) -> None:
        while not self._closed:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.names.bus)
                async for message in pubsub.listen():
                    self.on_bus(message.get("data"), time.time())
            except REDIS_DOWN:
                pass
            finally:
                try:
                    await pubsub.aclose()
                except REDIS_DOWN:
                    pass
            # Missed messages are recovered by the resync the heartbeat runs on reconnection.
            self._boot = None
            await asyncio.sleep(self.config.heartbeat)

    def on_bus(self, data: Any, now: float) -> None:
        """One bus message; anything malformed is dropped with a log line."""
        try:
            message = json.loads(data)
            if message.get("from") == self.node_id:
                return
            if message.get("op") == "revoke":
                self._apply_revoke(
                    str(message["room"]), str(message["identity"]),
                    float(message["revoked_at"]), float(message["expires_at"]),
                )  # fmt: skip
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("cluster: malformed bus message dropped")

    def _apply_revoke(
        self, room_name: str, identity: str, revoked_at: float, expires_at: float
    ) -> None:
        """Bar the identity here too, and end it if it is in a room on this node."""
        store = self.state.store
        assert isinstance(store, ClusterAuthStore)
        store.copy_revocation(room_name, identity, revoked_at, expires_at)
        room = self.state.rooms.get(room_name)
        participant = None if room is None else room.by_identity(identity)
        if room is not None and participant is not None:
            self.state.audit.record("kicked", room=room_name, identity=identity, reason="revoked")
            self.state.spawn(self.state.end_participant(participant, room, "revoked"))

    # -- rooms and drain ------------------------------------------------------------------------

    def _on_room_event(
        self, event: str, room: Room, participant: Participant | None, track: Any
    ) -> None:
        if event == "room_started":
            # Usually placed here already; a room made by the admin API is claimed now.
            self._held.add(room.name)
            self._tasks.spawn(self._claim_room(room.name))
        elif event == "room_finished":
            self._tasks.spawn(self._forget_room(room.name))
            self._room_gone.set()
        elif event == "participant_left":
            self._room_gone.set()  # a draining node closes a room once it is empty

    async def _claim_room(self, name: str) -> None:
        def claim(pipe: Pipeline) -> None:
            pipe.evalsha(self._claim.sha, 1, self.names.room(name), self.node_id)

        try:
            [owner] = await self._execute(claim)
        except REDIS_DOWN:
            return  # claimed at the resync when Redis is back
        if owner != self.node_id:
            log.warning("cluster: room %r is also placed on node %s", name, owner)

    async def _forget_room(self, name: str) -> None:
        def release(pipe: Pipeline) -> None:
            pipe.evalsha(self._release.sha, 1, self.names.room(name), self.node_id)

        try:
            await self._execute(release)
        except REDIS_DOWN:
            return  # the next join sees a dead or unrelated owner and places the room again
        if self.state.rooms.get(name) is None:
            self._held.discard(name)

    def drain(self) -> None:
        """No new rooms here from now; the rooms here end when empty, or at the deadline with
        `server_shutdown`; then `on_drained` (the process exits)."""
        if self.draining:
            return
        log.info("cluster: draining (at most %.0f s)", self.config.drain_timeout)
        self.draining = True
        self.beat_now()
        self._tasks.spawn(self._drain(time.monotonic() + self.config.drain_timeout))

    async def _drain(self, deadline: float) -> None:
        state = self.state
        while time.monotonic() < deadline:
            self._room_gone.clear()
            for room in list(state.rooms.rooms.values()):
                if not room.participants:
                    state.rooms.remove(room)  # no empty_timeout wait: nobody comes back here
            if not state.rooms.rooms:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - time.monotonic()):
                    await self._room_gone.wait()
        self.on_drained()
