"""`GET /rtc/nonce`: a fresh nonce for a proof of possession (signaling/binding.py).

Open to anyone: a nonce is no secret, only fresh and single-use; the store behind it is bounded
(auth/nonces.py), so asking for many costs the server bounded memory and no disk.
"""

from __future__ import annotations

import time

from aiohttp import web

from signaling.state import ServerState

NONCE_PATH = "/rtc/nonce"


def add_nonce_route(app: web.Application, state: ServerState) -> None:
    async def nonce_handler(request: web.Request) -> web.Response:
        nonce = state.nonces.issue(time.time())
        return web.json_response(
            {"nonce": nonce, "expires_in": state.nonces.ttl},
            headers={"Cache-Control": "no-store"},
        )

    app.router.add_get(NONCE_PATH, nonce_handler)
