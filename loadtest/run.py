"""One load-test run: its participants, what they counted, and how each joins and leaves."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from auth.keybinding import public_jwk, thumbprint
from auth.keys import PrivateKey
from loadtest.clients import Latencies, LoadClient, PlainSubscriber, Publisher, Subscriber
from loadtest.clip import Clip, encrypted_clip
from loadtest.deaf import deafen
from loadtest.scenarios import Scenario
from loadtest.target import Target
from signaling.client import KeyroomClient, KeyroomError, SessionClosed
from signaling.client.e2ee import FrameCryptor

# The application-supplied room key of `--e2ee` runs (the server never needs it).
E2EE_KEY = bytes(range(32))

JOIN_TIMEOUT = 10.0
LEAVE_TIMEOUT = 5.0
BAD_TOKEN_KINDS = ("bad_signature", "expired", "unknown_key", "garbage")


def bound_key(n: int, share: float) -> PrivateKey | None:
    """A fresh P-256 key for the `share` of subscribers (spread evenly) that bind their token."""
    if int((n + 1) * share) > int(n * share):
        return ec.generate_private_key(ec.SECP256R1())
    return None


@dataclass
class Run:
    scenario: Scenario
    target: Target
    # One name per room (`scenario.rooms`), filled in on creation.
    rooms: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: Latencies = field(default_factory=Latencies)
    publishers: list[Publisher] = field(default_factory=list)
    subscribers: list[Subscriber] = field(default_factory=list)
    join_ms: list[float] = field(default_factory=list)
    # Joins with a bound token and its proof (nonce fetch included): `scenario.bound_share`.
    join_ms_bound: list[float] = field(default_factory=list)
    # Joins a cluster node redirected to the room's node (their time is in join_ms too).
    redirected_join_ms: list[float] = field(default_factory=list)
    joins_started: int = 0
    auth: Counter[str] = field(default_factory=Counter)
    measure_start_ns: int = 0
    measure_end_ns: int = 0
    # The same instants in event-loop time, to pick the server samples of the measured phase.
    measure_start: float = 0.0
    measure_end: float = 0.0
    # (packets, bytes received by all subscribers, keyframe requests publishers got) at each
    # instant: rates are of the measured phase only, not of the joins before it.
    counts_at_start: tuple[int, int, int] = (0, 0, 0)
    counts_at_end: tuple[int, int, int] = (0, 0, 0)
    # Per-room latency samples, only when there are several rooms (one more reservoir per
    # received packet otherwise for nothing).
    room_latencies: dict[str, Latencies] = field(default_factory=dict)
    # How late the generator's event loop woke from a short sleep in the measured phase (ms):
    # a received datagram can wait that long before its latency is taken.
    loop_lag_ms: list[float] = field(default_factory=list)
    # The generator's garbage-collection pauses in the measured phase (ms), one per collection.
    gc_pauses_ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.rooms:
            prefix = f"loadtest-{secrets.token_hex(3)}"
            count = max(1, self.scenario.rooms)
            self.rooms = [prefix] if count == 1 else [f"{prefix}-{r}" for r in range(count)]
        if len(self.rooms) > 1:
            origin = self.latencies.origin_ns
            self.room_latencies = {room: Latencies(origin_ns=origin) for room in self.rooms}

    @property
    def room(self) -> str:
        return self.rooms[0]

    def counts(self) -> tuple[int, int, int]:
        streams = [st for sub in self.subscribers for st in sub.streams.values()]
        return (
            sum(st.packets for st in streams),
            sum(st.bytes for st in streams),
            sum(p.keyframe_requests for p in self.publishers),
        )

    async def join(
        self, identity: str, token: str, auto_subscribe: bool, key: PrivateKey | None = None
    ) -> LoadClient | None:
        url = self.target.url_for(self.joins_started)
        self.joins_started += 1
        client = (
            self.target.client_factory(url, token, auto_subscribe)
            if key is None
            else KeyroomClient(url, token, auto_subscribe=auto_subscribe, key=key)
        )
        started = time.monotonic()
        try:
            await client.connect(timeout=JOIN_TIMEOUT)
        except KeyroomError as exc:
            self.errors[f"join:{exc.code}"] += 1
            return None
        except (TimeoutError, SessionClosed, OSError) as exc:
            self.errors[f"join:{type(exc).__name__}"] += 1
            return None
        joined_ms = 1000 * (time.monotonic() - started)
        (self.join_ms if key is None else self.join_ms_bound).append(joined_ms)
        if getattr(client, "url", url) != url:
            self.redirected_join_ms.append(joined_ms)
        return client

    async def add_publisher(self, n: int, clip: Clip, room: str) -> None:
        identity = f"pub-{n}"
        client = await self.join(identity, self.target.token(identity, room), False)
        if client is None:
            return
        cryptor = None
        if self.scenario.e2ee:
            cryptor = FrameCryptor(E2EE_KEY)
            clip = encrypted_clip(clip, cryptor, identity)
        publisher = Publisher(
            client, clip, n, self.errors, self.target.forwards_payloads, room=room, e2ee=cryptor
        )
        try:
            await publisher.start()
        except (KeyroomError, TimeoutError, ConnectionError, SessionClosed, RuntimeError) as exc:
            self.errors[f"publish:{type(exc).__name__}"] += 1
            await self.leave(client)
            return
        self.publishers.append(publisher)

    async def add_subscriber(self, n: int, room: str) -> Subscriber | None:
        identity = f"sub-{n}"
        key = bound_key(n, self.scenario.bound_share)
        bind = None if key is None else thumbprint(public_jwk(key.public_key()))
        started = time.monotonic_ns()
        client = await self.join(identity, self.target.token(identity, room, bind=bind), True, key)
        if client is None:
            return None
        kind = Subscriber if self.target.forwards_payloads else PlainSubscriber
        subscriber = kind(client, self.latencies, self.errors, room, self.room_latencies.get(room))
        subscriber.join_started_ns = started
        listening = self.scenario.listening
        subscriber.deaf = bool(listening) and n % max(1, self.scenario.subscribers) >= listening
        try:
            await subscriber.start()
            if subscriber.deaf and client.subscriber_pc is not None:
                deafen(client.subscriber_pc)
        except (TimeoutError, ConnectionError, SessionClosed) as exc:
            self.errors[f"subscribe:{type(exc).__name__}"] += 1
        self.subscribers.append(subscriber)
        return subscriber

    async def bad_join(self, n: int) -> None:
        kind = BAD_TOKEN_KINDS[n % len(BAD_TOKEN_KINDS)]
        room = self.rooms[n % len(self.rooms)]
        client = KeyroomClient(self.target.url, self.target.bad_token(kind, f"bad-{n}", room))
        self.auth["attempts"] += 1
        try:
            await client.connect(timeout=JOIN_TIMEOUT)
        except KeyroomError as exc:
            self.auth[f"refused:{exc.code}:{exc.close_code}"] += 1
            return
        except (TimeoutError, SessionClosed, OSError) as exc:
            self.errors[f"bad_join:{type(exc).__name__}"] += 1
            return
        self.errors[f"bad_token_accepted:{kind}"] += 1
        await self.leave(client)

    async def leave(self, client: LoadClient) -> None:
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT):
                await client.leave()
        except TimeoutError:
            self.errors["leave:timeout"] += 1
            await client.close()
