"""What the client raises when the server refuses a request or the session ends."""

from __future__ import annotations

from typing import Any

# A decoded JSON frame of the signaling protocol.
Frame = dict[str, Any]


class KeyroomError(Exception):
    """The server answered a request with an `error` frame (or refused the join).

    `code` is the protocol error code (`unauthorized`, `forbidden`, ...), `message` the human
    text, `frame` the whole error frame and `close_code` the WebSocket close code that followed a
    refused join (4401, 4403, ...), else None.
    """

    def __init__(
        self,
        code: str,
        message: str = "",
        frame: Frame | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.frame = frame or {}
        self.close_code = close_code


class SessionClosed(Exception):
    """The session ended (server `leave` and/or socket close) before the awaited thing happened.

    `close_code` is the WebSocket close code (None if the socket dropped without one) and
    `reason` the server's `leave` reason, if it sent one, and `message` its explanation (e.g.
    the server setting that refused this client's ICE candidates).
    """

    def __init__(
        self, close_code: int | None, reason: str | None, message: str | None = None
    ) -> None:
        text = f"session closed (code={close_code}, reason={reason})"
        super().__init__(f"{text}: {message}" if message else text)
        self.close_code = close_code
        self.reason = reason
        self.message = message
