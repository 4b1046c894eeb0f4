"""Dev mode's front door: every visitor of the join link picks a name and gets a token of their own.

`--dev` serves loopback only with a throw-away key, so minting a token for whoever asks is the
point: one printed token shared by every tab would be one identity, and the second tab would be
refused as a duplicate. Never registered outside dev mode.
"""

from __future__ import annotations

import secrets
import time

from aiohttp import web

from auth import displaytext
from auth.tokens import mint_token
from sfu.config import Config

DEV_ROOM = "dev"
DEV_TOKEN_TTL = 3600.0
MAX_DEV_NAME = 64


def dev_token(config: Config, *, identity: str, name: str, room: str = DEV_ROOM) -> str:
    key_id, secret = next(iter(config.auth.keys.items()))
    return mint_token(
        key_id=key_id,
        secret=secret,
        identity=identity,
        room=room,
        ttl=DEV_TOKEN_TTL,
        now=time.time(),
        name=name,
    )


def add_dev_routes(app: web.Application, config: Config) -> None:
    async def token_handler(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_DEV_NAME:
            return web.json_response(
                {"error": f"name must be 1..{MAX_DEV_NAME} characters"}, status=400
            )
        problem = displaytext.problem(name)
        if problem:
            return web.json_response({"error": f"name {problem}"}, status=400)
        # A fresh identity per visitor: the same name twice is two people, not a duplicate.
        identity = f"dev-{secrets.token_hex(4)}"
        token = dev_token(config, identity=identity, name=name.strip())
        return web.json_response({"token": token, "identity": identity, "room": DEV_ROOM})

    app.router.add_post("/dev/token", token_handler)
