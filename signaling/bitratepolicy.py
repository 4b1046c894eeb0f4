"""What the server does when a video track keeps exceeding `limits.max_video_bitrate`
(sfu/bitratecap.py decides when): tell the publisher, pause or resume the track for its
subscribers (as a server mute: they see `track_muted`), and audit each step."""

from __future__ import annotations

import logging

from sfu.bitratecap import PAUSE, RESUME
from sfu.forwarder import PublishedTrack
from sfu.participant import Participant
from sfu.room import Room
from signaling.state import ServerState

log = logging.getLogger("keyroom.server")


def enforce_bitrate(
    state: ServerState,
    room: Room,
    participant: Participant,
    track: PublishedTrack,
    action: str,
    bitrate: int,
    limit: int,
) -> None:
    participant.notify(
        {
            "type": "bitrate_exceeded",
            "track_sid": track.sid,
            "action": action,
            "bitrate": bitrate,
            "limit": limit,
        }
    )
    if action == PAUSE:
        room.set_muted(participant, track, True, notify_publisher=True)
    elif action == RESUME:
        room.set_muted(participant, track, False, notify_publisher=True)
    state.audit.record(
        "bitrate_exceeded", room=room.name, identity=participant.identity, track=track.sid,
        action=action, bitrate=bitrate, limit=limit,
    )  # fmt: skip
    log.warning(
        "room %s: %s's video track %s at %d bit/s, limits.max_video_bitrate %d: %s",
        room.name, participant.identity, track.sid, bitrate, limit, action,
    )  # fmt: skip
