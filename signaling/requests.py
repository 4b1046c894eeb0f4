"""The requests a joined participant makes of its room (PROTOCOL 2.3, 2.4, 2.6): publish, mute,
subscribe, metadata. Synchronous and free of I/O: each takes the typed message and returns the
direct reply, or raises MessageError with the protocol error code.
"""

from __future__ import annotations

from auth import displaytext
from auth.grants import SOURCE_KIND
from auth.policy import may_publish_track, may_subscribe, may_update_own_metadata
from sfu.forwarder import PublishedTrack
from sfu.participant import Participant
from sfu.room import Room, new_sid
from signaling.codec import MessageError
from signaling.messages import (
    AddTrack,
    ClientMessage,
    IceRestart,
    Mute,
    Ok,
    ServerMessage,
    SetQuality,
    Subscribe,
    TrackPublished,
    Unpublish,
    UpdateMetadata,
)
from signaling.state import ServerState

DEFAULT_SOURCE = {"video": "camera", "audio": "microphone"}


def ok(message: ClientMessage) -> Ok | None:
    """`ok` answers a request only when it carries a `req` to answer."""
    return Ok(req=message.req) if message.req is not None else None


def add_track(
    state: ServerState, participant: Participant, room: Room, message: AddTrack
) -> ServerMessage:
    req, kind = message.req, message.kind
    source = message.source if isinstance(message.source, str) else DEFAULT_SOURCE[kind]
    if SOURCE_KIND[source] != kind:
        raise MessageError("invalid_message", f"source {source} cannot carry {kind}", req)
    decision = may_publish_track(participant.grant, kind, source)
    if not decision.allowed:
        state.audit.record(
            "publish_refused", room=room.name, identity=participant.identity,
            kind=kind, source=source, reason=decision.reason,
        )  # fmt: skip
        raise MessageError("forbidden", "you may not publish this track", req)
    if room.limits.e2ee_required and message.encryption != "e2ee":
        state.audit.record(
            "publish_refused", room=room.name, identity=participant.identity,
            kind=kind, source=source, reason="e2ee_required: track not declared encrypted",
        )  # fmt: skip
        raise MessageError("forbidden", "this room requires end-to-end encrypted tracks", req)
    if participant.track_by_cid(message.cid) is not None:
        raise MessageError("conflict", "a track with this cid was already added", req)
    if state.node_tracks_full():
        raise MessageError("limit_exceeded", "the server has its maximum of tracks", req)
    try:
        _check_track_limits(participant, room, req)
    except MessageError as exc:
        # A room at its limit is an operator's question ("why can't Bob present?"): audited.
        state.audit.record(
            "publish_refused", room=room.name, identity=participant.identity,
            kind=kind, source=source, reason=exc.message,
        )  # fmt: skip
        raise
    # A source an admin muted stays muted, republished or not.
    muted = message.muted or state.store.admin_muted(room.name, participant.identity, source)
    track = PublishedTrack(
        sid=new_sid("TR"),
        cid=message.cid,
        kind=kind,
        source=source,
        name=message.name,
        publisher_sid=participant.sid,
        muted=muted,
        keyframe_interval=state.config.rtc.keyframe_interval,
        encryption=message.encryption,
    )
    track.red_wanted = not message.disable_red
    participant.add_track(track)
    return TrackPublished(cid=track.cid, track=track.info(), req=req)


def _check_track_limits(participant: Participant, room: Room, req: int | None) -> None:
    limits = room.limits
    if limits.max_tracks_per_participant and (
        len(participant.tracks) >= limits.max_tracks_per_participant
    ):
        raise MessageError("limit_exceeded", "too many tracks for this participant", req)
    if limits.max_publishers and not participant.tracks:
        publishers = sum(1 for p in room.participants.values() if p.tracks)
        if publishers >= limits.max_publishers:
            raise MessageError("limit_exceeded", "the room has its maximum of publishers", req)


def subscribe(
    state: ServerState, participant: Participant, room: Room, message: Subscribe
) -> ServerMessage | None:
    req, wanted = message.req, message.subscribe
    decision = may_subscribe(participant.grant)
    if wanted and not decision.allowed:
        state.audit.record(
            "subscribe_refused", room=room.name, identity=participant.identity,
            reason=decision.reason,
        )  # fmt: skip
        raise MessageError("forbidden", "you may not subscribe", req)
    found = []
    for track_sid in message.track_sids:
        owner = room.find_track(track_sid)
        if owner is None or owner[0] is participant or owner[0].hidden or not owner[1].bound:
            raise MessageError("not_found", f"no such track {track_sid[:64]}", req)
        found.append(owner[1])
    limit = room.limits.max_subscriptions_per_participant
    if wanted and limit:
        new = sum(1 for t in found if t.sid not in participant.subscriptions)
        if len(participant.subscriptions) + new > limit:
            raise MessageError("limit_exceeded", "too many subscriptions", req)
    for track in found:
        if wanted:
            participant.subscribe(track)
        else:
            participant.unsubscribe(track.sid)
    return ok(message)


def update_metadata(
    state: ServerState, participant: Participant, room: Room, message: UpdateMetadata
) -> ServerMessage | None:
    req = message.req
    decision = may_update_own_metadata(participant.grant)
    if not decision.allowed:
        state.audit.record(
            "metadata_refused", room=room.name, identity=participant.identity,
            reason=decision.reason,
        )  # fmt: skip
        raise MessageError("forbidden", "you may not update your metadata", req)
    limits = state.config.limits
    name = message.name if isinstance(message.name, str) else participant.name
    metadata = message.metadata if isinstance(message.metadata, str) else participant.metadata
    why = displaytext.check(name, limits.max_name_bytes)
    if why is not None:
        raise MessageError("invalid_message", f"name {why}", req)
    why = displaytext.check(metadata, limits.max_metadata_bytes, metadata=True)
    if why is not None:
        raise MessageError("invalid_message", f"metadata {why}", req)
    participant.name, participant.metadata = name, metadata
    room.participant_updated(participant)
    return ok(message)


def unpublish(
    state: ServerState, participant: Participant, room: Room, message: Unpublish
) -> ServerMessage | None:
    if not room.unpublish(participant, message.track_sid, notify_publisher=True):
        raise MessageError("not_found", "no such track of yours", message.req)
    return ok(message)


def mute(
    state: ServerState, participant: Participant, room: Room, message: Mute
) -> ServerMessage | None:
    track = participant.tracks.get(message.track_sid)
    if track is None:
        raise MessageError("not_found", "no such track of yours", message.req)
    if not message.muted and state.store.admin_muted(room.name, participant.identity, track.source):
        # Not audited: the admin's mute is, and a client could repeat this request at will.
        raise MessageError("forbidden", "an admin muted this track", message.req)
    if not message.muted and participant.feedback.bitrate_cap.paused(track.sid):
        raise MessageError("forbidden", "paused: over limits.max_video_bitrate", message.req)
    room.set_muted(participant, track, message.muted, notify_publisher=False)
    return ok(message)


def ice_restart(
    state: ServerState, participant: Participant, room: Room, message: IceRestart
) -> ServerMessage | None:
    """A new subscriber offer with new ICE credentials follows (the client answers it)."""
    participant.restart_ice()
    return ok(message)


QUALITY_LAYERS = {"low": 0, "medium": 1, "high": 2}


def set_quality(
    state: ServerState, participant: Participant, room: Room, message: SetQuality
) -> ServerMessage | None:
    if room.find_track(message.track_sid) is None:
        raise MessageError("not_found", "no such track", message.req)
    # Not subscribed (yet): nothing to cap; a single-layer track has one layer to give.
    participant.set_quality(message.track_sid, QUALITY_LAYERS[message.quality])
    return ok(message)
