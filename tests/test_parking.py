"""The parking lot's memory of ended sessions, by resume token and by participant sid
(LiveKit's SDKs resume by sid): sans-I/O, time passed in."""

from __future__ import annotations

from signaling.parking import Ended, ParkingLot


def test_an_ended_session_is_found_by_sid_until_its_deadline() -> None:
    lot = ParkingLot(lambda parked: None)
    lot.end("token-a", Ended("revoked", 4410, "PA_a"), until=100.0)
    lot.end("token-b", Ended("removed", 4410), until=50.0)  # no sid: by token only
    assert lot.ended_sid("PA_a") == Ended("revoked", 4410, "PA_a") == lot.ended("token-a")
    assert lot.ended_sid("PA_b") is None and lot.ended("token-b") is not None
    assert lot.next_deadline() == 50.0
    lot.handle_timer(60.0)
    assert lot.ended("token-b") is None and lot.ended_sid("PA_a") is not None
    lot.handle_timer(100.0)
    assert lot.ended_sid("PA_a") is None and lot.ended("token-a") is None
    assert lot.next_deadline() is None
