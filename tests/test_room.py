"""A room's timers on a fake clock: speaker rounds, empty timeout, max duration. No event loop:
the room computes its deadlines from the clock it is given and is driven via handle_timer(now)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from auth.grants import VideoGrant
from sfu.clock import PHASE_STEP, TICK, Phases
from sfu.config import LimitsConfig
from sfu.forwarder import PublishedTrack
from sfu.room import SPEAKER_INTERVAL, Room


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeParticipant:
    """What a room uses of a participant, without peer connections."""

    def __init__(self, sid: str, *, hidden: bool = False) -> None:
        self.sid = sid
        self.identity = sid.lower()
        self.grant = VideoGrant(room_join=True, room="r", hidden=hidden)
        self.hidden = hidden
        self.tracks: dict[str, PublishedTrack] = {}
        self.subscriptions: dict[str, Any] = {}
        self.frames: list[dict[str, Any]] = []
        self.auto_subscribe = False
        self.detached = False

    def notify(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)

    def info(self) -> dict[str, Any]:
        return {"sid": self.sid}

    def detach(self) -> None:
        self.detached = True

    def remove_track(self, track_sid: str) -> PublishedTrack | None:
        return self.tracks.pop(track_sid, None)

    def unsubscribe(self, track_sid: str) -> None:
        self.subscriptions.pop(track_sid, None)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]


def room(clock: FakeClock, **limits: Any) -> tuple[Room, list[str]]:
    events: list[str] = []
    r = Room("r", replace(LimitsConfig(), **limits), now=clock, phases=Phases())
    r.on_empty = lambda _room: events.append(f"empty@{clock.now}")
    r.on_expired = lambda _room: events.append(f"expired@{clock.now}")
    return r, events


def run_until(r: Room, clock: FakeClock, until: float) -> None:
    """What the TimerDriver does: fire at each deadline, in order, up to `until`."""
    while (deadline := r.next_deadline()) is not None and deadline <= until:
        clock.now = deadline
        r.handle_timer(deadline)
    clock.now = until


def microphone(publisher: FakeParticipant) -> PublishedTrack:
    track = PublishedTrack(
        sid=f"TR_{publisher.sid}",
        cid="mic",
        kind="audio",
        source="microphone",
        name="",
        publisher_sid=publisher.sid,
    )
    publisher.tracks[track.sid] = track
    return track


def speak(track: PublishedTrack, level: int, packets: int = 10) -> None:
    """As if `packets` packets carried this RFC 6464 level (0 loudest, 127 silence)."""
    track.loudness += (127 - level) * packets
    track.loudness_packets += packets


def test_a_room_nobody_joins_closes_after_empty_timeout() -> None:
    clock = FakeClock(1000.0)
    r, events = room(clock, empty_timeout=300.0)
    r.start()
    assert r.next_deadline() == 1300.0
    run_until(r, clock, 1299.9)
    assert events == []
    run_until(r, clock, 1300.0)
    assert events == ["empty@1300.0"]


def test_empty_timeout_counts_from_the_last_departure() -> None:
    clock = FakeClock(0.0)
    r, events = room(clock, empty_timeout=30.0)
    r.start()
    alice, bob = FakeParticipant("PA_a"), FakeParticipant("PA_b")
    clock.now = 10.0
    r.add(alice)  # type: ignore[arg-type]
    r.add(bob)  # type: ignore[arg-type]
    clock.now = 20.0
    r.detach(alice, "left")  # type: ignore[arg-type]
    run_until(r, clock, 100.0)
    assert events == []  # bob is still there
    r.detach(bob, "left")  # type: ignore[arg-type]
    assert alice.detached and bob.detached
    run_until(r, clock, 129.9)
    assert events == []
    run_until(r, clock, 130.0)
    assert events == ["empty@130.0"]


def test_a_join_cancels_the_empty_timeout_and_zero_closes_at_once() -> None:
    clock = FakeClock(0.0)
    r, events = room(clock, empty_timeout=0.0)
    r.start()
    assert r.next_deadline() == 0.0
    r.add(FakeParticipant("PA_a"))  # type: ignore[arg-type]
    assert r.next_deadline() == SPEAKER_INTERVAL  # the next speaker round, nothing earlier
    run_until(r, clock, 50.0)
    assert events == []


def test_max_duration_expires_the_room_with_people_in_it() -> None:
    clock = FakeClock(5.0)
    r, events = room(clock, max_duration=60.0, empty_timeout=300.0)
    r.start()
    r.add(FakeParticipant("PA_a"))  # type: ignore[arg-type]
    run_until(r, clock, 64.9)
    assert events == []
    run_until(r, clock, 65.0)
    assert events == ["expired@65.0"]
    run_until(r, clock, 1000.0)
    assert events == ["expired@65.0"]


def test_no_expiry_without_max_duration_and_nothing_after_close() -> None:
    clock = FakeClock(0.0)
    r, events = room(clock, max_duration=0.0, empty_timeout=10.0)
    r.start()
    r.add(FakeParticipant("PA_a"))  # type: ignore[arg-type]
    run_until(r, clock, 10_000.0)
    assert events == []
    r.close()
    assert r.next_deadline() is None


def test_speaker_rounds_every_half_second_announce_changes_only() -> None:
    clock = FakeClock(0.0)
    r, _events = room(clock)
    r.start()
    loud, quiet, ghost = (
        FakeParticipant("PA_l"),
        FakeParticipant("PA_q"),
        FakeParticipant("PA_g", hidden=True),
    )
    for p in (loud, quiet, ghost):
        r.add(p)  # type: ignore[arg-type]
    assert SPEAKER_INTERVAL == 0.5 and r.next_deadline() == 0.5
    loud_mic, quiet_mic, ghost_mic = microphone(loud), microphone(quiet), microphone(ghost)

    speak(loud_mic, 10)
    speak(quiet_mic, 100)  # -100 dBov: below the speaking threshold
    speak(ghost_mic, 0)  # hidden participants are never announced
    run_until(r, clock, 0.49)
    assert quiet.of_type("active_speakers") == []
    run_until(r, clock, 0.5)
    (frame,) = quiet.of_type("active_speakers")
    assert [s["sid"] for s in frame["speakers"]] == ["PA_l"]
    assert r.next_deadline() == 1.0

    speak(loud_mic, 12)
    run_until(r, clock, 1.0)
    assert len(quiet.of_type("active_speakers")) == 1  # same speakers: nothing sent

    run_until(r, clock, 1.5)  # silence: the speaker list empties
    last = quiet.of_type("active_speakers")[-1]
    assert last["speakers"] == [] and len(quiet.of_type("active_speakers")) == 2


def test_many_rooms_spread_their_speaker_rounds_over_the_tick() -> None:
    """Every room's speaker round in one loop pass held the loop for rooms x ~30 µs: rooms take
    tick phases as participants do, so 64 rooms' rounds fall in 8 passes, not one; a small
    server keeps its one pass, and a closed room frees its phase."""
    clock = FakeClock(100.0)
    phases = Phases()
    rooms = [Room(f"r{n}", LimitsConfig(), now=clock, phases=phases) for n in range(64)]
    for n, r in enumerate(rooms):
        r.add(FakeParticipant(f"PA_{n}"))  # type: ignore[arg-type]
    due = [r.next_deadline() for r in rooms]
    assert len(set(due)) == 8
    assert max(due.count(d) for d in set(due)) == 8
    assert {round((d - 100.0) % TICK, 3) for d in due if d is not None} == {
        round(n * PHASE_STEP, 3) for n in range(8)
    }
    # Each round stays on its room's phase as the rounds go on.
    for r in rooms:
        first = r.next_deadline()
        assert first is not None
        clock.now = first
        r.handle_timer(first)
        assert r.next_deadline() == round(first + SPEAKER_INTERVAL, 3)
    # A few rooms share one pass (the idle server's wake-ups), and closing frees phases.
    for r in rooms:
        r.close()
    few = Phases()
    assert {Room(f"s{n}", LimitsConfig(), now=clock, phases=few).phase for n in range(8)} == {0}


def test_a_muted_microphone_does_not_speak() -> None:
    clock = FakeClock(0.0)
    r, _events = room(clock)
    talker, listener = FakeParticipant("PA_t"), FakeParticipant("PA_l")
    r.add(talker)  # type: ignore[arg-type]
    r.add(listener)  # type: ignore[arg-type]
    mic = microphone(talker)
    mic.muted = True
    speak(mic, 5)
    run_until(r, clock, 0.5)
    assert listener.of_type("active_speakers") == []
