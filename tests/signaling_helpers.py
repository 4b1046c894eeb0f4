"""In-process signaling for unit tests: a ServerState without a server, a fake wire, fixed times.

Time is passed in: `NOW` is the loop clock's reading and `WALL` the wall clock's at the start of
each test; tokens are minted at `WALL`. Nothing here sleeps. `NOW` is far ahead of the real loop
clock (seconds since boot), so the timers the state arms on the real loop at these deadlines
never fire during a test: only the test's own `handle_timer(now)` calls move time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from auth.tokens import mint_token
from sfu.config import AuditConfig, AuthConfig, Config, LimitsConfig, NodeConfig, ServerConfig
from signaling import codec
from signaling.messages import Join, ServerMessage
from signaling.server import build_state
from signaling.session import Outcome, Session
from signaling.state import ServerState
from tests.conftest import KEY_ID, SECRET

NOW = 1_000_000_000.0
WALL = 1_800_000_000.0


class Wire:
    """The frames a session sent, as a client would read them, and how it closed."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self._changed = asyncio.Event()

    def send(self, message: ServerMessage | Mapping[str, Any]) -> None:
        self.frames.append(json.loads(codec.encode(message)))
        self._changed.set()

    def close(self, code: int) -> None:
        self.close_code = code

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    async def next_of_type(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """Wait (on an event, not a sleep) until a frame of `kind` has been sent."""
        async with asyncio.timeout(timeout):
            while not self.of_type(kind):
                self._changed.clear()
                await self._changed.wait()
        return self.of_type(kind)[0]


def make_state(
    tmp_path: Path,
    *,
    limits: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
    node: dict[str, Any] | None = None,
) -> ServerState:
    config = Config(
        server=ServerConfig(data_dir=str(tmp_path / "data"), **(server or {})),
        auth=AuthConfig(keys={KEY_ID: SECRET}, **(auth or {})),
        limits=LimitsConfig(**(limits or {})),
        node=NodeConfig(**(node or {})),
        audit=AuditConfig(path=str(tmp_path / "audit.log")),
    )
    return build_state(config)


def audit(state: ServerState) -> list[dict[str, Any]]:
    assert state.audit.path is not None
    state.audit.flush()  # the writer thread has written everything recorded so far
    return [json.loads(line) for line in Path(state.audit.path).read_text().splitlines()]


def audit_file_events(path: Path, event: str) -> list[dict[str, Any]]:
    """The records of `event` in a server's audit log file (the [audit] path)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [r for r in records if r["event"] == event]


def token(
    identity: str, room: str = "room1", *, ttl: float = 600, wall: float = WALL, **extra: Any
) -> str:
    return mint_token(
        key_id=KEY_ID, secret=SECRET, identity=identity, room=room, ttl=ttl, now=wall, **extra
    )


def session(state: ServerState, peer: str = "192.0.2.1") -> tuple[Session, Wire]:
    wire = Wire()
    return Session(state, peer, wire), wire


def join(
    state: ServerState, identity: str, *, now: float = NOW, wall: float = WALL, **kw: Any
) -> tuple[Session, Wire, Outcome]:
    """A session that sent `join` with a fresh token for `identity`."""
    s, wire = session(state, kw.pop("peer", "192.0.2.1"))
    outcome = s.start(Join(token=token(identity, wall=wall, **kw), req=1), now, wall)
    return s, wire, outcome


async def close_all(state: ServerState) -> None:
    """Release every participant and room the test made (peer connections, timers, tasks)."""
    for room in list(state.rooms.rooms.values()):
        for participant in list(room.participants.values()):
            await room.remove(participant, "server_shutdown")
        state.rooms.remove(room)
    for parked in state.parking.take_all():
        await parked.participant.close()
    await state.tasks.close()
    state.audit.close()
    state.store.close()
