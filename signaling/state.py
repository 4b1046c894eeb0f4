"""What every signaling session shares: configuration, rooms, token verifier, counters."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from auth.tokens import TokenVerifier
from sfu.config import Config
from sfu.room import RoomRegistry
from sfu.stats import Stats

if TYPE_CHECKING:
    from signaling.session import Session


@dataclass
class ServerState:
    config: Config
    verifier: TokenVerifier
    rooms: RoomRegistry
    stats: Stats = field(default_factory=Stats)
    sessions_by_participant: dict[str, Session] = field(default_factory=dict)
    sessions: set[Session] = field(default_factory=set)
    accepting: bool = True
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task
