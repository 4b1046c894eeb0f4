"""The CI-sized soak: churn with media around steady calls for about a minute; the server's RSS,
open fds and tasks stay flat after warm-up and the steady calls are never disconnected
(`keyroom soak --minutes 30` is the long run, docs/benchmarks.md)."""

from __future__ import annotations

import aiohttp

from loadtest.soak import SoakPlan, run_soak
from loadtest.target import Target
from tests.conftest import KEY_ID, SECRET, ServerProcess, eventually


async def test_churn_with_media_leaves_the_server_flat(server: ServerProcess) -> None:
    target = Target(server.ws_url, KEY_ID, SECRET, server.process.pid, dev=True)
    plan = SoakPlan(duration=50, warmup=15, sample_interval=5)
    result = await run_soak(target, plan)
    report = result.format()
    steps = {k: n for k, n in result.errors.items() if not k.startswith("client:")}
    assert not steps, f"churn steps failed: {steps}\n{report}"
    assert result.passed, report
    # A soak that churned too little proves nothing: every room went through many cycles, each
    # with 3 publishes, 1 unpublish, 4 joins, 3 leaves, 1 dropped connection and 1 resume.
    assert result.cycles >= 10, report
    print(report)


async def test_sessions_ended_while_their_first_offer_gathers_leave_no_socket(
    server: ServerProcess,
) -> None:
    """What the soak found: a participant closed while the server's first subscriber offer is
    still gathering (a join dropped or taken over at once) leaked the UDP socket being bound."""
    before = server.runtime()["udp_sockets"]
    async with aiohttp.ClientSession() as http:
        for n in range(60):
            async with http.ws_connect(server.ws_url) as ws:
                await ws.send_json({"type": "join", "req": 1, "token": server.token(f"brief-{n}")})
                await ws.receive_json(timeout=10)  # joined: the offer is being made now
                await ws.send_json({"type": "leave", "req": 2})
                await ws.receive_json(timeout=10)
    await eventually(
        lambda: server.runtime()["participants"] == 0 and server.runtime()["udp_sockets"] <= before,
        timeout=10,
        what=lambda: f"sockets {before} -> {server.runtime()['udp_sockets']}",
    )
