"""The JSON-over-WebSocket edge of a session (`GET /rtc`, PROTOCOL section 2).

It reads text frames, decodes them to typed messages (signaling/codec.py), hands them to the
session logic with the time, writes what the session sends in order, closes with the session's
close codes, and drives the session's timer. A binary frame closes with 1003; a frame over the
configured size is refused by aiohttp with 1009 before it gets here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import WSMsgType, web

from sfu.clock import TimerDriver
from sfu.metrics import record_join
from signaling import codec
from signaling.codec import MessageError
from signaling.messages import AnyClientMessage, Join, ServerMessage
from signaling.outbox import Outbox
from signaling.protocol import CLOSE_JOIN_TIMEOUT, CLOSE_UNSUPPORTED
from signaling.session import Outcome, Session
from signaling.state import ServerState

# How long the writer may take to flush what is queued once the session is over.
FLUSH_TIMEOUT = 2.0


class SocketOutput:
    """Frames leave in the order queued, even when queued from synchronous code; a close
    follows the frames queued before it. The queue is an `Outbox`: a client that does not read
    fills it, and `on_overflow` ends that client's session."""

    def __init__(
        self, ws: web.WebSocketResponse, outbox: Outbox, on_overflow: Callable[[], None]
    ) -> None:
        self.ws = ws
        self.outbox = outbox
        self._on_overflow = on_overflow
        self._close_code: int | None = None
        self._stopped = False
        self._wake = asyncio.Event()

    def send(self, message: ServerMessage | Mapping[str, Any]) -> None:
        if self.outbox.overflowed:
            return
        if not self.outbox.push(codec.encode(message)):
            self._on_overflow()
        self._wake.set()

    def close(self, code: int) -> None:
        if self._close_code is None:
            self._close_code = code
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        while not self.ws.closed:
            text = self.outbox.pop()
            if text is not None:
                try:
                    if isinstance(text, bytes):
                        await self.ws.send_bytes(text)
                    else:
                        await self.ws.send_str(text)
                except (ConnectionError, RuntimeError):
                    return
                continue
            if self._close_code is not None and not self.outbox.overflowed:
                await self.ws.close(code=self._close_code)
                return
            if self._stopped or self.outbox.overflowed:
                return
            self._wake.clear()
            await self._wake.wait()


async def serve_socket(
    state: ServerState,
    ws: web.WebSocketResponse,
    peer: str,
    abort: Callable[[], None],
    admitted: Callable[[], None] = lambda: None,
) -> None:
    """Run one `/rtc` socket to its end; `abort` drops the connection without a goodbye;
    `admitted` is called once the first frame is accepted (the socket is no longer pending)."""
    loop = asyncio.get_running_loop()
    server = state.config.server
    deadline = loop.time() + server.join_timeout

    def overflow() -> None:
        # The client does not read: a leave would queue behind what it never read. End the
        # session and drop the connection, so the writer stuck on it is released too.
        session.end("too_slow")
        abort()

    output = SocketOutput(ws, Outbox(server.max_outbox_frames, server.max_outbox_bytes), overflow)
    session = Session(state, peer, output)
    writer = asyncio.ensure_future(output.run())
    timer = TimerDriver(session)
    state.sessions.add(session)
    try:
        if await _start(session, ws, loop, deadline):
            admitted()
            timer.update()
            await _read(session, ws, timer, loop)
    finally:
        await end_socket(state, session, output, writer, timer, ws)


async def end_socket(
    state: ServerState,
    session: Session,
    output: SocketOutput,
    writer: asyncio.Future[None],
    timer: TimerDriver,
    ws: web.WebSocketResponse,
) -> None:
    """The socket is done, whatever its wire format: the session finishes (parked or out),
    what is queued is flushed (bounded), the socket closes."""
    state.sessions.discard(session)
    timer.stop()
    await session.finish(asyncio.get_running_loop().time())
    if not session.ending:
        output.stop()
    try:
        await asyncio.wait_for(writer, FLUSH_TIMEOUT)
    except (TimeoutError, asyncio.CancelledError):
        writer.cancel()
    if not ws.closed:
        await ws.close()


async def _start(
    session: Session, ws: web.WebSocketResponse, loop: asyncio.AbstractEventLoop, deadline: float
) -> bool:
    """The first frame, by `deadline`; the join metrics count how it went.

    One deadline for the whole wait: `ws.receive(timeout=...)` restarts its timeout after each
    ping it answers, so a client pinging every second would hold the socket for ever.
    """
    started = loop.time()
    try:
        async with asyncio.timeout_at(deadline):
            frame = await ws.receive()
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
        outcome = await _first(session, message, started)
    record_join(outcome.accepted, outcome.reason, loop.time() - started)
    return outcome.accepted


async def _first(session: Session, message: AnyClientMessage, started: float) -> Outcome:
    """The first frame: in a cluster a join may belong to another node (PROTOCOL 7)."""
    cluster = session.state.cluster
    if cluster is not None and isinstance(message, Join):
        answer = await cluster.route(message, time.time())
        if answer is not None:
            return session.answer_first(answer)
    return session.start(message, started, time.time())


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
