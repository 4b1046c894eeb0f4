"""The `video` grant parser and every policy decision built on it."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest

from auth.grants import SOURCE_KIND, SOURCES, VideoGrant, check_room_name
from auth.policy import (
    Decision,
    may_admin_room,
    may_create_room,
    may_list_rooms,
    may_publish_data,
    may_publish_track,
    may_record,
    may_subscribe,
    may_update_own_metadata,
)


def grant(**claim: Any) -> VideoGrant:
    return VideoGrant.from_claim({"room": "r1", "roomJoin": True, **claim})


# --- parsing ------------------------------------------------------------------------------


def test_sources_and_kinds() -> None:
    assert SOURCES == ("camera", "microphone", "screen_share", "screen_share_audio")
    assert [SOURCE_KIND[s] for s in SOURCES] == ["video", "audio", "video", "audio"]


def test_livekit_defaults_when_absent() -> None:
    g = VideoGrant.from_claim({})
    assert g == VideoGrant()
    assert (g.room, g.room_join) == (None, False)
    assert g.can_publish and g.can_subscribe and g.can_publish_data
    assert g.can_publish_sources is None
    assert not (g.can_update_own_metadata or g.hidden or g.recorder)
    assert not (g.room_admin or g.room_create or g.room_list or g.room_record)


def test_full_claim_parsed() -> None:
    g = VideoGrant.from_claim(
        {
            "room": "r1",
            "roomJoin": True,
            "canPublish": True,
            "canSubscribe": False,
            "canPublishData": False,
            "canPublishSources": ["camera", "microphone"],
            "canUpdateOwnMetadata": True,
            "hidden": False,
            "recorder": True,
            "roomAdmin": True,
            "roomCreate": True,
            "roomList": True,
            "roomRecord": True,
        }
    )
    assert g == VideoGrant(
        room="r1",
        room_join=True,
        can_publish=True,
        can_subscribe=False,
        can_publish_data=False,
        can_publish_sources=("camera", "microphone"),
        can_update_own_metadata=True,
        recorder=True,
        room_admin=True,
        room_create=True,
        room_list=True,
        room_record=True,
    )


def test_can_publish_data_defaults_to_can_publish() -> None:
    assert grant(canPublish=False).can_publish_data is False
    assert grant(canPublish=True).can_publish_data is True
    assert grant(canPublish=False, canPublishData=True).can_publish_data is True
    assert VideoGrant(can_publish=False).can_publish_data is False


def test_unknown_livekit_fields_ignored() -> None:
    g = grant(ingressAdmin=True, agent=True, destinationRoom="x", canSubscribeMetrics=True)
    assert g == grant()


def test_empty_room_is_no_room() -> None:
    assert VideoGrant.from_claim({"room": ""}).room is None


@pytest.mark.parametrize(
    "claim, field",
    [
        ({"canPublish": "false"}, "video.canPublish"),
        ({"canSubscribe": 0}, "video.canSubscribe"),
        ({"roomJoin": 1}, "video.roomJoin"),
        ({"roomAdmin": "yes"}, "video.roomAdmin"),
        ({"hidden": []}, "video.hidden"),
        ({"room": 5}, "video.room"),
        ({"canPublishSources": "camera"}, "video.canPublishSources"),
        ({"canPublishSources": [1]}, "video.canPublishSources"),
    ],
)
def test_wrong_types_refused_naming_the_field(claim: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError) as exc:
        VideoGrant.from_claim(claim)
    assert str(exc.value).startswith(field + " ")


def test_video_must_be_an_object() -> None:
    with pytest.raises(ValueError, match="video must be an object"):
        VideoGrant.from_claim(["room"])


@pytest.mark.parametrize("source", ["CAMERA", "Camera", "screenshare", "SCREEN_SHARE", ""])
def test_unknown_source_names_refused(source: str) -> None:
    with pytest.raises(ValueError, match="canPublishSources may only contain"):
        grant(canPublishSources=["microphone", source])


def test_duplicate_sources_dropped() -> None:
    g = grant(canPublishSources=["camera", "microphone", "camera"])
    assert g.can_publish_sources == ("camera", "microphone")


@pytest.mark.parametrize("room", ["*", "room*", "r?", "x" * 129, "a\nb", "tab\there", "\u200f"])
def test_bad_room_names_refused(room: str) -> None:
    with pytest.raises(ValueError, match="^video.room must"):
        VideoGrant.from_claim({"room": room})


def test_check_room_name_refuses_empty() -> None:
    with pytest.raises(ValueError, match="^room must be 1..128 printable"):
        check_room_name("")


def test_room_names_kept_exactly() -> None:
    for room in ["Café", unicodedata.normalize("NFD", "Café"), "x" * 128, "a b", "日本"]:
        assert VideoGrant.from_claim({"room": room}).room == room


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ValueError):
        VideoGrant(can_publish_sources=("webcam",))
    with pytest.raises(ValueError):
        VideoGrant(can_publish="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        VideoGrant(room="a*")


# --- permissions --------------------------------------------------------------------------


def test_permissions_unrestricted() -> None:
    assert grant().to_permissions() == {
        "canPublish": True,
        "canSubscribe": True,
        "canPublishData": True,
        "canPublishSources": list(SOURCES),
        "canUpdateOwnMetadata": False,
        "hidden": False,
        "recorder": False,
    }


def test_permissions_restricted() -> None:
    perms = grant(
        canPublish=False, canPublishSources=["microphone"], canUpdateOwnMetadata=True
    ).to_permissions()
    assert perms["canPublish"] is False and perms["canPublishData"] is False
    assert perms["canPublishSources"] == ["microphone"]
    assert perms["canUpdateOwnMetadata"] is True


def test_hidden_participant_cannot_publish_in_permissions() -> None:
    perms = grant(hidden=True, recorder=True, canPublish=True).to_permissions()
    assert perms["canPublish"] is False and perms["canPublishData"] is False
    assert perms["hidden"] is True and perms["recorder"] is True
    assert perms["canSubscribe"] is True


# --- policy -------------------------------------------------------------------------------


def denied(decision: Decision, reason_part: str) -> bool:
    return not decision.allowed and reason_part in decision.reason


@pytest.mark.parametrize("source", SOURCES)
def test_publish_allowed_by_default(source: str) -> None:
    d = may_publish_track(grant(), SOURCE_KIND[source], source)
    assert d.allowed and source in d.reason


def test_can_publish_false_forbids_every_source_even_listed() -> None:
    g = grant(canPublish=False, canPublishSources=list(SOURCES))
    for source in SOURCES:
        assert denied(may_publish_track(g, SOURCE_KIND[source], source), "canPublish is false")


def test_can_publish_sources_restricts() -> None:
    g = grant(canPublishSources=["microphone"])
    assert may_publish_track(g, "audio", "microphone").allowed
    assert denied(may_publish_track(g, "video", "camera"), "camera not in canPublishSources")
    assert denied(may_publish_track(g, "audio", "screen_share_audio"), "not in canPublishSources")


def test_empty_can_publish_sources_forbids_all() -> None:
    g = grant(canPublishSources=[])
    assert not any(may_publish_track(g, SOURCE_KIND[s], s).allowed for s in SOURCES)


def test_source_must_match_kind() -> None:
    assert denied(may_publish_track(grant(), "audio", "camera"), "camera carries video")
    assert denied(may_publish_track(grant(), "video", "microphone"), "carries audio")


def test_unknown_kind_or_source_denied_without_echo() -> None:
    d = may_publish_track(grant(), "hologram", "camera")
    assert denied(d, "unknown track kind") and "hologram" not in d.reason
    d = may_publish_track(grant(), "video", "webcam")
    assert denied(d, "unknown track source") and "webcam" not in d.reason


def test_hidden_forbids_publishing() -> None:
    g = grant(hidden=True)
    assert denied(may_publish_track(g, "video", "camera"), "hidden")
    assert denied(may_publish_data(g), "hidden")


def test_subscribe() -> None:
    assert may_subscribe(grant()).allowed
    assert denied(may_subscribe(grant(canSubscribe=False)), "canSubscribe is false")


def test_publish_data() -> None:
    assert may_publish_data(grant()).allowed
    assert denied(may_publish_data(grant(canPublish=False)), "canPublishData is false")
    assert denied(may_publish_data(grant(canPublishData=False)), "canPublishData is false")
    assert may_publish_data(grant(canPublish=False, canPublishData=True)).allowed


def test_update_own_metadata() -> None:
    assert denied(may_update_own_metadata(grant()), "canUpdateOwnMetadata is false")
    assert may_update_own_metadata(grant(canUpdateOwnMetadata=True)).allowed


def test_admin_room_for_that_exact_room_only() -> None:
    g = grant(room="Café", roomAdmin=True)
    assert may_admin_room(g, "Café").allowed
    assert denied(may_admin_room(g, "café"), "another room")
    assert denied(may_admin_room(g, unicodedata.normalize("NFD", "Café")), "another room")
    assert denied(may_admin_room(g, "other"), "another room")


def test_admin_room_needs_the_grant_and_a_room() -> None:
    assert denied(may_admin_room(grant(), "r1"), "roomAdmin is false")
    no_room = VideoGrant.from_claim({"roomAdmin": True})
    assert denied(may_admin_room(no_room, "r1"), "without video.room")


def test_list_and_create_rooms() -> None:
    assert denied(may_list_rooms(grant()), "roomList is false")
    assert may_list_rooms(grant(roomList=True)).allowed
    assert denied(may_create_room(grant(roomAdmin=True)), "roomCreate is false")
    assert may_create_room(grant(roomCreate=True)).allowed


def test_record() -> None:
    assert denied(may_record(grant(), "r1"), "roomRecord is false")
    assert may_record(grant(roomRecord=True), "r1").allowed
    assert denied(may_record(grant(roomRecord=True), "r2"), "another room")
    global_grant = VideoGrant.from_claim({"roomRecord": True})
    assert may_record(global_grant, "any").allowed
