"""Acceptance (issue 15), CI-sized: a normal 10-participant meeting with churn, bound and bearer
tokens, video within its limit, raises no security alert on a real server. The five-minute run
is `python -m loadtest.quietmeeting --minutes 5` (docs/incident-response.md)."""

from __future__ import annotations

import asyncio

from loadtest.quietmeeting import quiet_meeting


async def test_a_normal_meeting_with_churn_raises_no_alert() -> None:
    # In a thread: quiet_meeting runs its own event loop, as the command does.
    result = await asyncio.to_thread(quiet_meeting, 10, 12.0, 0.75)
    assert result["failures"] == []
    assert result["joins"] >= 10 + 10  # everyone, and the churned rejoins
    assert result["alerts"] == []
