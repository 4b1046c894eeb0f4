"""Revoked while the socket is down: `resume` is refused with the leave the client missed
(PROTOCOL 2.7: the original token is re-checked on resume)."""

from __future__ import annotations

import json

import aiohttp

from tests.admin_helpers import call
from tests.conftest import ServerProcess, wait_logged


async def test_revoked_while_away_resume_is_refused_with_removed(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.ws_url) as ws:
            await ws.send_str(json.dumps({"type": "join", "req": 1, "token": server.token("al")}))
            joined = json.loads((await ws.receive(timeout=10)).data)
            assert joined["type"] == "joined"
        # The socket is down (as after a network blip); an operator kicks with ?revoke=true.
        admin = server.token("ops", grants={"roomAdmin": True})
        status, _ = await call(
            server, "DELETE", "/api/rooms/room1/participants/al?revoke=true", admin
        )
        assert status == 204
        async with http.ws_connect(server.ws_url) as ws:
            resume = {"type": "resume", "req": 1, "resume_token": joined["resume_token"]}
            await ws.send_str(json.dumps(resume))
            frames = [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
            assert frames == [{"type": "leave", "reason": "revoked"}]
            assert ws.close_code == 4410  # removed
    assert server.runtime()["participants"] == 0
    log = await wait_logged(server, '"event":"resume_refused"')
    lines = [line for line in log.splitlines() if '"event":"resume_refused"' in line]
    records = [json.loads(line[line.index("{") :]) for line in lines]
    assert [(r["ip"], r["reason"]) for r in records] == [("127.0.0.1", "revoked")]
