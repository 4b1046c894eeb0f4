"""The WebSocket of one signaling session: frames in and out, requests matched to their replies."""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from signaling.client.errors import Frame, KeyroomError, SessionClosed

log = logging.getLogger("signaling.client")

_ENDED = (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


class Connection:
    """The socket of a session (PROTOCOL 2) and how it ended.

    Each frame that answers no pending request goes to `dispatch`; a reply goes to `on_reply`
    before its request returns. `on_closed` hears, once, that the session is over (with the
    SessionClosed that pending calls get), and `on_server_close` that the socket closed.
    """

    def __init__(
        self,
        url: str,
        ssl: ssl_module.SSLContext | None,
        *,
        dispatch: Callable[[Frame], None],
        on_reply: Callable[[Frame], None],
        on_closed: Callable[[SessionClosed], None],
        on_server_close: Callable[[], None],
    ) -> None:
        self.url = url
        self.ssl = ssl
        self.closed = False
        self.close_code: int | None = None
        self.leave_reason: str | None = None
        self.leave_message: str | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._send_lock = asyncio.Lock()
        self._next_req = 1
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._dispatch = dispatch
        self._on_reply = on_reply
        self._on_closed = on_closed
        self._on_server_close = on_server_close
        self._redirected = False

    def error(self) -> SessionClosed:
        return SessionClosed(self.close_code, self.leave_reason, self.leave_message)

    async def follow(self, url: str, timeout: float) -> None:
        """The join was redirected (PROTOCOL 7): drop this socket, quietly (the session is not
        over), and open `url` instead."""
        try:
            await self.abort()
            await self.close_http()
        finally:
            self._redirected = False
        self.url, self.ws, self.reader = url, None, None
        await self.open(timeout)

    async def open(self, timeout: float) -> None:
        """Open the socket and start reading; after a failure the caller calls `abort`."""
        async with asyncio.timeout(timeout):
            self.ws = await self._session().ws_connect(
                self.url, autoping=True, ssl=self.ssl if self.ssl is not None else True
            )
        self.reader = asyncio.ensure_future(self._read_loop(self.ws))

    def _session(self) -> aiohttp.ClientSession:
        # Made by whichever of open() and fetch_nonce() runs first: they may run side by side.
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def fetch_nonce(self, timeout: float) -> str:
        """A fresh proof-of-possession nonce from `GET /rtc/nonce` beside the socket's URL."""
        parts = urlsplit(self.url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        url = urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/nonce", "", ""))
        async with self._session().get(
            url,
            ssl=self.ssl if self.ssl is not None else True,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            response.raise_for_status()
            body = await response.json()
        nonce = body.get("nonce") if isinstance(body, dict) else None
        if not isinstance(nonce, str):
            raise KeyroomError("invalid_message", "the server sent no nonce")
        return nonce

    def end(self, close_code: int | None) -> None:
        """Mark the session over: pending requests raise SessionClosed from now on."""
        if self.closed:
            return
        self.closed = True
        self.close_code = close_code
        exc = self.error()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()
        self._on_closed(exc)

    async def wait_reader(self, timeout: float | None) -> None:
        if self.reader is None:
            return
        done, _ = await asyncio.wait([self.reader], timeout=timeout)
        if not done:
            self.reader.cancel()
            await asyncio.wait([self.reader])

    async def abort(self) -> None:
        """Stop reading and drop the TCP connection without a close frame."""
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()
        await self.wait_reader(None)
        if self.ws is not None and not self.ws.closed:
            # aiohttp has no public abort: closing the response drops the TCP connection without
            # a close frame and releases it (closing only the session leaks it).
            self.ws._response.close()

    async def close_http(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # The code of the close frame received, when one was: aiohttp's own `close_code` turns
        # into 1006 when the server's TCP connection ends before aiohttp's reply to the close
        # frame is written (a server that exits right after closing every socket).
        received: int | None = None
        try:
            while True:
                message = await ws.receive()
                if message.type is aiohttp.WSMsgType.TEXT:
                    self._receive_text(message.data)
                elif message.type is aiohttp.WSMsgType.CLOSE:
                    received = message.data
                    break
                elif message.type in _ENDED:
                    break
                else:
                    log.warning("unexpected %s message from server", message.type)
        except asyncio.CancelledError:
            if not self._redirected:
                self.end(None)
            raise
        if self._redirected:
            return
        self.end(received if received is not None else ws.close_code)
        self._on_server_close()

    def _receive_text(self, data: str) -> None:
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("undecodable frame from server: %.200s", data)
            return
        if isinstance(frame, dict):
            self._receive(frame)
        else:
            log.warning("non-object frame from server: %.200s", data)

    def _receive(self, frame: Frame) -> None:
        if frame.get("type") == "redirect":
            # The server closes this socket next: that close does not end the session.
            self._redirected = True
        req = frame.get("req")
        future = self._pending.pop(req, None) if isinstance(req, int) else None
        if future is not None:
            self._on_reply(frame)
            if not future.done():
                future.set_result(frame)
        elif isinstance(req, int) and frame.get("type") != "error":
            log.debug("reply to no pending request dropped: %s", frame)
        else:
            # Events, and errors that answer no pending request (e.g. to send_raw frames).
            self._dispatch(frame)

    async def request(self, frame: Frame, timeout: float = 10) -> Frame:
        """Send `frame` with a fresh integer `req` and return the server's direct reply.

        Raises KeyroomError for an `error` reply, SessionClosed if the session ends first,
        TimeoutError after `timeout` seconds.
        """
        if self.closed:
            raise self.error()
        req = self._next_req
        self._next_req += 1
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[req] = future
        try:
            await self.send({**frame, "req": req})
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(req, None)
        if reply.get("type") == "error":
            raise KeyroomError(str(reply.get("code")), str(reply.get("message", "")), reply)
        return reply

    async def send(self, frame: Frame) -> None:
        ws = self._require_ws()
        try:
            async with self._send_lock:
                await ws.send_str(orjson.dumps(frame).decode())
        except ConnectionError as exc:
            raise self.error() from exc

    async def send_raw(self, text: str | bytes) -> None:
        """Send `text` as is (bytes as a binary frame): for tests of malformed frames."""
        ws = self._require_ws()
        async with self._send_lock:
            if isinstance(text, bytes):
                await ws.send_bytes(text)
            else:
                await ws.send_str(text)

    def _require_ws(self) -> aiohttp.ClientWebSocketResponse:
        if self.closed or self.ws is None:
            raise self.error()
        return self.ws
