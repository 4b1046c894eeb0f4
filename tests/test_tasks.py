"""TaskSet: background tasks are held until they end, failures logged, leftovers cancelled."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sfu.tasks import TaskSet


async def test_a_failed_task_is_logged_with_its_owner(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet("room demo")

    async def fail() -> None:
        raise ValueError("broken")

    with caplog.at_level(logging.WARNING, logger="keyroom.tasks"):
        task = tasks.spawn(fail())
        with pytest.raises(ValueError):
            # Done callbacks run in the order they were added: the TaskSet's first.
            await task
    assert len(tasks) == 0
    assert "room demo" in caplog.text and "broken" in caplog.text


async def test_close_cancels_what_is_still_running() -> None:
    tasks = TaskSet("session")
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = tasks.spawn(forever())
    await started.wait()
    assert len(tasks) == 1
    await tasks.close()
    assert task.cancelled() and len(tasks) == 0
