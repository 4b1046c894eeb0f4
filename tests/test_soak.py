"""The CI-sized soak: churn with media around steady calls for about a minute; the server's RSS,
open fds and tasks stay flat after warm-up and the steady calls are never disconnected
(`keyroom soak --minutes 30` is the long run, docs/benchmarks.md)."""

from __future__ import annotations

from loadtest.soak import SoakPlan, run_soak
from loadtest.target import Target
from tests.conftest import KEY_ID, SECRET, ServerProcess


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
