"""Shared set-up of the LiveKit SDK tests: a veth pair for libwebrtc, a keyroom server whose
media address is on it, and tokens minted by LiveKit's own `livekit-api`."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from livekit import api

from loadtest import livekitnet
from tests.conftest import KEY_ID, SECRET, ServerProcess

METRICS_TOKEN = "metrics-token-0123456789"


def start_lk_server(tmp_path: Path, config: str = "") -> ServerProcess:
    """keyroom with its media on the veth pair (loadtest/livekitnet.py), `config` added."""
    process, port, log_path = livekitnet.start_server(
        tmp_path, f"{KEY_ID}={SECRET}", metrics_token=METRICS_TOKEN, config=config
    )
    return ServerProcess(port=port, process=process, log_path=log_path)


def lk_url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}"


def lk_token(identity: str, room: str = "lk-room", *, ttl: float = 600, **grants: Any) -> str:
    """A join token minted by livekit-api, as a LiveKit app's back end would."""
    video = api.VideoGrants(room_join=True, room=room, **grants)
    token = api.AccessToken(KEY_ID, SECRET).with_identity(identity).with_name(identity)
    return token.with_grants(video).with_ttl(datetime.timedelta(seconds=ttl)).to_jwt()


def room_api(server: ServerProcess) -> api.LiveKitAPI:
    """livekit-api's client (its RoomService is Twirp over HTTP), as an app's back end uses it."""
    return api.LiveKitAPI(f"http://127.0.0.1:{server.port}", KEY_ID, SECRET, failover=False)
