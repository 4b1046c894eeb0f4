"""The JSON-over-WebSocket edge of a session (`GET /rtc`, PROTOCOL section 2).

It reads text frames, decodes them to typed messages (signaling/codec.py), hands them to the
session logic with the time, writes what the session sends in order, closes with the session's
close codes, and drives the session's timer. A binary frame closes with 1003; a frame over the
configured size is refused by aiohttp with 1009 before it gets here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import WSMsgType, web

from sfu.clock import TimerDriver
from sfu.metrics import record_join
from signaling import codec
from signaling.codec import MessageError
from signaling.messages import ServerMessage
from signaling.protocol import CLOSE_JOIN_TIMEOUT, CLOSE_UNSUPPORTED
from signaling.session import Session
from signaling.state import ServerState

# How long the writer may take to flush what is queued once the session is over.
FLUSH_TIMEOUT = 2.0


class SocketOutput:
    """Frames leave in the order queued, even when queued from synchronous code; a close
    follows the frames queued before it."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._queue: asyncio.Queue[tuple[str, int | None] | None] = asyncio.Queue()

    def send(self, message: ServerMessage | Mapping[str, Any]) -> None:
        self._queue.put_nowait((codec.encode(message), None))

    def close(self, code: int) -> None:
        self._queue.put_nowait(("", code))

    def stop(self) -> None:
        self._queue.put_nowait(None)

    async def run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None or self.ws.closed:
                return
            text, close_code = item
            if close_code is not None:
                await self.ws.close(code=close_code)
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return


async def serve_socket(state: ServerState, ws: web.WebSocketResponse, peer: str) -> None:
    """Run one `/rtc` socket to its end."""
    loop = asyncio.get_running_loop()
    output = SocketOutput(ws)
    session = Session(state, peer, output)
    writer = asyncio.ensure_future(output.run())
    timer = TimerDriver(session)
    state.sessions.add(session)
    try:
        if await _start(session, ws, loop):
            timer.update()
            await _read(session, ws, timer, loop)
    finally:
        state.sessions.discard(session)
        timer.stop()
        await session.finish(loop.time())
        if not session.ending:
            output.stop()
        try:
            await asyncio.wait_for(writer, FLUSH_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError):
            writer.cancel()
        if not ws.closed:
            await ws.close()


async def _start(
    session: Session, ws: web.WebSocketResponse, loop: asyncio.AbstractEventLoop
) -> bool:
    """The first frame, within the join timeout; the join metrics count how it went."""
    started = loop.time()
    try:
        frame = await ws.receive(timeout=session.state.config.server.join_timeout)
    except TimeoutError:
        error = MessageError("invalid_message", "no join in time")
        session.refuse_first(error, CLOSE_JOIN_TIMEOUT)
        record_join(False, "timeout", loop.time() - started)
        return False
    if frame.type == WSMsgType.BINARY:
        await ws.close(code=CLOSE_UNSUPPORTED)
        return False
    if frame.type != WSMsgType.TEXT:
        return False
    started = loop.time()
    try:
        message = codec.decode(frame.data)
    except MessageError as exc:
        outcome = session.refuse_first(exc)
    else:
        outcome = session.start(message, started, time.time())
    record_join(outcome.accepted, outcome.reason, loop.time() - started)
    return outcome.accepted


async def _read(
    session: Session,
    ws: web.WebSocketResponse,
    timer: TimerDriver,
    loop: asyncio.AbstractEventLoop,
) -> None:
    async for frame in ws:
        if frame.type == WSMsgType.BINARY:
            await ws.close(code=CLOSE_UNSUPPORTED)
            return
        if frame.type != WSMsgType.TEXT:
            return
        now = loop.time()
        try:
            message = codec.decode(frame.data)
        except MessageError as exc:
            session.refuse(exc, now)
        else:
            await session.handle(message, now, time.time())
        timer.update()
        if session.ending:
            return
