"""What the admin API's calls do to rooms and participants, whatever HTTP shape carries them
(keyroom's REST API in signaling/admin.py, LiveKit's Twirp RoomService in
signaling/livekit/twirp.py): the grant checks and audit of the call are the caller's."""

from __future__ import annotations

import time

from auth.grants import VideoGrant
from auth.policy import live_permissions
from auth.tokens import Claims
from sfu.forwarder import PublishedTrack
from sfu.participant import Participant
from sfu.room import Room
from signaling.state import ServerState


async def remove_identity(
    state: ServerState, room: Room, identity: str, *, revoke: bool, claims: Claims
) -> bool:
    """End `identity`'s session (and, with `revoke`, refuse its tokens issued until now, for as
    long as any can live); False when it is not in the room (and nothing was revoked)."""
    if revoke:
        state.store.revoke(
            room.name, identity, now=time.time(), keep_for=state.config.auth.max_token_ttl
        )
        state.audit.record("revoked", room=room.name, identity=identity, key_id=claims.key_id)
    participant = room.by_identity(identity)
    if participant is None:
        return revoke
    reason = "revoked" if revoke else "removed"
    state.audit.record("kicked", room=room.name, identity=identity, reason=reason)
    await state.end_participant(participant, room, reason)
    return True


def update_participant(
    state: ServerState,
    room: Room,
    participant: Participant,
    *,
    name: str,
    metadata: str,
    grant: VideoGrant | None,
    claims: Claims,
) -> None:
    changed = [f for f, new, old in (("name", name, participant.name),
               ("metadata", metadata, participant.metadata)) if new != old]  # fmt: skip
    state.audit.record(
        "participant_updated", room=room.name, identity=participant.identity,
        by=claims.identity, changed=changed + (["permissions"] if grant else []),
    )  # fmt: skip
    participant.name, participant.metadata = name, metadata
    if grant is None:
        room.participant_updated(participant)
        return
    state.audit.record(
        "permissions_changed", room=room.name, identity=participant.identity,
        permissions=grant.to_permissions(), key_id=claims.key_id,
    )  # fmt: skip
    # It sticks: a rejoin with a token issued before now gets no more than this.
    state.store.narrow(
        room.name, participant.identity, live_permissions(grant), now=time.time(),
        keep_for=state.config.auth.max_token_ttl,
    )  # fmt: skip
    room.apply_grant(participant, grant)


def mute_track(
    state: ServerState, room: Room, participant: Participant, track: PublishedTrack, muted: bool
) -> None:
    # Sticky: the publisher cannot unmute it, nor publish its source again unmuted, until an
    # admin unmutes it (for the tokens issued before now).
    state.store.admin_mute(
        room.name, participant.identity, track.source, muted, now=time.time(),
        keep_for=state.config.auth.max_token_ttl,
    )  # fmt: skip
    room.set_muted(participant, track, muted, notify_publisher=True)
