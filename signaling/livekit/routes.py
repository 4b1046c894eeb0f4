"""The HTTP side of LiveKit compatibility: `/rtc/validate` and the Twirp RoomService."""

from __future__ import annotations

import time

from aiohttp import web

from auth.tokens import TokenError
from signaling.admission import verify_token
from signaling.livekit.edge import request_token
from signaling.livekit.resume import Refusal
from signaling.livekit.twirp import add_twirp_routes
from signaling.netpolicy import client_ip, origin_allowed, parse_networks
from signaling.state import ServerState


def add_livekit_routes(app: web.Application, state: ServerState) -> None:
    async def validate(request: web.Request) -> web.Response:
        return _cors(state, request, _validate(state, request))

    async def no_v1(request: web.Request) -> web.Response:
        # The JS SDK tries `/rtc/v1` (one peer connection) first and, when its socket fails,
        # asks here: a 404 makes it fall back to `/rtc`.
        return _cors(state, request, web.Response(status=404, text="v1 signaling not supported"))

    app.router.add_get("/rtc/validate", validate)
    app.router.add_get("/rtc/v1/validate", no_v1)
    add_twirp_routes(app, state)


def _cors(state: ServerState, request: web.Request, response: web.Response) -> web.Response:
    """The JS SDK fetches these from the app's page: allowed origins may read the answer."""
    origin = request.headers.get("Origin")
    if origin is not None and origin_allowed(request, state.config.server.allowed_origins):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


def _validate(state: ServerState, request: web.Request) -> web.Response:
    """Why a join would be refused, for the SDK to show (LiveKit's SDKs call it after a
    failed upgrade): 200 "success" for a token keyroom accepts, else 401 with the reason
    keyroom's clients are told (never the audit log's precise one)."""
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
