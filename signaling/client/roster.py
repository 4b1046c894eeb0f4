"""What a client knows of its room, kept up to date from the server's events (pure)."""

from __future__ import annotations

from signaling.client.errors import Frame


class Roster:
    """The `joined` payload and what the events since then changed.

    `participant` is this client's own ParticipantInfo, `participants` the others' by sid,
    tracks included.
    """

    def __init__(self) -> None:
        self.joined: Frame = {}
        self.room: Frame = {}
        self.participant: Frame = {}
        self.permissions: Frame = {}
        self.participants: dict[str, Frame] = {}

    def join(self, frame: Frame) -> None:
        self.joined = frame
        self.room = frame.get("room") or {}
        self.participant = frame.get("participant") or {}
        self.permissions = self.participant.get("permissions") or {}
        self.participants = {p["sid"]: p for p in frame.get("participants") or []}

    def apply(self, frame: Frame) -> str | None:
        """Apply an event; returns the sid of another participant whose info it changed."""
        kind = frame.get("type")
        if kind in ("participant_joined", "participant_updated"):
            return self._update_participant(frame.get("participant") or {})
        if kind == "participant_left":
            self.participants.pop(frame.get("sid", ""), None)
        elif kind == "permissions_changed":
            self.permissions = frame.get("permissions") or {}
            self.participant["permissions"] = self.permissions
        elif kind == "room_updated":
            self.room = frame.get("room") or self.room
        elif kind in ("track_published", "track_unpublished", "track_muted"):
            return self._apply_track_event(frame)
        return None

    def _update_participant(self, info: Frame) -> str | None:
        if info.get("sid") == self.participant.get("sid"):
            self.participant = info
            self.permissions = info.get("permissions") or self.permissions
        elif "sid" in info:
            sid: str = info["sid"]
            self.participants[sid] = info
            return sid
        return None

    def _apply_track_event(self, frame: Frame) -> str | None:
        sid = frame.get("participant_sid")
        owner = (
            self.participant
            if sid == self.participant.get("sid")
            else self.participants.get(sid or "")
        )
        if owner is None:
            return None
        tracks: list[Frame] = owner.setdefault("tracks", [])
        kind = frame.get("type")
        if kind == "track_published":
            track = frame.get("track") or {}
            tracks[:] = [t for t in tracks if t.get("sid") != track.get("sid")] + [track]
            return str(sid)
        if kind == "track_unpublished":
            tracks[:] = [t for t in tracks if t.get("sid") != frame.get("track_sid")]
        else:
            for track in tracks:
                if track.get("sid") == frame.get("track_sid"):
                    track["muted"] = bool(frame.get("muted"))
        return None
