"""Detection rules and the security-event stream (issue 15), each rule by a scripted scenario
with time passed in; and a normal 10-participant meeting with churn that raises nothing."""

from __future__ import annotations

import random
from dataclasses import replace

from auth.alerts import CRITICAL, WARNING, AlertAggregator, SecurityEvent, classify
from auth.detection import Detector, within_hours
from sfu.config import SecurityConfig

T0 = 1_000.0
WALL = 1_800_000_000.0 - 1_800_000_000.0 % 86400 + 12 * 3600  # 12:00 UTC on some day


def kinds(events: list[SecurityEvent]) -> list[str]:
    return [e.kind for e in events]


def test_identity_joining_from_many_addresses() -> None:
    detector = Detector(SecurityConfig(identity_addresses=4, identity_addresses_window=300))
    found = [detector.joined("mallory", f"203.0.113.{n}", "r", T0 + 10 * n, WALL) for n in range(4)]
    assert kinds(found[2]) == [] and kinds(found[3]) == ["identity_many_addresses"]
    assert found[3][0].fields["addresses"] == 4 and found[3][0].subject == "mallory"
    # Spread over more than the window, the same four addresses are no pattern.
    slow = Detector(SecurityConfig(identity_addresses=4, identity_addresses_window=300))
    spread = [slow.joined("roamer", f"203.0.113.{n}", "r", T0 + 120 * n, WALL) for n in range(8)]
    assert not any(spread)


def test_many_identities_from_one_address() -> None:
    detector = Detector(SecurityConfig(address_identities=20))
    found = [detector.joined(f"user-{n}", "198.51.100.9", "r", T0 + n, WALL) for n in range(20)]
    assert not any(found[:19]) and kinds(found[19]) == ["address_many_identities"]
    assert found[19][0].subject == "198.51.100.9"


def test_token_used_after_its_identity_or_key_was_revoked() -> None:
    detector = Detector(SecurityConfig())
    for reason in ("revoked", "key_revoked"):
        fields = {"ip": "192.0.2.5", "identity": "eve", "room": "r", "reason": reason}
        (event,) = detector.refused(fields, T0)
        assert (event.kind, event.severity, event.subject) == (
            "revoked_token_used",
            CRITICAL,
            "eve",
        )
    assert detector.refused({"ip": "192.0.2.5", "reason": "expired"}, T0) == []


def test_joins_outside_a_rooms_hours() -> None:
    config = SecurityConfig(room_hours={"standup": "08:00-18:00", "night": "22:00-06:00"})
    detector = Detector(config)
    noon, late = WALL, WALL + 9 * 3600  # 12:00 and 21:00 UTC
    assert detector.joined("a", "192.0.2.1", "standup", T0, noon) == []
    assert kinds(detector.joined("a", "192.0.2.1", "standup", T0, late)) == ["join_outside_hours"]
    assert kinds(detector.joined("b", "192.0.2.2", "night", T0, noon)) == ["join_outside_hours"]
    assert detector.joined("b", "192.0.2.2", "night", T0, WALL + 11 * 3600) == []  # 23:00
    assert detector.joined("c", "192.0.2.3", "unlisted", T0, late) == []
    assert within_hours(WALL - 12 * 3600 + 3 * 3600, (22 * 60, 6 * 60))  # 03:00 wraps


def test_uplink_far_above_its_grant_on_two_samples() -> None:
    detector = Detector(SecurityConfig(uplink_factor=3.0))
    limit = 1_000_000
    hog = ("r", "hog", [("video", 5_000_000)], limit)
    fine = ("r", "ok", [("video", 2_900_000), ("audio", 64_000)], limit)
    assert detector.uplinks([hog, fine]) == []  # one burst
    assert kinds(detector.uplinks([hog, fine])) == ["uplink_over_grant"]
    assert detector.uplinks([fine]) == []  # the hog left: its streak is forgotten
    assert detector.uplinks([hog]) == []
    # Rooms without a per-track limit: only the absolute cap, when set.
    capped = Detector(SecurityConfig(max_uplink_bitrate=10_000_000))
    two = ("r", "x", [("video", 6_000_000), ("video", 6_000_000)], 0)
    assert capped.uplinks([two]) == [] and kinds(capped.uplinks([two])) == ["uplink_over_grant"]
    unlimited = Detector(SecurityConfig())
    assert unlimited.uplinks([("r", "x", [("video", 50_000_000)], 0)]) == []
    assert unlimited.uplinks([("r", "x", [("video", 50_000_000)], 0)]) == []


def test_refused_join_spike_for_one_room() -> None:
    detector = Detector(SecurityConfig(room_refusals=20, room_refusals_window=60))
    found = [
        detector.refused({"room": "board", "reason": "signature", "ip": f"10.0.0.{n}"}, T0 + n)
        for n in range(20)
    ]
    assert not any(found[:19]) and kinds(found[19]) == ["room_refusal_spike"]
    assert detector.refused({"reason": "malformed", "ip": "10.0.0.1"}, T0 + 21) == []


def test_drop_spikes_between_samples() -> None:
    detector = Detector(SecurityConfig(drop_spike=500))
    assert detector.drops({"foreign_source": 0}, T0) == []
    assert detector.drops({"foreign_source": 2000, "nack_limited": 100}, T0 + 5) == []  # 400/s
    found = detector.drops({"foreign_source": 2000, "nack_limited": 5000}, T0 + 10)
    assert [(e.kind, e.subject) for e in found] == [("drop_spike", "nack_limited")]


def test_audit_records_become_typed_events() -> None:
    pop = classify("join_refused", {"ip": "192.0.2.1", "identity": "a", "reason": "pop_failed"})
    assert pop is not None and (pop.kind, pop.severity) == ("proof_failed", WARNING)
    reuse = classify("join_refused", {"ip": "192.0.2.1", "reason": "jti_reused"})
    assert reuse is not None and reuse.kind == "token_reuse" and reuse.subject == "192.0.2.1"
    key = classify("key_revoked", {"key_id": "k1", "by": "ops", "sessions": 3})
    assert key is not None and (key.kind, key.severity) == ("key_revoked", CRITICAL)
    for event, kind in [
        ("brake_engaged", "brake_engaged"),
        ("admin_refused", "admin_refused"),
        ("abuse_close", "abuse_close"),
        ("offer_refused", "offer_refused"),
        ("kicked", "admin_action"),
        ("publish_refused", "grant_refused"),
    ]:
        classified = classify(event, {"ip": "192.0.2.1", "identity": "a"})
        assert classified is not None and classified.kind == kind
    assert classify("join_accepted", {"identity": "a"}) is None
    assert classify("join_refused", {"reason": "expired"}) is None


def test_a_flood_gives_one_alert_and_one_summary_per_window() -> None:
    aggregator = AlertAggregator(window=60)
    event = SecurityEvent("brake_engaged", WARNING, "203.0.113.7", {"ip": "203.0.113.7"})
    sent = [aggregator.add(event, T0 + n * 0.01) for n in range(10_000)]
    first = [alert for alert in sent if alert is not None]
    assert len(first) == 1 and first[0]["count"] == 1 and first[0]["ip"] == "203.0.113.7"
    assert aggregator.due(T0 + 59) == []
    (summary,) = aggregator.due(T0 + 60)
    assert summary["count"] == 9_999 and summary["summary"] is True
    assert aggregator.add(event, T0 + 61) is not None  # a new window
    bounded = AlertAggregator(window=60, max_subjects=3)
    alerts = [bounded.add(replace(event, subject=f"s{n}"), T0) for n in range(100)]
    assert sum(a is not None for a in alerts) == 4  # three subjects, then one shared `*`


def normal_meeting(detector: Detector, aggregator: AlertAggregator, seconds: float) -> list[dict]:
    """Ten participants, each from its own address (some switch network once), joining,
    leaving and rejoining at random for `seconds`; publishers within their grant."""
    rng = random.Random(15)
    alerts: list[dict] = []
    people = [f"p{n}" for n in range(10)]
    address = {p: f"203.0.113.{n + 1}" for n, p in enumerate(people)}
    present: set[str] = set()
    now = T0
    while now < T0 + seconds:
        now += rng.uniform(0.5, 4.0)
        who = rng.choice(people)
        if who in present and rng.random() < 0.5:
            present.discard(who)
        else:
            if rng.random() < 0.05:  # Wi-Fi to mobile data: a second address
                address[who] = f"198.51.100.{people.index(who) + 1}"
            present.add(who)
            for event in detector.joined(who, address[who], "standup", now, WALL + now - T0):
                alerts += [a for a in [aggregator.add(event, now)] if a]
        if int(now) % 5 == 0:
            samples = [
                ("standup", who, [("video", rng.randint(300_000, 1_400_000)), ("audio", 40_000)],
                 1_500_000)
                for who in present
            ]  # fmt: skip
            for event in detector.uplinks(samples):
                alerts += [a for a in [aggregator.add(event, now)] if a]
            for event in detector.drops({"foreign_source": int(now - T0) // 10}, now):
                alerts += [a for a in [aggregator.add(event, now)] if a]
        alerts += aggregator.due(now)
    return alerts


def test_a_normal_meeting_with_churn_raises_nothing() -> None:
    config = SecurityConfig(room_hours={"standup": "08:00-18:00"})
    assert normal_meeting(Detector(config), AlertAggregator(config.alert_window), 300) == []
