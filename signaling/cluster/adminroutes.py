"""The admin API from any node (PROTOCOL 4): a call about a room held by another node is
forwarded there over HTTP (with the caller's bearer token, checked and audited by the owner);
`GET /api/rooms` lists the rooms of every live node, each tagged with its `node`."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from signaling.cluster.node import REDIS_DOWN, ClusterNode

# Marks a forwarded call: the receiving node answers it itself (no forwarding loops).
FORWARDED = "X-Keyroom-Forwarded"
FORWARD_TIMEOUT = 5.0
Handler = Any  # aiohttp's middleware handler type


def http_base(ws_url: str) -> str:
    """ws(s)://host:port/rtc -> http(s)://host:port"""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


def add_cluster_middleware(app: web.Application, node: ClusterNode) -> None:
    forwarder = Forwarder(node)
    app.middlewares.append(forwarder.middleware)
    app.on_cleanup.append(forwarder.close)


class Forwarder:
    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self._http: aiohttp.ClientSession | None = None

    async def close(self, app: web.Application) -> None:
        if self._http is not None:
            await self._http.close()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT)
            self._http = aiohttp.ClientSession(timeout=timeout)
        return self._http

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get(FORWARDED) or not request.path.startswith("/api/rooms"):
            return await handler(request)  # type: ignore[no-any-return]
        room = request.match_info.get("room")
        if room is None:
            if request.method == "GET" and request.path.rstrip("/") == "/api/rooms":
                return await self._list_everywhere(request, handler)
            return await handler(request)  # type: ignore[no-any-return]
        if self.node.state.rooms.get(room) is not None:
            return await handler(request)  # type: ignore[no-any-return]
        try:
            owner = await self.node.owner_url(room)
        except REDIS_DOWN:
            owner = None  # answered from what this node knows: most likely not_found
        if owner is None or owner[0] == self.node.node_id:
            return await handler(request)  # type: ignore[no-any-return]
        return await self._forward(request, http_base(owner[1]))

    async def _forward(self, request: web.Request, base: str) -> web.StreamResponse:
        headers = {
            k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")
        }
        headers[FORWARDED] = self.node.node_id
        if request.remote is not None:
            # The caller's address, for the owner's audit log and brake: believed only where
            # the owner lists this node among `[server] trusted_proxies`.
            headers["X-Forwarded-For"] = request.remote
        body = await request.read()
        try:
            async with self._session().request(
                request.method, base + request.path_qs, headers=headers, data=body or None
            ) as reply:
                data = await reply.read()
                kept = {"Content-Type": reply.headers["Content-Type"]} if data else {}
                return web.Response(body=data or None, status=reply.status, headers=kept)
        except (aiohttp.ClientError, TimeoutError):
            return _error("unavailable", "the room's node did not answer")

    async def _list_everywhere(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        here = await handler(request)
        if here.status != 200 or not isinstance(here, web.Response):
            return here  # type: ignore[no-any-return]
        rooms = [{**r, "node": self.node.node_id} for r in orjson.loads(here.text or "{}")["rooms"]]
        try:
            urls = await self.node.node_urls()
        except REDIS_DOWN:
            return web.json_response({"rooms": rooms, "unreachable": ["redis"]})
        others = {n: u for n, u in urls.items() if n != self.node.node_id}
        answers = await asyncio.gather(
            *(self._rooms_of(request, http_base(u)) for u in others.values())
        )
        unreachable = []
        for node_id, answer in zip(others, answers, strict=True):
            if answer is None:
                unreachable.append(node_id)
            else:
                rooms += [{**r, "node": node_id} for r in answer]
        result: dict[str, Any] = {"rooms": rooms}
        if unreachable:
            result["unreachable"] = unreachable
        return web.json_response(result)

    async def _rooms_of(self, request: web.Request, base: str) -> list[dict[str, Any]] | None:
        headers = {FORWARDED: self.node.node_id}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        try:
            async with self._session().get(base + "/api/rooms", headers=headers) as reply:
                if reply.status != 200:
                    return None
                rooms: list[dict[str, Any]] = (await reply.json())["rooms"]
                return rooms
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            return None


def _error(code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=503)
