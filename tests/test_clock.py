"""The one clock: named deadlines and the driver that runs an owner from the event loop."""

from __future__ import annotations

import asyncio
from collections import Counter

from sfu.clock import (
    PER_PHASE,
    PHASE_STEP,
    PHASES,
    TICK,
    TICK_SLACK,
    Deadlines,
    Phases,
    TimerDriver,
    deadline_at,
    on_tick,
)


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


def test_periodic_deadlines_land_on_one_grid_never_a_tick_late() -> None:
    assert on_tick(101.0) == 101.0 and on_tick(0.5) == 0.5  # grid instants stay
    # A timer that fired a little late re-arms for the same phase, not a whole tick later.
    assert on_tick(101.0 + 0.003) == 101.0
    assert on_tick(101.0 + TICK_SLACK + 0.001) == 101.0 + TICK
    for n in range(2000):
        when = 1234.5 + n * 0.00731
        due = on_tick(when)
        assert when - TICK_SLACK <= due < when - TICK_SLACK + TICK
        assert due / TICK == int(due / TICK)  # exactly on the grid, the same float for all


async def test_owners_due_in_one_slot_fire_in_one_loop_pass() -> None:
    """Two owners whose periodic deadlines were meant 30 ms apart share one wake-up."""
    loop = asyncio.get_running_loop()
    passes: list[int] = []
    counter = [0]

    def count_passes() -> None:  # runs once per loop iteration while the test waits
        counter[0] += 1
        loop.call_soon(count_passes)

    owners = [Owner(loop), Owner(loop)]
    slot = on_tick(loop.time() + TICK)
    for n, owner in enumerate(owners):
        owner.deadlines.set("report", on_tick(slot - 0.04 + 0.03 * n))
        owner.handle_timer = lambda now, o=owner: (
            passes.append(counter[0]),
            o.deadlines.pop_due(now),
        )  # type: ignore[method-assign]
    drivers = [TimerDriver(owner) for owner in owners]
    for driver in drivers:
        driver.update()
    done = loop.create_future()
    loop.call_at(owners[0].deadlines.next() + 0.05, done.set_result, None)  # type: ignore[operator]
    count_passes()
    await done
    assert len(passes) == 2 and passes[0] == passes[1]
    for driver in drivers:
        driver.stop()


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


def test_phases_spread_per_participant_work_over_the_tick() -> None:
    # A participant's reports fall on the grid shifted by its phase, so a busy server's reports
    # are not all due in one wake-up: PHASES of them once there are enough owners, balanced.
    dealer = Phases()
    phases = [dealer.take() for _ in range(PHASES * PER_PHASE * 2)]
    counts = Counter(phases)
    assert len(counts) == PHASES and max(counts.values()) - min(counts.values()) <= 1
    assert all(0 <= p < TICK for p in phases)
    for phase in counts:
        for when in (100.0, 100.01, 100.2, 100.26, 123.456):
            due = on_tick(when, phase)
            assert when - TICK_SLACK <= due < when - TICK_SLACK + TICK
            assert round((due - phase) / TICK, 9) == int(round((due - phase) / TICK, 9))
            assert due * 1000 == round(due * 1000)  # a whole millisecond, as the loop's timers
    assert on_tick(100.0, 0.0) == on_tick(100.0)


def test_a_small_server_keeps_few_phases_and_departures_free_theirs() -> None:
    # Each phase in use is a loop wake-up per report period: a few owners share one.
    dealer = Phases()
    few = [dealer.take() for _ in range(PER_PHASE)]
    assert set(few) == {0.0}
    more = [dealer.take() for _ in range(PER_PHASE)]
    assert set(more) == {PHASE_STEP}  # the ninth owner opened a second phase, filled next
    for phase in few + more:
        dealer.give_back(phase)
    assert {dealer.take() for _ in range(PER_PHASE)} == {0.0}
