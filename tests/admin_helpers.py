"""HTTP calls to the admin API, shared by tests."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.conftest import ServerProcess


async def call(
    server: ServerProcess, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(
            method, server.http_url + path, json=body, headers=headers
        ) as response:
            data = await response.json() if response.status != 204 else None
            return response.status, data
