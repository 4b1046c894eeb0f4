"""LiveKit's Twirp RoomService (`POST /twirp/livekit.RoomService/<Method>`) over keyroom's admin
logic: the same bearer tokens and grants, the same audit records (`admin_call`,
`admin_refused`), the same effects (signaling/adminops.py). Bodies are protobuf
(`application/protobuf`, what livekit-api sends) or JSON; errors are Twirp's
`{"code", "msg"}` with Twirp's HTTP status.

Grants are keyroom's: roomAdmin for that room for calls on a room; roomList for ListRooms;
roomCreate for CreateRoom; DeleteRoom takes roomCreate (what livekit-api sends) or roomAdmin.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.protocol import models
from livekit.protocol import room as lkroom

from auth import displaytext
from auth.grants import check_room_name
from auth.policy import (
    Decision,
    may_admin_room,
    may_create_room,
    may_list_rooms,
    may_subscribe,
    updated_grant,
)
from auth.tokens import Claims
from sfu.config import room_limits
from sfu.participant import Participant
from sfu.room import Room
from signaling import adminops
from signaling.admin import MAX_BODY_BYTES, AdminApi, AdminError
from signaling.livekit import datapackets
from signaling.livekit.convert import SOURCE_ENUM, participant_info, room_info, track_info
from signaling.livekit.tracksettings import DECLARED
from signaling.state import ServerState

PATH = "/twirp/livekit.RoomService/{method}"
TWIRP_CODE = {
    "invalid_message": ("invalid_argument", 400),
    "unauthorized": ("unauthenticated", 401),
    "forbidden": ("permission_denied", 403),
    "not_found": ("not_found", 404),
    "conflict": ("already_exists", 409),
    "rate_limited": ("resource_exhausted", 429),
    "server_full": ("unavailable", 503),
    "unavailable": ("unavailable", 503),
}
JSON = "application/json"
PROTOBUF = "application/protobuf"


def twirp_error(code: str, message: str) -> web.Response:
    twirp, status = TWIRP_CODE.get(code, ("internal", 500))
    return web.json_response({"code": twirp, "msg": message}, status=status)


Call = Callable[["RoomService", web.Request, Claims, Any], Awaitable[Message]]


def add_twirp_routes(app: web.Application, state: ServerState) -> None:
    service = RoomService(state)
    app.router.add_route("*", PATH, service.endpoint)


class RoomService:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.admin = AdminApi(state)

    async def endpoint(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        entry = METHODS.get(method)
        if request.method != "POST" or entry is None:
            return web.json_response(
                {"code": "bad_route", "msg": f"no such method {request.method} {method[:64]}"},
                status=404,
            )
        kind, call = entry
        try:
            claims = self.admin._authenticate(request)  # noqa: SLF001
            body, binary = await _read_body(request, kind)
            reply = await call(self, request, claims, body)
        except AdminError as exc:
            return twirp_error(exc.code, exc.message)
        if binary:
            return web.Response(body=reply.SerializeToString(), content_type=PROTOBUF)
        data = json_format.MessageToDict(reply, preserving_proto_field_name=True)
        return web.json_response(data)

    def _allow(
        self, request: web.Request, claims: Claims, decision: Decision, room: str | None
    ) -> None:
        """Refuse (audited, braked) or audit the call, as keyroom's admin API does."""
        fields = {
            "method": request.match_info["method"], "room": room, "key_id": claims.key_id,
            "identity": claims.identity,
        }  # fmt: skip
        if not decision.allowed:
            self.admin._refuse(request, decision.reason, time.time(), **fields)  # noqa: SLF001
            raise AdminError("forbidden", "this token does not grant that")
        self.state.audit.record(
            "admin_call", ip=request["admin_ip"], path=request.path, reason=decision.reason,
            **fields,
        )  # fmt: skip

    def _room(self, request: web.Request, claims: Claims, name: str) -> Room:
        self._allow(request, claims, may_admin_room(claims.grant, name), name)
        room = self.state.rooms.get(name)
        if room is None:
            raise AdminError("not_found", "no such room")
        return room

    def _participant(self, room: Room, identity: str) -> Participant:
        participant = room.by_identity(identity)
        if participant is None:
            raise AdminError("not_found", "no such participant in this room")
        return participant

    # -- rooms ----------------------------------------------------------------------------------

    async def create_room(
        self, request: web.Request, claims: Claims, body: lkroom.CreateRoomRequest
    ) -> Message:
        self._allow(request, claims, may_create_room(claims.grant), body.name)
        try:
            name = check_room_name(body.name, "name")
        except ValueError as e:
            raise AdminError("invalid_message", str(e)) from None
        existing = self.state.rooms.get(name)
        if existing is not None:
            return room_info(existing.info())  # LiveKit's CreateRoom is idempotent
        overrides = {
            key: value
            for key, value in (
                ("empty_timeout", body.empty_timeout),
                ("max_participants", body.max_participants),
            )
            if value
        }
        limits = self.admin._limits(room_limits(self.state.config, name), overrides)  # noqa: SLF001
        self.admin._under_ceiling(request, claims, name, limits)  # noqa: SLF001
        metadata = self.admin._metadata(body.metadata)  # noqa: SLF001
        if self.state.node_full(new_room=True):
            raise AdminError("server_full", "the server is full")
        room = self.state.rooms.create(name, limits=limits, metadata=metadata)
        return room_info(room.info())

    async def list_rooms(
        self, request: web.Request, claims: Claims, body: lkroom.ListRoomsRequest
    ) -> Message:
        self._allow(request, claims, may_list_rooms(claims.grant), None)
        names = set(body.names)
        rooms = [
            room_info(r.info())
            for r in self.state.rooms.rooms.values()
            if not names or r.name in names
        ]
        return lkroom.ListRoomsResponse(rooms=rooms)

    async def delete_room(
        self, request: web.Request, claims: Claims, body: lkroom.DeleteRoomRequest
    ) -> Message:
        decision = may_create_room(claims.grant)
        if not decision.allowed:
            decision = may_admin_room(claims.grant, body.room)
        self._allow(request, claims, decision, body.room)
        room = self.state.rooms.get(body.room)
        if room is None:
            raise AdminError("not_found", "no such room")
        await self.state.close_room(room, "room_closed")
        return lkroom.DeleteRoomResponse()

    async def update_room_metadata(
        self, request: web.Request, claims: Claims, body: lkroom.UpdateRoomMetadataRequest
    ) -> Message:
        room = self._room(request, claims, body.room)
        room.metadata = self.admin._metadata(body.metadata)  # noqa: SLF001
        room.broadcast({"type": "room_updated", "room": room.info()})
        return room_info(room.info())

    # -- participants ---------------------------------------------------------------------------

    async def list_participants(
        self, request: web.Request, claims: Claims, body: lkroom.ListParticipantsRequest
    ) -> Message:
        room = self._room(request, claims, body.room)
        participants = [_info(p) for p in room.participants.values()]
        return lkroom.ListParticipantsResponse(participants=participants)

    async def get_participant(
        self, request: web.Request, claims: Claims, body: lkroom.RoomParticipantIdentity
    ) -> Message:
        room = self._room(request, claims, body.room)
        return _info(self._participant(room, body.identity))

    async def remove_participant(
        self, request: web.Request, claims: Claims, body: lkroom.RoomParticipantIdentity
    ) -> Message:
        room = self._room(request, claims, body.room)
        revoke = body.revoke_token_ts > 0
        if not await adminops.remove_identity(
            self.state, room, body.identity, revoke=revoke, claims=claims
        ):
            raise AdminError("not_found", "no such participant in this room")
        return lkroom.RemoveParticipantResponse()

    async def mute_published_track(
        self, request: web.Request, claims: Claims, body: lkroom.MuteRoomTrackRequest
    ) -> Message:
        room = self._room(request, claims, body.room)
        participant = self._participant(room, body.identity)
        track = participant.tracks.get(body.track_sid)
        if track is None:
            raise AdminError("not_found", "no such track")
        adminops.mute_track(self.state, room, participant, track, body.muted)
        return lkroom.MuteRoomTrackResponse(track=track_info(track.info()))

    async def update_participant(
        self, request: web.Request, claims: Claims, body: lkroom.UpdateParticipantRequest
    ) -> Message:
        room = self._room(request, claims, body.room)
        participant = self._participant(room, body.identity)
        grant = None
        if body.HasField("permission"):
            try:
                grant = updated_grant(participant.grant, _permissions(body.permission))
            except ValueError as e:
                raise AdminError("invalid_message", str(e)) from None
        name = body.name or participant.name
        why = displaytext.check(name, self.state.config.limits.max_name_bytes)
        if why is not None:
            raise AdminError("invalid_message", f"name {why}")
        metadata = self.admin._metadata(body.metadata or participant.metadata)  # noqa: SLF001
        adminops.update_participant(
            self.state, room, participant, name=name, metadata=metadata, grant=grant,
            claims=claims,
        )  # fmt: skip
        return _info(participant)

    async def update_subscriptions(
        self, request: web.Request, claims: Claims, body: lkroom.UpdateSubscriptionsRequest
    ) -> Message:
        room = self._room(request, claims, body.room)
        participant = self._participant(room, body.identity)
        sids = list(body.track_sids) + [s for t in body.participant_tracks for s in t.track_sids]
        found = []
        for sid in sids:
            owner = room.find_track(sid)
            if owner is None or owner[0] is participant or not owner[1].bound:
                raise AdminError("not_found", f"no such track {sid[:64]}")
            found.append(owner[1])
        if body.subscribe and not may_subscribe(participant.grant).allowed:
            raise AdminError("forbidden", "the participant may not subscribe")
        for track in found:
            if body.subscribe:
                participant.subscribe(track)
            else:
                participant.unsubscribe(track.sid)
        return lkroom.UpdateSubscriptionsResponse()

    async def send_data(
        self, request: web.Request, claims: Claims, body: lkroom.SendDataRequest
    ) -> Message:
        room = self._room(request, claims, body.room)
        if len(body.data) > room.limits.max_data_message_bytes:
            raise AdminError("invalid_message", "data too large")
        label = "_lossy" if body.kind == models.DataPacket.LOSSY else "_reliable"
        extra: Mapping[str, str] = {}
        try:
            payload = body.data.decode()
        except UnicodeDecodeError:  # binary: base64, as a LiveKit SDK's (docs/protocol.md 2.5)
            extra, payload = datapackets.BASE64, base64.b64encode(body.data).decode()
        # From the server: no sender identity, as LiveKit's server-sent data.
        message = orjson.dumps(
            {**extra, "from": "", "from_sid": "", "topic": body.topic, "payload": payload}
        )
        identities, sids = set(body.destination_identities), set(body.destination_sids)
        for participant in room.participants.values():
            if (identities or sids) and not (
                participant.identity in identities or participant.sid in sids
            ):
                continue
            if may_subscribe(participant.grant).allowed:
                participant.send_data(label, message)
        return lkroom.SendDataResponse()


def _info(participant: Participant) -> models.ParticipantInfo:
    info = participant.info(with_permissions=True)
    DECLARED.annotate(info, participant.tracks)  # the sizes LiveKit publishers declared
    return participant_info(info)


def _permissions(permission: models.ParticipantPermission) -> dict[str, Any]:
    """LiveKit's permission message as keyroom's live permission change; `hidden` and the
    rest a live change cannot touch are left out (kept as they are)."""
    sources = {value: name for name, value in SOURCE_ENUM.items()}
    changes: dict[str, Any] = {
        "canPublish": permission.can_publish,
        "canSubscribe": permission.can_subscribe,
        "canPublishData": permission.can_publish_data,
        "canUpdateOwnMetadata": permission.can_update_metadata,
    }
    if permission.can_publish_sources:
        changes["canPublishSources"] = [
            sources[s] for s in permission.can_publish_sources if s in sources
        ]
    return changes


async def _read_body(request: web.Request, kind: type[Message]) -> tuple[Message, bool]:
    """The request message, and whether the call speaks protobuf (else JSON)."""
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise AdminError("invalid_message", "body too large")
    binary = request.content_type == PROTOBUF
    message = kind()
    try:
        if binary:
            message.ParseFromString(raw)
        else:
            json_format.Parse(raw or b"{}", message, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError):
        raise AdminError("invalid_message", f"body is not a {kind.DESCRIPTOR.name}") from None
    return message, binary


METHODS: dict[str, tuple[type[Message], Call]] = {
    "CreateRoom": (lkroom.CreateRoomRequest, RoomService.create_room),
    "ListRooms": (lkroom.ListRoomsRequest, RoomService.list_rooms),
    "DeleteRoom": (lkroom.DeleteRoomRequest, RoomService.delete_room),
    "UpdateRoomMetadata": (lkroom.UpdateRoomMetadataRequest, RoomService.update_room_metadata),
    "ListParticipants": (lkroom.ListParticipantsRequest, RoomService.list_participants),
    "GetParticipant": (lkroom.RoomParticipantIdentity, RoomService.get_participant),
    "RemoveParticipant": (lkroom.RoomParticipantIdentity, RoomService.remove_participant),
    "MutePublishedTrack": (lkroom.MuteRoomTrackRequest, RoomService.mute_published_track),
    "UpdateParticipant": (lkroom.UpdateParticipantRequest, RoomService.update_participant),
    "UpdateSubscriptions": (lkroom.UpdateSubscriptionsRequest, RoomService.update_subscriptions),
    "SendData": (lkroom.SendDataRequest, RoomService.send_data),
}
