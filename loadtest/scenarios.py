"""The named load-test scenarios (cheap to import: `keyroom --help` lists them)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Scenario:
    name: str
    video_publishers: int = 0
    audio_publishers: int = 0
    subscribers: int = 0
    duration: float = 20.0
    joins_per_second: float = 10.0
    codec: str = "vp8"
    video_bitrate: int = 500_000
    loss: float = 0.0  # simulated, dropped by publishers before sending
    churn_interval: float = 0.0  # seconds between one subscriber leaving and rejoining
    bad_token_share: float = 0.0  # auth-storm: share of extra joins that use a bad token
    # Share of subscribers joining with a token bound to a key of theirs, proving it (issue 15):
    # their join times are reported apart from the bearer tokens' of the same run.
    bound_share: float = 0.0
    rooms: int = 1  # each room gets the publishers and subscribers above
    record: bool = False  # record every track of each room (admin API) while measuring
    e2ee: bool = False  # publishers declare "e2ee" and send end-to-end encrypted frames
    # 0: each frame leaves as one burst, every publisher on the same frame phase. > 0: as a
    # browser's pacer does, each frame spread over this many ms, each publisher on a random phase.
    pace_ms: float = 0.0
    # Video publishers send their clip's keyframe only at the start and when asked (PLI/FIR),
    # as a browser's encoder does; False: the clip restarts at its keyframe every pass.
    keyframes_on_request: bool = False
    # Publishers resend what the server NACKs from a cache of their latest packets, as browsers
    # do (loadtest/sentcache.py); False: NACKs go unanswered, every uplink loss stays lost.
    answer_nacks: bool = True
    # > 0: only this many subscribers of each room read their media; the kernel drops the
    # others' RTP (loadtest/deaf.py), so the generator keeps up with a busy server.
    listening: int = 0
    # Seconds between the last join and the measured window: the ramp of joins loads the server
    # far above the scenario's steady load, and its backlog must not be measured as steady.
    warmup: float = 0.0


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("5x5-video", video_publishers=5, subscribers=5),
        Scenario("10x10-audio", audio_publishers=10, subscribers=10),
        Scenario("1x50-video", video_publishers=1, subscribers=50),
        Scenario("churn", video_publishers=2, audio_publishers=2, subscribers=8, churn_interval=1),
        Scenario("auth-storm", video_publishers=1, subscribers=10, bad_token_share=0.5),
    )
}


def with_overrides(scenario: Scenario, **overrides: Any) -> Scenario:
    """The scenario with every override that is not None applied."""
    return replace(scenario, **{k: v for k, v in overrides.items() if v is not None})
