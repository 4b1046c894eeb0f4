"""LiveKit's Twirp RoomService over keyroom's admin logic (placeholder until implemented)."""

from __future__ import annotations

from aiohttp import web

from signaling.state import ServerState


def add_twirp_routes(app: web.Application, state: ServerState) -> None:
    return None
