"""Hostile clients: each does one abusive thing of issue 11 in a loop, bounded in count and time.

Every abuse is one coroutine function `abuse(arena, seconds) -> Counter[str]` that runs
against `arena` (a server and a room of its own): it sets up (joins, publishes), calls
`arena.begin(seconds)` and loops until then (or `MAX_ROUNDS`), and returns what it did
(`rounds` at least, plus what its test bounds). The suite measures the bystander from
`arena.started` on, for the same `seconds`. `ABUSES` lists them in the
order the hostile-client suite (tests/test_hostile.py) runs them, beside a bystander call in
another room (`loadtest.bystander`). To add an abuse: write one function here, add it to
`ABUSES`, and, if it has a bound of its own to check, a check in the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiortc import RTCPeerConnection

from sfu import internals
from sfu.rtcp import build_nack
from sfu.rtp import parse_rtp
from signaling.client import KeyroomClient, KeyroomError, SessionClosed
from signaling.media import SyntheticAudioTrack, SyntheticVideoTrack

MAX_ROUNDS = 10_000  # no abuse loops more often than this, whatever `until`
STEP_TIMEOUT = 10.0
# The NACK of the red-team report: 1.2 KB naming 4,930 packets, sent 200 times a second.
NACK_SPAN = 4930
NACKS_PER_BURST = 10
NACK_BURST_INTERVAL = 0.05
METADATA_BYTES = 4000  # under [limits] max_metadata_bytes (4096)
OVERSIZED_DATA_BYTES = 70_000  # over [limits] max_data_message_bytes (65536)
SECTIONS_PER_OFFER = 8
STUCK_SOCKETS = 20


class Token(Protocol):
    def __call__(self, identity: str, *, grants: dict[str, Any] | None = None) -> str: ...


@dataclass
class Arena:
    """The abusers' room on the server under test: `token` mints a token for that room."""

    url: str
    token: Token
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def begin(self, seconds: float) -> float:
        """The abuse loop starts now: returns the loop time it ends at."""
        self.started.set()
        return asyncio.get_running_loop().time() + seconds


Abuse = Callable[[Arena, float], Awaitable[Counter[str]]]


def _time_left(until: float, rounds: int) -> bool:
    return rounds < MAX_ROUNDS and asyncio.get_running_loop().time() < until


@contextlib.asynccontextmanager
async def _joined(arena: Arena, identity: str, **options: Any) -> AsyncIterator[KeyroomClient]:
    grants = options.pop("grants", None)
    client = KeyroomClient(arena.url, arena.token(identity, grants=grants), **options)
    try:
        await client.connect(STEP_TIMEOUT)
        yield client
    finally:
        await client.leave()


# ------------------------------------------------------------------------------ NACK flood


class _RtpTap:
    """The abuser's subscriber transport, taken over: remembers the last video packet's SSRC and
    sequence number (the NACK needs them). Retransmissions never show here (SRTP replay
    protection drops a resent packet): the server's own counter tells how many it resent."""

    def __init__(self) -> None:
        self.ssrc = 0
        self.seq = 0
        self.seen = asyncio.Event()

    async def on_rtp(self, data: bytes, arrival_time_ms: int = 0) -> None:
        info = parse_rtp(data)
        if not self.ssrc:
            self.ssrc = info.ssrc
        if info.ssrc == self.ssrc:
            self.seq = info.sequence
            self.seen.set()

    async def on_rtcp(self, data: bytes) -> None:
        return None


async def nack_flood(arena: Arena, seconds: float) -> Counter[str]:
    """A subscriber NACKs the last 4,930 packets of a video track, 200 NACKs a second."""
    done: Counter[str] = Counter()
    async with (
        _joined(arena, "nack-pub") as publisher,
        _joined(arena, "nack-sub") as abuser,
    ):
        await publisher.publish(SyntheticVideoTrack(), source="camera")
        await abuser.next_track(STEP_TIMEOUT)
        assert abuser.subscriber_pc is not None
        await _connected(abuser.subscriber_pc)
        dtls = internals.bundle_transport(abuser.subscriber_pc)
        assert dtls is not None
        tap = _RtpTap()
        internals.hook_transport(dtls, tap.on_rtp, tap.on_rtcp)
        sink = internals.RtpSink(dtls)
        await asyncio.wait_for(tap.seen.wait(), STEP_TIMEOUT)
        until = arena.begin(seconds)
        while _time_left(until, done["rounds"]):
            lost = [(tap.seq - NACK_SPAN + n) & 0xFFFF for n in range(NACK_SPAN)]
            nack = build_nack(1, tap.ssrc, lost)
            for _ in range(NACKS_PER_BURST):
                done["nacks"] += sink.send(nack)
            done["rounds"] += 1
            await asyncio.sleep(NACK_BURST_INTERVAL)
    return done


async def _connected(pc: RTCPeerConnection) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP_TIMEOUT
    while pc.connectionState != "connected":
        if loop.time() > deadline or pc.connectionState in ("failed", "closed"):
            raise ConnectionError(f"subscriber connection {pc.connectionState}")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------ stops reading


async def stop_reading(arena: Arena, seconds: float) -> Counter[str]:
    """`STUCK_SOCKETS` sockets join and never read again while a talker makes events for
    everybody; once the server has ended them all (too_slow), the next ones do the same."""
    done: Counter[str] = Counter()
    talker_grants = {"canUpdateOwnMetadata": True}
    async with (
        _joined(arena, "talker", grants=talker_grants) as talker,
        # A small receive buffer: the kernel holds little, the server's outbox fills soon.
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=_small_buffer)) as http,
    ):
        gone: set[str] = set()
        talker.on("participant_left", lambda e: gone.add(str(e.get("identity"))))
        until = arena.begin(seconds)
        while _time_left(until, done["rounds"]):
            stuck = [f"stuck-{done['rounds']}-{n}" for n in range(STUCK_SOCKETS)]
            sockets = [await _join_raw(http, arena, identity) for identity in stuck]
            for identity in stuck:
                await talker.next_event("participant_joined", STEP_TIMEOUT, _identity_is(identity))
            while not gone.issuperset(stuck) and _time_left(until, done["updates"]):
                metadata = f"{done['updates']:06d}" + "m" * (METADATA_BYTES - 6)
                await talker.request({"type": "update_metadata", "metadata": metadata})
                done["updates"] += 1
            done["ended"] += len(gone.intersection(stuck))
            done["rounds"] += 1
            for ws in sockets:
                await ws.close()
    return done


def _small_buffer(addr_info: Any) -> socket.socket:
    family, kind, proto = addr_info[0], addr_info[1], addr_info[2]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def _join_raw(
    http: aiohttp.ClientSession, arena: Arena, identity: str
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(arena.url, max_msg_size=0)
    await ws.send_json({"type": "join", "token": arena.token(identity)})
    return ws


def _identity_is(identity: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: bool(event.get("participant", {}).get("identity") == identity)


# ----------------------------------------------------------------- publisher offers


def renamed_mids(sdp: str, prefix: str) -> str:
    """The same offer with every mid renamed: to the server, all new sections."""
    sdp = re.sub(r"a=mid:(\S+)", lambda m: f"a=mid:{prefix}{m.group(1)}", sdp)
    return re.sub(
        r"a=group:BUNDLE ([^\r\n]+)",
        lambda m: "a=group:BUNDLE " + " ".join(prefix + mid for mid in m.group(1).split()),
        sdp,
    )


async def publisher_offers(arena: Arena, seconds: float) -> Counter[str]:
    """Offers with 8 new media sections each, again and again, without canPublish; a refused
    participant comes back under a new identity and goes on."""
    done: Counter[str] = Counter()
    pc = RTCPeerConnection()
    try:
        for _ in range(SECTIONS_PER_OFFER):
            pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        until = arena.begin(seconds)
        while _time_left(until, done["rounds"]):
            identity = f"offers-{done['rounds']}"
            async with _joined(arena, identity, grants={"canPublish": False}) as abuser:
                while _time_left(until, done["offers"]):
                    sdp = renamed_mids(offer, f"r{done['offers']}x")
                    try:
                        await abuser.request({"type": "offer", "target": "publisher", "sdp": sdp})
                    except KeyroomError:
                        done["refused"] += 1
                        break
                    finally:
                        done["offers"] += 1
            done["rounds"] += 1
    finally:
        await pc.close()
    return done


# ------------------------------------------------------------------------ refused joins


async def refused_joins(arena: Arena, seconds: float) -> Counter[str]:
    """Joins with a token of a wrong signature, one after the other, from one address."""
    done: Counter[str] = Counter()
    bad = arena.token("intruder") + "x"
    async with aiohttp.ClientSession() as http:
        until = arena.begin(seconds)
        while _time_left(until, done["rounds"]):
            async with http.ws_connect(arena.url) as ws:
                await ws.send_json({"type": "join", "token": bad})
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT and '"error"' in message.data:
                        done["rate_limited" if "rate_limited" in message.data else "refused"] += 1
            done["rounds"] += 1
    return done


# --------------------------------------------------------------------- malformed frames


async def malformed_frames(arena: Arena, seconds: float) -> Counter[str]:
    """Unparsable frames until the server closes the session (4429), then join again."""
    done: Counter[str] = Counter()
    until = arena.begin(seconds)
    while _time_left(until, done["rounds"]):
        client = KeyroomClient(arena.url, arena.token(f"garbler-{done['rounds']}"))
        try:
            await client.connect(STEP_TIMEOUT)
            while _time_left(until, done["frames"]) and client.close_code is None:
                await client.send_raw("{")
                done["frames"] += 1
                await client.next_event("error", STEP_TIMEOUT)
        except (SessionClosed, ConnectionError):
            pass  # the server closed first: its close code says why
        finally:
            await client.close()
        done["closed_4429"] += client.close_code == 4429
        done["rounds"] += 1
    return done


# --------------------------------------------------------------------- metadata updates


async def metadata_updates(arena: Arena, seconds: float) -> Counter[str]:
    """update_metadata as fast as the server answers, each an event for a witness."""
    done: Counter[str] = Counter()
    async with (
        _joined(arena, "chatter", grants={"canUpdateOwnMetadata": True}) as chatter,
        _joined(arena, "listener", auto_subscribe=False),
    ):
        until = arena.begin(seconds)
        while _time_left(until, done["rounds"]):
            metadata = f"{done['rounds']:06d}" + "m" * (METADATA_BYTES - 6)
            await chatter.request({"type": "update_metadata", "metadata": metadata})
            done["rounds"] += 1
    return done


# --------------------------------------------------------------------- oversized data


async def oversized_data(arena: Arena, seconds: float) -> Counter[str]:
    """Data messages just over the size cap on the reliable channel, as fast as SCTP takes
    them (the client's send buffer kept under 1 MB), with a listener in the room."""
    done: Counter[str] = Counter()
    payload = "x" * OVERSIZED_DATA_BYTES
    async with (
        _joined(arena, "shouter") as shouter,
        _joined(arena, "hearer", auto_subscribe=False),
    ):
        await shouter.send_data("hello")
        channel = shouter._publisher_channels["_reliable"]  # noqa: SLF001 - its buffer
        channel.bufferedAmountLowThreshold = 256_000
        until = arena.begin(seconds)
        while _time_left(until, done["rounds"]):
            if channel.bufferedAmount > 1_000_000:
                drained = asyncio.Event()
                channel.once("bufferedamountlow", drained.set)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(drained.wait(), max(0.0, until - _now()))
                continue
            await shouter.send_data(payload)
            done["rounds"] += 1
    return done


def _now() -> float:
    return asyncio.get_running_loop().time()


# ------------------------------------------------------------------ publish / unpublish


async def publish_unpublish(arena: Arena, seconds: float) -> Counter[str]:
    """Publish a track, unpublish it, again and again, with a subscriber in the room (whose
    fate is item 3's to assert: here only the bystander's)."""
    done: Counter[str] = Counter()
    async with (
        _joined(arena, "flapper", auto_subscribe=False) as flapper,
        _joined(arena, "watcher"),
    ):
        until = arena.begin(seconds)
        while _time_left(until, done["rounds"]):
            track = SyntheticAudioTrack() if done["rounds"] % 2 else SyntheticVideoTrack()
            source = "microphone" if track.kind == "audio" else "camera"
            info = await flapper.publish(track, source=source)
            await flapper.unpublish(info["sid"])
            done["rounds"] += 1
    return done


# The suite's order. Still to add once their fixes are merged (issue 11 items 6, 10, 11):
# anonymous sockets that never join, add_track past the bounds, data channels without
# canPublishData.
ABUSES: dict[str, Abuse] = {
    "nack_flood": nack_flood,
    "stop_reading": stop_reading,
    "publisher_offers": publisher_offers,
    "malformed_frames": malformed_frames,
    "metadata_updates": metadata_updates,
    "oversized_data": oversized_data,
    "publish_unpublish": publish_unpublish,
    "refused_joins": refused_joins,
}
