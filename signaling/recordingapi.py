"""The recordings part of the admin API (docs/recording.md): start, stop, list, download.

Every call needs `roomRecord` for the recording's room (the token's room when it names one) and
is audited like any admin call; downloads are audited again with the recording and its outcome.
Ids are checked against the id pattern before any file is touched (sfu/recording/manager.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from auth.policy import Decision, may_record
from auth.tokens import Claims
from sfu.recording.manager import RecordingManager, RecordingRefused
from sfu.room import Room
from signaling.state import ServerState

# The admin API's wrapper answers a RecordingRefused like its own errors (code -> status).
Refused = RecordingRefused


class Gate(Protocol):
    """What the admin API lends: its state and its audited allow-or-refuse."""

    state: ServerState

    def allow(self, request: web.Request, claims: Claims, decision: Decision) -> None: ...


class RecordingApi:
    def __init__(
        self, api: Gate, read_body: Callable[[web.Request], Awaitable[dict[str, Any]]]
    ) -> None:
        self.api = api
        self.read_body = read_body

    @property
    def manager(self) -> RecordingManager:
        manager = self.api.state.recordings
        if manager is None:
            raise Refused("unavailable", "recording is not available on this server")
        return manager

    def _room(self, request: web.Request, claims: Claims) -> str:
        name = request.match_info["room"]
        self.api.allow(request, claims, may_record(claims.grant, name))
        return name

    def _live_room(self, name: str) -> Room:
        room = self.api.state.rooms.get(name)
        if room is None:
            raise Refused("not_found", "no such room")
        return room

    def _by(self, request: web.Request, claims: Claims) -> dict[str, Any]:
        return {"ip": request["admin_ip"], "identity": claims.identity, "key_id": claims.key_id}

    async def start(self, request: web.Request, claims: Claims) -> web.Response:
        name = self._room(request, claims)
        room = self._live_room(name)
        tracks = (await self.read_body(request)).get("tracks")
        if tracks is not None and (
            not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks)
        ):
            raise Refused("invalid_message", "tracks must be a list of track sids")
        by = self._by(request, claims)
        try:
            recording = self.manager.start(room, tracks, by)
        except RecordingRefused as e:
            self.api.state.audit.record("recording_refused", room=name, reason=e.message, **by)
            raise Refused(e.code, e.message) from None
        return web.json_response({"recording": self.manager.describe(recording.id)}, status=201)

    async def listing(self, request: web.Request, claims: Claims) -> web.Response:
        name = self._room(request, claims)
        return web.json_response({"recordings": self.manager.listing(name)})

    def _owned(self, request: web.Request, room: str) -> dict[str, Any]:
        """The recording named in the path, if it is `room`'s (else not found: no probing)."""
        try:
            self.manager.path_of(request.match_info["id"])
        except RecordingRefused:
            raise
        info = self.manager.describe(request.match_info["id"])
        if info is None or info["room"] != room:
            raise Refused("not_found", "no such recording")
        return info

    async def stop(self, request: web.Request, claims: Claims) -> web.Response:
        name = self._room(request, claims)
        info = self._owned(request, name)
        self.manager.stop(info["id"], self._by(request, claims))
        return web.Response(status=204)

    async def download(self, request: web.Request, claims: Claims) -> web.StreamResponse:
        name = self._room(request, claims)
        return self._send(request, claims, name)

    async def download_any(self, request: web.Request, claims: Claims) -> web.StreamResponse:
        """`GET /api/recordings/{id}` (PROTOCOL 4): the room comes from the file's header; with
        no such file, from the token (so a missing file and a refusal look alike)."""
        info = self.manager.describe(request.match_info["id"])
        room = str(info["room"]) if info is not None else claims.room or ""
        self.api.allow(request, claims, may_record(claims.grant, room))
        return self._send(request, claims, room)

    def _send(self, request: web.Request, claims: Claims, room: str) -> web.StreamResponse:
        by = self._by(request, claims)
        rid = request.match_info["id"]
        try:
            info = self._owned(request, room)
        except Refused as e:
            self.api.state.audit.record(
                "recording_download", room=room, recording=rid[:64], outcome=e.code, **by
            )
            raise
        self.api.state.audit.record(
            "recording_download", room=room, recording=rid, outcome="sent", **by
        )
        return web.FileResponse(
            self.manager.path_of(info["id"]),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{info["id"]}.krec"',
            },
        )


def recording_routes(
    api: Gate, read_body: Callable[[web.Request], Awaitable[dict[str, Any]]]
) -> list[tuple[str, str, Any]]:
    rec = RecordingApi(api, read_body)
    return [
        ("POST", "/api/rooms/{room}/recordings", rec.start),
        ("GET", "/api/rooms/{room}/recordings", rec.listing),
        ("GET", "/api/rooms/{room}/recordings/{id}", rec.download),
        ("DELETE", "/api/rooms/{room}/recordings/{id}", rec.stop),
        ("GET", "/api/recordings/{id}", rec.download_any),
    ]
