"""Shared set-up of the LiveKit SDK tests: a veth pair for libwebrtc, a keyroom server whose
media address is on it, tokens minted by LiveKit's own `livekit-api`, and a TCP relay that
cuts an SDK's signaling socket."""

from __future__ import annotations

import asyncio
import contextlib
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


class TcpRelay:
    """A TCP relay on 127.0.0.1 to the server's signaling port, between an SDK and keyroom: the
    test cuts it (every open connection reset, both ways: a lost network) and can hold new
    connections (accepted, not forwarded) until it lets them through."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.passing = asyncio.Event()
        self.passing.set()
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.passing.wait()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self._open.discard(end)
                end.transport.abort()

    def cut(self, *, hold: bool = False) -> None:
        if hold:
            self.passing.clear()
        for end in list(self._open):
            end.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
