"""What a client's user takes from its session: server events, remote tracks and data
messages, each in arrival order (inboxes), or as callbacks."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from sfu.tasks import TaskSet
from signaling.client.errors import Frame
from signaling.client.inbox import Inbox
from signaling.client.subscriber import RemoteTrack

log = logging.getLogger("signaling.client")


class EventConsumer:
    def __init__(self, tasks: TaskSet) -> None:
        self._event_inbox: Inbox[Frame] = Inbox()
        self._track_inbox: Inbox[RemoteTrack] = Inbox()
        self._data_inbox: Inbox[Frame] = Inbox()
        self._callbacks: dict[str, list[Callable[[Any], Any]]] = {}
        self._tasks = tasks

    async def next_event(
        self,
        type: str | None = None,
        timeout: float = 10,
        predicate: Callable[[Frame], bool] | None = None,
    ) -> Frame:
        """Take the first not yet taken server event matching `type` and `predicate`, in
        arrival order, waiting up to `timeout` seconds (TimeoutError). Events that do not
        match stay for later calls; `events` keeps all of them. Error frames that answer no
        request are events of type `error`; the server's `leave` is an event too. Raises
        SessionClosed once the session has ended and no matching event is left."""

        def match(frame: Frame) -> bool:
            return (type is None or frame.get("type") == type) and (
                predicate is None or predicate(frame)
            )

        return await self._event_inbox.get(match, timeout, f"{type or 'event'}")

    async def next_track(
        self, timeout: float = 10, predicate: Callable[[RemoteTrack], bool] | None = None
    ) -> RemoteTrack:
        """Take the next remote track (matching `predicate`) that appeared on the subscriber PC."""
        return await self._track_inbox.get(predicate or (lambda _: True), timeout, "remote track")

    async def next_data(self, timeout: float = 10) -> Frame:
        """Take the next data message received on a subscriber channel:
        `{"from", "from_sid", "topic", "payload", "channel"}`."""
        return await self._data_inbox.get(lambda _: True, timeout, "data message")

    def on(self, event_type: str, callback: Callable[[Any], Any]) -> None:
        """Call `callback(frame)` for each server event of `event_type` (after the state is
        updated), `"*"` for every server event; `"track"` gets each RemoteTrack and `"data"`
        each data message. A coroutine
        function is run as a task owned by the client."""
        self._callbacks.setdefault(event_type, []).append(callback)

    def _fire(self, event_type: str, item: Any) -> None:
        for callback in self._callbacks.get(event_type, []):
            try:
                result = callback(item)
                if inspect.isawaitable(result):
                    self._tasks.spawn(result)
            except Exception:
                log.exception("%s callback failed", event_type)
