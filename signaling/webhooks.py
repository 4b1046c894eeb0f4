"""Webhooks: the room lifecycle events POSTed to each `[webhooks] urls`, in LiveKit's format.

Body: a `WebhookEvent` in protobuf JSON (`{"event", "room", "participant", "track", "id",
"createdAt"}`, camelCase, 64-bit integers as strings). `Authorization`: an HS256 JWT whose `iss` is
the webhook key id and whose `sha256` claim is the base64 SHA-256 of the body, which is what
`livekit.api.WebhookReceiver` checks.

The room registry calls `WebhookSender.on_event` inline: it only snapshots the event into one
bounded queue per URL, so a slow or dead receiver never delays a join or a packet. One worker per
URL posts its queue in order, retrying with exponential backoff; a full queue drops its oldest event
and the next delivered body says how many were lost (`numDropped`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import orjson

from sfu.config import WebhooksConfig
from sfu.forwarder import PublishedTrack
from sfu.metrics import record_webhook
from sfu.participant import Participant
from sfu.room import Room

log = logging.getLogger("keyroom.webhooks")

TOKEN_TTL = 600  # seconds; signed per attempt, so only clock skew has to fit in it
MAX_RETRY_DELAY = 60.0
CONTENT_TYPE = "application/webhook+json"  # what LiveKit sends


def room_info(room: Room) -> dict[str, Any]:
    visible = [p for p in room.participants.values() if not p.hidden]
    return {
        "sid": room.sid,
        "name": room.name,
        "metadata": room.metadata,
        "emptyTimeout": int(room.limits.empty_timeout),
        "maxParticipants": room.limits.max_participants,
        "creationTime": str(int(room.created_at)),
        "numParticipants": len(visible),
        "numPublishers": sum(1 for p in visible if any(t.bound for t in p.tracks.values())),
    }


def track_info(track: PublishedTrack) -> dict[str, Any]:
    return {
        "sid": track.sid,
        "type": track.kind.upper(),
        "name": track.name,
        "muted": track.muted,
        "source": track.source.upper(),
        "mimeType": track.mime_type,
        "mid": track.mid or "",
    }


def participant_info(participant: Participant, *, left: bool) -> dict[str, Any]:
    permissions = participant.grant.to_permissions()
    tracks = [t for t in participant.tracks.values() if t.bound]
    return {
        "sid": participant.sid,
        "identity": participant.identity,
        "name": participant.name,
        "metadata": participant.metadata,
        "state": "DISCONNECTED" if left else "ACTIVE",
        "joinedAt": str(participant.joined_at),
        "tracks": [track_info(t) for t in tracks],
        "isPublisher": bool(tracks),
        "permission": {
            "canSubscribe": permissions["canSubscribe"],
            "canPublish": permissions["canPublish"],
            "canPublishData": permissions["canPublishData"],
            "canPublishSources": [s.upper() for s in permissions["canPublishSources"]],
            "canUpdateMetadata": permissions["canUpdateOwnMetadata"],
            "hidden": permissions["hidden"],
            "recorder": permissions["recorder"],
        },
    }


def event_body(
    event: str,
    room: Room,
    participant: Participant | None,
    track: PublishedTrack | None,
    *,
    now: float,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event": event,
        "room": room_info(room),
        "id": f"EV_{secrets.token_urlsafe(9)}",
        "createdAt": str(int(now)),
    }
    if participant is not None:
        body["participant"] = participant_info(participant, left=event == "participant_left")
    if track is not None:
        body["track"] = track_info(track)
    return body


def sign(body: bytes, key_id: str, secret: str, now: float) -> str:
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    claims = {"iss": key_id, "nbf": int(now), "exp": int(now) + TOKEN_TTL, "sha256": digest}
    return jwt.encode(claims, secret, algorithm="HS256")


def target_name(index: int, url: str) -> str:
    """`webhooks.urls[i] (scheme://host:port)`: which configured URL, for logs, without its
    path or query, which may carry a receiver's secret."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"webhooks.urls[{index}] ({parts.scheme}://{parts.hostname}{port})"


@dataclass(eq=False)
class _Endpoint:
    url: str
    queue: deque[dict[str, Any]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    busy: bool = False
    # Events lost (queue overflow or every attempt failed) since the last delivered one.
    lost: int = 0
    task: asyncio.Task[None] | None = None

    index: int = 0

    @property
    def name(self) -> str:
        return target_name(self.index, self.url)


class WebhookSender:
    def __init__(self, config: WebhooksConfig, secret: str) -> None:
        assert config.key is not None  # sfu.config requires it whenever urls are set
        self.config = config
        self.key_id = config.key
        self.secret = secret
        self.endpoints = [_Endpoint(url, index=i) for i, url in enumerate(config.urls)]
        self._session: aiohttp.ClientSession | None = None

    def on_event(
        self,
        event: str,
        room: Room,
        participant: Participant | None,
        track: PublishedTrack | None,
    ) -> None:
        """A RoomRegistry listener: snapshot now, send later; never blocks."""
        self._queue(event_body(event, room, participant, track, now=time.time()))

    def on_alert(self, alert: Mapping[str, Any]) -> None:
        """A security alert (signaling/monitor.py): `{"event": "security_alert", "id",
        "createdAt", "securityAlert": {...}}`, signed and retried like room events."""
        now = time.time()
        body = {
            "event": "security_alert",
            "id": f"EV_{secrets.token_urlsafe(9)}",
            "createdAt": str(int(now)),
            "securityAlert": dict(alert),
        }
        self._queue(body)

    def _queue(self, body: dict[str, Any]) -> None:
        for endpoint in self.endpoints:
            if len(endpoint.queue) >= self.config.queue_size:
                endpoint.queue.popleft()
                endpoint.lost += 1
                record_webhook("dropped")
            endpoint.queue.append(body)
            endpoint.wake.set()

    def start(self) -> None:
        self._session = aiohttp.ClientSession()
        for endpoint in self.endpoints:
            endpoint.task = asyncio.create_task(self._run(endpoint))

    async def close(self, flush_timeout: float = 1.0) -> None:
        """Give queued events `flush_timeout` seconds to go out, then stop."""
        deadline = time.monotonic() + flush_timeout
        while time.monotonic() < deadline and any(e.queue or e.busy for e in self.endpoints):
            await asyncio.sleep(0.05)
        for endpoint in self.endpoints:
            if endpoint.task is not None:
                endpoint.task.cancel()
        await asyncio.gather(
            *(e.task for e in self.endpoints if e.task is not None), return_exceptions=True
        )
        if self._session is not None:
            await self._session.close()

    async def _run(self, endpoint: _Endpoint) -> None:
        while True:
            if not endpoint.queue:
                endpoint.wake.clear()
                await endpoint.wake.wait()
                continue
            event = endpoint.queue.popleft()
            endpoint.busy = True
            try:
                await self._deliver(endpoint, event)
            finally:
                endpoint.busy = False

    async def _deliver(self, endpoint: _Endpoint, event: dict[str, Any]) -> None:
        assert self._session is not None
        config = self.config
        problem = ""
        for attempt in range(config.max_attempts):
            if attempt:
                await asyncio.sleep(min(config.retry_delay * 2 ** (attempt - 1), MAX_RETRY_DELAY))
            reported = endpoint.lost
            body = orjson.dumps({**event, "numDropped": reported} if reported else event)
            headers = {
                "Authorization": sign(body, self.key_id, self.secret, time.time()),
                "Content-Type": CONTENT_TYPE,
            }
            try:
                async with self._session.post(
                    endpoint.url,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=config.timeout),
                ) as response:
                    if 200 <= response.status < 300:
                        endpoint.lost -= reported  # others may have been lost meanwhile
                        record_webhook("delivered")
                        return
                    problem = f"HTTP {response.status} {response.reason or ''}".rstrip()
            except TimeoutError:
                problem = f"no answer within webhooks.timeout ({config.timeout:g} s)"
            except aiohttp.ClientError as e:
                problem = f"{type(e).__name__}: {e}"
            log.warning(
                "webhook %s to %s, attempt %d/%d failed: %s",
                event["event"],
                endpoint.name,
                attempt + 1,
                config.max_attempts,
                problem,
            )
        log.error(
            "webhook %s to %s given up after %d attempts (webhooks.max_attempts): %s",
            event["event"],
            endpoint.name,
            config.max_attempts,
            problem,
        )
        endpoint.lost += 1
        record_webhook("failed")
