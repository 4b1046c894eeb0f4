"""Every grant check in one place, so the rules stay consistent and auditable.

Each function is pure and returns a Decision whose reason is precise enough for the audit log
(it names the missing grant); clients are only ever told `forbidden`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from auth.grants import SOURCE_KIND, VideoGrant, check_sources


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def _allow(reason: str) -> Decision:
    return Decision(True, reason)


def _deny(reason: str) -> Decision:
    return Decision(False, reason)


def may_publish_track(grant: VideoGrant, kind: str, source: str) -> Decision:
    # Client-supplied strings are not echoed: only known names reach the audit log.
    if kind not in ("audio", "video"):
        return _deny("unknown track kind")
    if source not in SOURCE_KIND:
        return _deny("unknown track source")
    if SOURCE_KIND[source] != kind:
        return _deny(f"source {source} carries {SOURCE_KIND[source]}, not {kind}")
    if grant.hidden:
        return _deny("hidden participants cannot publish")
    # canPublish false forbids everything, whatever canPublishSources says.
    if not grant.can_publish:
        return _deny("canPublish is false")
    if grant.can_publish_sources is not None and source not in grant.can_publish_sources:
        return _deny(f"source {source} not in canPublishSources")
    return _allow(f"canPublish {source}")


def may_subscribe(grant: VideoGrant) -> Decision:
    if not grant.can_subscribe:
        return _deny("canSubscribe is false")
    return _allow("canSubscribe")


def may_publish_data(grant: VideoGrant) -> Decision:
    if grant.hidden:
        return _deny("hidden participants cannot publish data")
    if not grant.can_publish_data:
        return _deny("canPublishData is false")
    return _allow("canPublishData")


def may_update_own_metadata(grant: VideoGrant) -> Decision:
    if not grant.can_update_own_metadata:
        return _deny("canUpdateOwnMetadata is false")
    return _allow("canUpdateOwnMetadata")


def may_admin_room(grant: VideoGrant, room: str) -> Decision:
    if not grant.room_admin:
        return _deny("roomAdmin is false")
    if grant.room is None:
        return _deny("roomAdmin without video.room")
    # Byte for byte: no case folding or Unicode normalisation (PROTOCOL section 1).
    if grant.room != room:
        return _deny("roomAdmin is for another room")
    return _allow("roomAdmin")


def may_list_rooms(grant: VideoGrant) -> Decision:
    if not grant.room_list:
        return _deny("roomList is false")
    return _allow("roomList")


def may_create_room(grant: VideoGrant) -> Decision:
    if not grant.room_create:
        return _deny("roomCreate is false")
    return _allow("roomCreate")


def may_admin_node(grant: VideoGrant) -> Decision:
    """Node-wide incident calls (revoke a key, an identity everywhere): a token that may create
    and list every room, with no room of its own (the operator's, not a room admin's)."""
    if not (grant.room_create and grant.room_list):
        return _deny("roomCreate and roomList are needed")
    if grant.room is not None:
        return _deny("a node-wide call with a room-scoped token")
    return _allow("roomCreate roomList")


def may_record(grant: VideoGrant, room: str) -> Decision:
    """roomRecord is global as in LiveKit, unless the token names a room: then only that one."""
    if not grant.room_record:
        return _deny("roomRecord is false")
    if grant.room is not None and grant.room != room:
        return _deny("roomRecord is for another room")
    return _allow("roomRecord")


# camelCase permission (PROTOCOL section 4) -> VideoGrant field an admin may change live.
LIVE_PERMISSIONS = {
    "canPublish": "can_publish",
    "canSubscribe": "can_subscribe",
    "canPublishData": "can_publish_data",
    "canUpdateOwnMetadata": "can_update_own_metadata",
}


def updated_grant(grant: VideoGrant, permissions: object) -> VideoGrant:
    """`grant` with an admin's live permission change applied; ValueError names a bad field.

    `hidden` cannot change during a session: others would see someone appear or vanish without a
    join or leave. Room and admin grants belong to tokens, not to live changes."""
    if not isinstance(permissions, dict):
        raise ValueError("permissions must be an object")
    changes: dict[str, object] = {}
    for name, value in permissions.items():
        if name == "canPublishSources":
            changes["can_publish_sources"] = check_sources(value, "permissions.canPublishSources")
        elif name == "hidden":
            if value != grant.hidden:
                raise ValueError("permissions.hidden cannot change during a session")
        elif name in LIVE_PERMISSIONS:
            if not isinstance(value, bool):
                raise ValueError(f"permissions.{name} must be true or false")
            changes[LIVE_PERMISSIONS[name]] = value
        else:
            raise ValueError(f"permissions.{name} cannot be changed live")
    return replace(grant, **changes)  # type: ignore[arg-type]


def live_permissions(grant: VideoGrant) -> dict[str, Any]:
    """What an admin's live change left `grant` allowed, as stored for a later rejoin."""
    kept: dict[str, Any] = {name: getattr(grant, f) for name, f in LIVE_PERMISSIONS.items()}
    sources = grant.can_publish_sources
    kept["canPublishSources"] = None if sources is None else list(sources)
    return kept


def narrowed_grant(grant: VideoGrant, permissions: Mapping[str, Any]) -> VideoGrant:
    """A token's `grant` under an admin's earlier live change (`live_permissions`): a right stays
    only if both allow it, sources are intersected. Never widened: an admin's live upgrade
    lasts for its session only, a downgrade for the token's lifetime."""
    changes: dict[str, Any] = {
        f: getattr(grant, f) and permissions.get(name, True) is True
        for name, f in LIVE_PERMISSIONS.items()
    }
    sources = permissions.get("canPublishSources")
    if isinstance(sources, list):
        allowed = grant.can_publish_sources
        changes["can_publish_sources"] = tuple(
            s for s in sources if allowed is None or s in allowed
        )
    return replace(grant, **changes)
