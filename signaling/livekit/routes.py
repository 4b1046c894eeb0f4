"""The HTTP side of LiveKit compatibility: `/rtc/validate` and the Twirp RoomService."""

from __future__ import annotations

from aiohttp import web

from auth.tokens import TokenError
from signaling.admission import verify_token
from signaling.livekit.edge import Refusal, request_token
from signaling.netpolicy import client_ip, parse_networks
from signaling.state import ServerState


def add_livekit_routes(app: web.Application, state: ServerState) -> None:
    async def validate(request: web.Request) -> web.Response:
        return _validate(state, request)

    app.router.add_get("/rtc/validate", validate)
    from signaling.livekit.twirp import add_twirp_routes

    add_twirp_routes(app, state)


def _validate(state: ServerState, request: web.Request) -> web.Response:
    """Why a join would be refused, for the SDK to show (LiveKit's SDKs call it after a
    failed upgrade): 200 "success" for a token keyroom accepts, else 401 with the reason
    keyroom's clients are told (never the audit log's precise one)."""
    import time

    try:
        token = request_token(request)
        verify_token(state, token, time.time())
    except Refusal as refusal:
        return web.Response(status=refusal.status, text=refusal.text)
    except TokenError:
        peer = client_ip(request, parse_networks(state.config.server.trusted_proxies))
        state.audit.record("validate_refused", ip=peer)
        return web.Response(status=401, text="unauthorized")
    return web.Response(text="success")
