"""The client's room state (signaling.client.roster), fed frames by hand."""

from __future__ import annotations

from typing import Any

from signaling.client.roster import Roster

ME = {"sid": "PA_me", "identity": "me", "permissions": {"canPublish": True}, "tracks": []}
BOB = {"sid": "PA_bob", "identity": "bob", "tracks": []}


def joined() -> Roster:
    roster = Roster()
    frame: dict[str, Any] = {
        "type": "joined",
        "room": {"name": "r"},
        "participant": dict(ME),
        "participants": [dict(BOB)],
    }
    roster.join(frame)
    return roster


def test_join_takes_the_payload_apart() -> None:
    roster = joined()
    assert roster.room == {"name": "r"} and roster.participant["sid"] == "PA_me"
    assert roster.permissions == {"canPublish": True}
    assert list(roster.participants) == ["PA_bob"]


def test_events_about_others_name_whose_tracks_to_resolve() -> None:
    roster = joined()
    carol = {"sid": "PA_carol", "identity": "carol"}
    assert roster.apply({"type": "participant_joined", "participant": carol}) == "PA_carol"
    cam = {"sid": "TR_cam", "muted": False}
    published = {"type": "track_published", "participant_sid": "PA_bob", "track": cam}
    assert roster.apply(published) == "PA_bob"
    muted = {"type": "track_muted", "participant_sid": "PA_bob", "track_sid": "TR_cam"}
    assert roster.apply({**muted, "muted": True}) is None
    assert roster.participants["PA_bob"]["tracks"] == [{"sid": "TR_cam", "muted": True}]
    gone = {"type": "track_unpublished", "participant_sid": "PA_bob", "track_sid": "TR_cam"}
    assert roster.apply(gone) is None
    assert roster.participants["PA_bob"]["tracks"] == []
    assert roster.apply({"type": "participant_left", "sid": "PA_bob"}) is None
    assert list(roster.participants) == ["PA_carol"]


def test_events_about_oneself_update_own_info_and_permissions() -> None:
    roster = joined()
    updated = {**ME, "name": "Me", "permissions": {"canPublish": False}}
    assert roster.apply({"type": "participant_updated", "participant": updated}) is None
    assert roster.participant["name"] == "Me" and roster.permissions == {"canPublish": False}
    roster.apply({"type": "permissions_changed", "permissions": {"canSubscribe": True}})
    assert roster.participant["permissions"] == roster.permissions == {"canSubscribe": True}
    roster.apply({"type": "room_updated", "room": {"name": "r", "metadata": "m"}})
    assert roster.room["metadata"] == "m"
    roster.apply({"type": "track_published", "participant_sid": "PA_me", "track": {"sid": "T"}})
    assert roster.participant["tracks"] == [{"sid": "T"}]
    # An event about an unknown participant changes nothing.
    assert roster.apply({"type": "track_published", "participant_sid": "PA_x"}) is None
