"""keyroom's info dicts (participant, track, room, permissions) as LiveKit protobuf messages.

Pure: plain dicts in, `livekit.protocol` messages out. The ids are keyroom's own (`PA_`, `TR_`,
`RM_`), which LiveKit's SDKs require as prefixes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from livekit.protocol import models

KIND_TYPE = {"audio": models.AUDIO, "video": models.VIDEO}
TYPE_KIND = {models.AUDIO: "audio", models.VIDEO: "video"}
SOURCE_ENUM = {
    "camera": models.CAMERA,
    "microphone": models.MICROPHONE,
    "screen_share": models.SCREEN_SHARE,
    "screen_share_audio": models.SCREEN_SHARE_AUDIO,
}
ENUM_SOURCE = {value: name for name, value in SOURCE_ENUM.items()}

# The server's version as LiveKit's SDKs read it: they gate features on the protocol number.
SERVER_PROTOCOL = 16


# Simulcast layers by RID as LiveKit's SDKs name them (q, h, f), else by position.
RID_QUALITY = {"q": models.LOW, "h": models.MEDIUM, "f": models.HIGH}
POSITION_QUALITY = (models.LOW, models.MEDIUM, models.HIGH)


def video_layers(
    simulcast: Any, declared: Mapping[int, tuple[int, int]]
) -> list[models.VideoLayer]:
    """keyroom's simulcast layers (lowest first: `{rid, active, bitrate}`) as LiveKit's, with
    the dimensions the publisher declared (`declared`: quality -> (w, h)), smallest first."""
    sizes = sorted(declared.values(), key=lambda size: size[0] * size[1])
    layers = []
    for index, layer in enumerate(simulcast if isinstance(simulcast, list) else ()):
        rid = str(layer.get("rid", ""))
        width, height = sizes[index] if index < len(sizes) else (0, 0)
        layers.append(
            models.VideoLayer(
                quality=RID_QUALITY.get(rid, POSITION_QUALITY[min(index, 2)]), rid=rid,
                bitrate=int(layer.get("bitrate", 0) or 0), width=width, height=height,
                spatial_layer=index,
            )
        )  # fmt: skip
    return layers


def track_info(info: Mapping[str, Any]) -> models.TrackInfo:
    kind = str(info.get("kind", "video"))
    layers = video_layers(info.get("simulcast"), info.get("declared_layers", {}))
    return models.TrackInfo(
        sid=str(info["sid"]),
        type=KIND_TYPE.get(kind, models.VIDEO),
        name=str(info.get("name", "")),
        muted=bool(info.get("muted", False)),
        source=SOURCE_ENUM.get(str(info.get("source", "")), models.UNKNOWN),
        mime_type=str(info.get("mime_type") or ""),
        width=int(info.get("width", 0) or 0),
        height=int(info.get("height", 0) or 0),
        # A subscriber's SDK decrypts a track only when told it is encrypted.
        encryption=models.Encryption.GCM
        if info.get("encryption") == "e2ee"
        else models.Encryption.NONE,
        simulcast=len(layers) > 1,
        layers=layers,
    )


def permission(permissions: Mapping[str, Any]) -> models.ParticipantPermission:
    return models.ParticipantPermission(
        can_subscribe=bool(permissions.get("canSubscribe")),
        can_publish=bool(permissions.get("canPublish")),
        can_publish_data=bool(permissions.get("canPublishData")),
        can_publish_sources=[
            SOURCE_ENUM[s] for s in permissions.get("canPublishSources", ()) if s in SOURCE_ENUM
        ],
        can_update_metadata=bool(permissions.get("canUpdateOwnMetadata")),
        hidden=bool(permissions.get("hidden")),
        recorder=bool(permissions.get("recorder")),
    )


def participant_info(
    info: Mapping[str, Any], state: Any = models.ParticipantInfo.ACTIVE
) -> models.ParticipantInfo:
    tracks = [track_info(t) for t in info.get("tracks", ())]
    result = models.ParticipantInfo(
        sid=str(info["sid"]),
        identity=str(info.get("identity", "")),
        name=str(info.get("name", "")),
        metadata=str(info.get("metadata", "")),
        joined_at=int(info.get("joined_at", 0)),
        joined_at_ms=int(info.get("joined_at", 0)) * 1000,
        state=state,
        tracks=tracks,
        is_publisher=bool(tracks),
    )
    if "permissions" in info:
        result.permission.CopyFrom(permission(info["permissions"]))
    return result


def room_info(info: Mapping[str, Any]) -> models.Room:
    limits = info.get("limits", {})
    created = int(info.get("created_at", 0))
    return models.Room(
        sid=str(info.get("sid", "")),
        name=str(info.get("name", "")),
        metadata=str(info.get("metadata", "")),
        num_participants=int(info.get("num_participants", 0)),
        creation_time=created,
        creation_time_ms=created * 1000,
        empty_timeout=int(limits.get("empty_timeout", 0) or 0),
        max_participants=int(limits.get("max_participants", 0) or 0),
    )
