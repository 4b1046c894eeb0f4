"""Admin HTTP API (PROTOCOL section 4): bearer JWTs, room-scoped admin, every call audited."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from auth import displaytext
from auth.grants import VideoGrant, check_room_name
from auth.policy import (
    Decision,
    may_admin_room,
    may_create_room,
    may_list_rooms,
    updated_grant,
)
from auth.tokens import Claims, TokenError
from sfu.config import ConfigError, LimitsConfig, limits_with, room_limits
from sfu.config.ceiling import loosened
from sfu.config.diff import limit_changes
from sfu.participant import Participant
from sfu.recording.manager import RecordingRefused
from sfu.room import Room
from signaling import adminops
from signaling.admission import charge_failure
from signaling.netpolicy import client_ip, parse_networks
from signaling.recordingapi import recording_routes
from signaling.revocation import add_revocation_routes
from signaling.state import ServerState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY_BYTES = 64 * 1024
STATUS = {
    "invalid_message": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "rate_limited": 429,
    "server_full": 503,
    "unavailable": 503,
}


class AdminError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_response(code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=STATUS[code])


def add_admin_routes(app: web.Application, state: ServerState) -> None:
    api = AdminApi(state)
    routes = [
        ("GET", "/api/rooms", api.list_rooms),
        ("POST", "/api/rooms", api.create_room),
        ("GET", "/api/rooms/{room}", api.get_room),
        ("PATCH", "/api/rooms/{room}", api.update_room),
        ("DELETE", "/api/rooms/{room}", api.delete_room),
        ("GET", "/api/rooms/{room}/participants", api.list_participants),
        ("DELETE", "/api/rooms/{room}/participants/{identity}", api.remove_participant),
        ("PATCH", "/api/rooms/{room}/participants/{identity}", api.update_participant),
        ("POST", "/api/rooms/{room}/participants/{identity}/tracks/{track}/mute", api.mute_track),
        *recording_routes(api, read_body),
        ("POST", "/api/node/drain", api.drain_node),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, api.wrap(handler))
    add_revocation_routes(app, state, api.wrap, api._allow)  # noqa: SLF001
    # Anything else under /api answers in the API's error format, not aiohttp's text page.
    app.router.add_route("*", "/api/{tail:.*}", api.unknown)


class AdminApi:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def wrap(
        self, handler: Callable[[web.Request, Claims], Awaitable[web.StreamResponse]]
    ) -> Handler:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            try:
                claims = self._authenticate(request)
                return await handler(request, claims)
            except (AdminError, RecordingRefused) as exc:
                return error_response(exc.code, exc.message)

        return endpoint

    def _authenticate(self, request: web.Request) -> Claims:
        state, now = self.state, time.time()
        # The address behind trusted proxies, as for joins: else one proxy is every client.
        ip = client_ip(request, parse_networks(state.config.server.trusted_proxies))
        request["admin_ip"] = ip
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        try:
            if scheme.lower() != "bearer" or not token:
                raise TokenError("no_bearer_token")
            claims = state.verifier.verify(token.strip(), now)
            if state.store.key_revoked(claims.key_id):
                raise TokenError("key_revoked")
            if claims.identity and state.store.is_revoked(
                claims.room or "", claims.identity, claims.issued_at, now
            ):
                # A revoked identity's admin token is revoked with it.
                raise TokenError("revoked")
        except TokenError as exc:
            self._refuse(request, exc.reason, now)
            raise AdminError("unauthorized", "unauthorized") from None
        return claims

    def _refuse(self, request: web.Request, reason: str, now: float, **fields: Any) -> None:
        """Audit a refused call and charge its address; a braked address gets 429 instead.
        Valid calls never meet the brake: neighbours behind the same address are not punished."""
        ip = request["admin_ip"]
        self.state.audit.record(
            "admin_refused", ip=ip, path=_route(request), reason=reason, **fields
        )
        if charge_failure(self.state, ip, now):
            raise AdminError("rate_limited", "too many attempts")

    def authorize(self, request: web.Request, claims: Claims, decision: Decision) -> None:
        """For routes added beside this API (signaling/liveconfig.py): as `_allow`."""
        self._allow(request, claims, decision)

    def _allow(self, request: web.Request, claims: Claims, decision: Decision) -> None:
        """Refuse (audited, counted by the brake) or audit the call as allowed."""
        state, now = self.state, time.time()
        fields = _call_fields(request, claims)
        if not decision.allowed:
            self._refuse(request, decision.reason, now, **fields)
            raise AdminError("forbidden", "this token does not grant that")
        state.audit.record(
            "admin_call", ip=request["admin_ip"], path=_route(request), reason=decision.reason,
            **fields,
        )  # fmt: skip

    def allow(self, request: web.Request, claims: Claims, decision: Decision) -> None:
        self._allow(request, claims, decision)

    def _under_ceiling(
        self, request: web.Request, claims: Claims, room: str, limits: LimitsConfig
    ) -> None:
        """Refuse limits looser than the operator's for this room (audited, braked): a room
        admin may tighten the operator's policy, never lift it."""
        looser = [
            f"limits.{name}" for name in loosened(room_limits(self.state.config, room), limits)
        ]
        if looser:
            names = ", ".join(looser)
            reason = f"would loosen the operator's {names}"
            self._refuse(request, reason, time.time(), **_call_fields(request, claims))
            raise AdminError("forbidden", f"{names}: looser than the operator allows")

    def _room(self, request: web.Request, claims: Claims) -> Room:
        name = request.match_info["room"]
        self._allow(request, claims, may_admin_room(claims.grant, name))
        room = self.state.rooms.get(name)
        if room is None:
            raise AdminError("not_found", "no such room")
        return room

    def _participant(self, request: web.Request, room: Room) -> Participant:
        participant = room.by_identity(request.match_info["identity"])
        if participant is None:
            raise AdminError("not_found", "no such participant in this room")
        return participant

    # -- rooms ----------------------------------------------------------------------------------

    async def list_rooms(self, request: web.Request, claims: Claims) -> web.Response:
        self._allow(request, claims, may_list_rooms(claims.grant))
        return web.json_response({"rooms": [r.info() for r in self.state.rooms.rooms.values()]})

    async def create_room(self, request: web.Request, claims: Claims) -> web.Response:
        self._allow(request, claims, may_create_room(claims.grant))
        body = await read_body(request)
        try:
            name = check_room_name(body.get("name"), "name")
        except ValueError as e:
            raise AdminError("invalid_message", str(e)) from None
        metadata = self._metadata(body.get("metadata", ""))
        limits = self._limits(room_limits(self.state.config, name), body.get("limits", {}))
        self._under_ceiling(request, claims, name, limits)
        if self.state.rooms.get(name) is not None:
            raise AdminError("conflict", "the room exists")
        if self.state.node_full(new_room=True):
            raise AdminError("server_full", "the server is full")
        room = self.state.rooms.create(name, limits=limits, metadata=metadata)
        return web.json_response({"room": room.info()}, status=201)

    async def get_room(self, request: web.Request, claims: Claims) -> web.Response:
        room = self._room(request, claims)
        return web.json_response(
            {
                "room": room.info(),
                "participants": [admin_view(p) for p in room.participants.values()],
            }
        )

    async def update_room(self, request: web.Request, claims: Claims) -> web.Response:
        room = self._room(request, claims)
        body = await read_body(request)
        limits = self._limits(room.limits, body.get("limits", {}))
        self._under_ceiling(request, claims, room.name, limits)
        metadata = self._metadata(body.get("metadata", room.metadata))
        self.state.audit.record(
            "room_updated", room=room.name, by=claims.identity, key_id=claims.key_id,
            limits=limit_changes(room.limits, limits), metadata_changed=metadata != room.metadata,
        )  # fmt: skip
        # Lower limits refuse newcomers; nobody inside is removed by a PATCH.
        room.limits, room.metadata = limits, metadata
        room.broadcast({"type": "room_updated", "room": room.info()})
        return web.json_response({"room": room.info()})

    async def delete_room(self, request: web.Request, claims: Claims) -> web.Response:
        room = self._room(request, claims)
        await self.state.close_room(room, "room_closed")
        return web.Response(status=204)

    # -- participants ---------------------------------------------------------------------------

    async def list_participants(self, request: web.Request, claims: Claims) -> web.Response:
        room = self._room(request, claims)
        return web.json_response(
            {"participants": [admin_view(p) for p in room.participants.values()]}
        )

    async def remove_participant(self, request: web.Request, claims: Claims) -> web.Response:
        room = self._room(request, claims)
        identity = request.match_info["identity"]
        revoke = request.query.get("revoke", "").lower() in ("1", "true", "yes")
        if not await adminops.remove_identity(
            self.state, room, identity, revoke=revoke, claims=claims
        ):
            raise AdminError("not_found", "no such participant in this room")
        return web.Response(status=204)

    async def update_participant(self, request: web.Request, claims: Claims) -> web.Response:
        room = self._room(request, claims)
        participant = self._participant(request, room)
        body = await read_body(request)
        grant: VideoGrant | None = None
        if "permissions" in body:
            try:
                grant = updated_grant(participant.grant, body["permissions"])
            except ValueError as e:
                raise AdminError("invalid_message", str(e)) from None
        name = body.get("name", participant.name)
        if not isinstance(name, str):
            raise AdminError("invalid_message", "name must be a string")
        why = displaytext.check(name, self.state.config.limits.max_name_bytes)
        if why is not None:
            raise AdminError("invalid_message", f"name {why}")
        metadata = self._metadata(body.get("metadata", participant.metadata))
        adminops.update_participant(
            self.state, room, participant, name=name, metadata=metadata, grant=grant,
            claims=claims,
        )  # fmt: skip
        return web.json_response({"participant": admin_view(participant)})

    async def mute_track(self, request: web.Request, claims: Claims) -> web.Response:
        room = self._room(request, claims)
        participant = self._participant(request, room)
        track = participant.tracks.get(request.match_info["track"])
        if track is None:
            raise AdminError("not_found", "no such track")
        muted = (await read_body(request)).get("muted", True)
        if not isinstance(muted, bool):
            raise AdminError("invalid_message", "muted must be true or false")
        adminops.mute_track(self.state, room, participant, track, muted)
        return web.Response(status=204)

    async def drain_node(self, request: web.Request, claims: Claims) -> web.Response:
        """Stop placing new rooms on this node (docs/cluster.md); node-wide, like creating."""
        self._allow(request, claims, may_create_room(claims.grant))
        if self.state.cluster is None:
            raise AdminError("not_found", "this node is not in a cluster")
        self.state.cluster.drain()
        return web.json_response({"draining": True}, status=202)

    async def unknown(self, request: web.Request) -> web.Response:
        return error_response("not_found", f"no API endpoint {request.method} {request.path}")

    # -- checks ---------------------------------------------------------------------------------

    def _metadata(self, value: Any) -> str:
        if not isinstance(value, str):
            raise AdminError("invalid_message", "metadata must be a string")
        why = displaytext.check(value, self.state.config.limits.max_metadata_bytes, metadata=True)
        if why is not None:
            raise AdminError("invalid_message", f"metadata {why}")
        return value

    def _limits(self, base: Any, overrides: Any) -> Any:
        try:
            return limits_with(base, overrides, "limits")
        except ConfigError as e:
            raise AdminError("invalid_message", str(e)) from None


def admin_view(participant: Participant) -> dict[str, Any]:
    """ParticipantInfo plus what an operator needs: permissions, hidden flag, connection state,
    per-track packet counters."""
    info = participant.info(with_permissions=True)
    info["hidden"] = participant.hidden
    info["connection"] = participant.connection_state()
    # Whether its token is bound to a client key it proved, and the client kind it proved.
    info["bound"] = participant.bound_client is not None
    info["client_kind"] = participant.bound_client
    info["connection_quality"] = participant.connection_quality()
    for track in info["tracks"]:
        published = participant.tracks[track["sid"]]
        c = published.counters
        track.update(
            packets_in=c.packets_in,
            bytes_in=c.bytes_in,
            packets_out=c.packets_out,
            bitrate=published.bitrate,
            subscribers=len(published.down_tracks),
        )
    return info


def _call_fields(request: web.Request, claims: Claims) -> dict[str, Any]:
    """What the audit records of an admin call name besides the address and the route."""
    return {
        "method": request.method,
        "room": request.match_info.get("room"),
        "key_id": claims.key_id,
        "identity": claims.identity,
    }


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


async def read_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise AdminError("invalid_message", "body too large")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise AdminError("invalid_message", "body too large")
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise AdminError("invalid_message", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise AdminError("invalid_message", "body must be a JSON object")
    return body
