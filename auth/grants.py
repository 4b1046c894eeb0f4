"""The `video` grant of an access token (PROTOCOL section 1), parsed strictly.

Error messages name the offending field and the expected type, never the value: values come from
tokens, which must not end up in logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SOURCES = ("camera", "microphone", "screen_share", "screen_share_audio")
SOURCE_KIND = {
    "camera": "video",
    "microphone": "audio",
    "screen_share": "video",
    "screen_share_audio": "audio",
}

MAX_ROOM_CHARS = 128
# Room names are compared byte for byte; glob characters would invite pattern matching somewhere.
WILDCARD_CHARS = frozenset("*?")

# camelCase claim name -> VideoGrant field, for the boolean fields.
BOOL_CLAIMS = {
    "roomJoin": "room_join",
    "canPublish": "can_publish",
    "canSubscribe": "can_subscribe",
    "canPublishData": "can_publish_data",
    "canUpdateOwnMetadata": "can_update_own_metadata",
    "hidden": "hidden",
    "recorder": "recorder",
    "roomAdmin": "room_admin",
    "roomCreate": "room_create",
    "roomList": "room_list",
    "roomRecord": "room_record",
}
SOURCES_CLAIM = "canPublishSources"
# Client kinds a grant may publish from, as the client's signed key proof names them
# (auth/keybinding.py): never a user-agent string.
CLIENTS_CLAIM = "clients"
CLIENT_KINDS = ("browser", "python")


def check_room_name(room: object, what: str = "room") -> str:
    """Return `room` if it is a valid room name (1..128 printable chars, no wildcard), else raise
    ValueError naming `what`."""
    if not isinstance(room, str):
        raise ValueError(f"{what} must be a string")
    if not 0 < len(room) <= MAX_ROOM_CHARS or not room.isprintable():
        raise ValueError(f"{what} must be 1..{MAX_ROOM_CHARS} printable characters")
    if not WILDCARD_CHARS.isdisjoint(room):
        raise ValueError(f"{what} must not contain wildcards")
    return room


def _names(values: object, allowed: tuple[str, ...], what: str, noun: str) -> tuple[str, ...]:
    """Validate a list of names out of `allowed`; duplicates are dropped, order kept."""
    if not isinstance(values, list | tuple):
        raise ValueError(f"{what} must be a list of {noun}")
    for value in values:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{what} may only contain {', '.join(allowed)}")
    return tuple(dict.fromkeys(values))


def check_sources(sources: object, what: str = f"video.{SOURCES_CLAIM}") -> tuple[str, ...]:
    """Validate a list of track source names; duplicates are dropped, order kept."""
    return _names(sources, SOURCES, what, "source names")


def check_clients(clients: object, what: str = f"video.{CLIENTS_CLAIM}") -> tuple[str, ...]:
    """Validate a list of client kinds; duplicates are dropped, order kept."""
    return _names(clients, CLIENT_KINDS, what, "client kinds")


@dataclass(frozen=True)
class VideoGrant:
    """What a token allows. Fields hold what the token says; `hidden` also removes publishing,
    which `to_permissions` and `auth.policy` apply.

    `can_publish_data` left as None takes the value of `can_publish` (LiveKit's default), so
    after construction it is always a bool. `can_publish_sources` None means unrestricted; a
    tuple (even empty) restricts publishing to its sources.
    """

    room: str | None = None
    room_join: bool = False
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool | None = None
    can_publish_sources: tuple[str, ...] | None = None
    can_update_own_metadata: bool = False
    hidden: bool = False
    recorder: bool = False
    room_admin: bool = False
    room_create: bool = False
    room_list: bool = False
    room_record: bool = False
    # None: any client may publish; a tuple: only a client proving one of these kinds.
    clients: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.can_publish_data is None:
            object.__setattr__(self, "can_publish_data", self.can_publish)
        if self.can_publish_sources is not None:
            sources = check_sources(self.can_publish_sources, "can_publish_sources")
            object.__setattr__(self, "can_publish_sources", sources)
        if self.clients is not None:
            object.__setattr__(self, "clients", check_clients(self.clients, "clients"))
        if self.room is not None:
            check_room_name(self.room)
        for name in BOOL_CLAIMS.values():
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool")

    @classmethod
    def from_claim(cls, claim: object) -> VideoGrant:
        """Parse LiveKit's camelCase `video` claim. Absent fields take LiveKit's defaults;
        fields we do not use (ingressAdmin, agent, ...) are ignored so LiveKit SDK tokens work.
        Raise ValueError on a wrong type, an invalid room or an unknown source."""
        if not isinstance(claim, Mapping):
            raise ValueError("video must be an object")
        kwargs: dict[str, Any] = {}
        for name, field_name in BOOL_CLAIMS.items():
            value = claim.get(name)
            if value is None:
                continue
            if not isinstance(value, bool):
                raise ValueError(f"video.{name} must be true or false")
            kwargs[field_name] = value
        room = claim.get("room")
        # LiveKit SDKs leave the room out when unset; an empty string means the same.
        if room is not None and room != "":
            kwargs["room"] = check_room_name(room, "video.room")
        sources = claim.get(SOURCES_CLAIM)
        if sources is not None:
            kwargs["can_publish_sources"] = check_sources(sources)
        clients = claim.get(CLIENTS_CLAIM)
        if clients is not None:
            kwargs["clients"] = check_clients(clients)
        return cls(**kwargs)

    @property
    def publishes(self) -> bool:
        """Effective canPublish: hidden participants never publish."""
        return self.can_publish and not self.hidden

    @property
    def publishes_data(self) -> bool:
        """Effective canPublishData: data carries the sender's identity, so hidden ones may not."""
        return bool(self.can_publish_data) and not self.hidden

    def to_permissions(self) -> dict[str, Any]:
        """The effective permissions in camelCase, as sent in `joined.participant.permissions`."""
        sources = SOURCES if self.can_publish_sources is None else self.can_publish_sources
        return {
            "canPublish": self.publishes,
            "canSubscribe": self.can_subscribe,
            "canPublishData": self.publishes_data,
            "canPublishSources": list(sources),
            "canUpdateOwnMetadata": self.can_update_own_metadata,
            "hidden": self.hidden,
            "recorder": self.recorder,
        }


def apply_role(role: Mapping[str, Any], claim: Mapping[str, Any]) -> VideoGrant:
    """The grant of a token naming a server-side role: the role's grant set, narrowed by the
    token's explicit `video` fields, never widened (a boolean stays true only if both say so;
    sources are intersected). Room and roomJoin come from the token: a role names rights, the
    token names the room."""
    base = VideoGrant.from_claim(role)
    token = VideoGrant.from_claim(claim)
    merged: dict[str, Any] = {}
    for name, field_name in BOOL_CLAIMS.items():
        role_value = getattr(base, field_name)
        merged[field_name] = role_value and claim.get(name, role_value) is True
    merged["room_join"] = token.room_join
    merged["room"] = token.room
    sources = base.can_publish_sources
    if token.can_publish_sources is not None:
        allowed = token.can_publish_sources if sources is None else sources
        sources = tuple(s for s in token.can_publish_sources if s in allowed)
    merged["can_publish_sources"] = sources
    clients = base.clients
    if token.clients is not None:
        allowed_clients = token.clients if clients is None else clients
        clients = tuple(c for c in token.clients if c in allowed_clients)
    merged["clients"] = clients
    return VideoGrant(**merged)


def role_relay_only(roles: Mapping[str, Mapping[str, Any]], role: str | None) -> bool:
    """A role may force TURN-only media on its holders (`relay_only = true`). It is a role
    attribute, not a token grant: no token field can set or clear it."""
    return role is not None and roles.get(role, {}).get("relay_only") is True


def role_requires_binding(roles: Mapping[str, Mapping[str, Any]], role: str | None) -> bool:
    """A role may demand tokens bound to a client key (`require_bound_tokens = true`)."""
    return role is not None and roles.get(role, {}).get("require_bound_tokens") is True
