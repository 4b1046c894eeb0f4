"""The one clock: named deadlines and the driver that runs an owner from the event loop."""

from __future__ import annotations

import asyncio

from sfu.clock import Deadlines, TimerDriver, deadline_at


def test_deadlines_pop_due_in_time_order() -> None:
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("b", 2.0)
    deadlines.set("a", 1.0)
    deadlines.set("c", 5.0)
    assert deadlines.next() == 1.0
    assert deadlines.pop_due(2.5) == ["a", "b"]
    assert deadlines.next() == 5.0
    assert "c" in deadlines and "a" not in deadlines
    deadlines.clear("c")
    assert deadlines.next() is None
    assert deadlines.pop_due(100.0) == []


def test_deadline_at_converts_wall_time_to_loop_time() -> None:
    assert deadline_at(1_000_030.0, now=50.0, wall_now=1_000_000.0) == 80.0


class Owner:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.deadlines: Deadlines[str] = Deadlines()
        self.fired: list[str] = []
        self.failures = 0
        self.loop = loop

    def next_deadline(self) -> float | None:
        return self.deadlines.next()

    def handle_timer(self, now: float) -> None:
        for key in self.deadlines.pop_due(now):
            self.fired.append(key)
            if key == "boom":
                self.failures += 1
                self.deadlines.set("boom", now)
                raise RuntimeError("boom")


async def test_driver_fires_the_earliest_deadline_and_rearms() -> None:
    loop = asyncio.get_running_loop()
    owner = Owner(loop)
    driver = TimerDriver(owner)
    start = loop.time()
    owner.deadlines.set("later", start + 0.02)
    owner.deadlines.set("first", start + 0.01)
    driver.update()
    done = loop.create_future()
    loop.call_at(start + 0.2, done.set_result, None)
    await done
    assert owner.fired == ["first", "later"]
    driver.stop()


async def test_driver_survives_a_failing_owner_without_spinning() -> None:
    loop = asyncio.get_running_loop()
    owner = Owner(loop)
    driver = TimerDriver(owner)
    owner.deadlines.set("boom", loop.time())
    driver.update()
    done = loop.create_future()
    loop.call_at(loop.time() + 0.05, done.set_result, None)
    await done
    assert owner.failures == 1
    driver.stop()
