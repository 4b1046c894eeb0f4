"""LiveKit's `SignalRequest`/`SignalResponse` frames against keyroom's messages: pure, no I/O.

In: a binary frame parses to the keyroom request it means (`AddTrack`, `Offer`, ...), to a
`Local` answer the edge sends itself (pong), or to nothing (a request keyroom accepts and has
no use for). A frame that does not parse, or names no request keyroom knows, raises
`MessageError` like a bad JSON frame.

Out: `Translator` turns each frame keyroom's session and room send (joined, offers, room events)
into the `SignalResponse`s a LiveKit SDK expects: room events become `ParticipantUpdate`s with
the participant's whole current info, as LiveKit's server sends them.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from signaling.codec import MessageError
from signaling.livekit.convert import (
    ENUM_SOURCE,
    POSITION_QUALITY,
    RID_QUALITY,
    SERVER_PROTOCOL,
    TYPE_KIND,
    participant_info,
    room_info,
    track_info,
)
from signaling.livekit.tracksettings import TrackSettings
from signaling.messages import (
    AddTrack,
    Answer,
    AnyClientMessage,
    Leave,
    Mute,
    Offer,
    Subscribe,
    Trickle,
    UpdateMetadata,
)

SERVER_VERSION = "1.9.0"
PING_INTERVAL = 10
PING_TIMEOUT = 30

# keyroom's leave reasons as LiveKit's disconnect reasons (docs/livekit.md).
DISCONNECT_REASON = {
    "left": models.CLIENT_INITIATED,
    "removed": models.PARTICIPANT_REMOVED,
    "revoked": models.PARTICIPANT_REMOVED,
    "token_expired": models.USER_REJECTED,
    "duplicate_identity": models.DUPLICATE_IDENTITY,
    "room_closed": models.ROOM_CLOSED,
    "room_deleted": models.ROOM_DELETED,
    "server_shutdown": models.SERVER_SHUTDOWN,
    "connection_failed": models.CONNECTION_TIMEOUT,
    "too_slow": models.SIGNAL_CLOSE,
    "protocol_error": models.SIGNAL_CLOSE,
}
# keyroom's error codes as LiveKit's request_response reasons.
ERROR_REASON = {
    "not_found": rtc.RequestResponse.NOT_FOUND,
    "forbidden": rtc.RequestResponse.NOT_ALLOWED,
    "unauthorized": rtc.RequestResponse.NOT_ALLOWED,
    "limit_exceeded": rtc.RequestResponse.LIMIT_EXCEEDED,
    "rate_limited": rtc.RequestResponse.LIMIT_EXCEEDED,
    "conflict": rtc.RequestResponse.INVALID_REQUEST,
    "invalid_message": rtc.RequestResponse.INVALID_REQUEST,
}
# Requests keyroom takes and ignores: the SDKs send them, nothing in keyroom needs them.
IGNORED = frozenset(
    {"update_layers", "sync_state", "simulate", "update_audio_track", "update_video_track"}
)


@dataclass(frozen=True)
class Local:
    """A request the edge answers itself, with `response`."""

    response: rtc.SignalResponse


Decoded = AnyClientMessage | Local | TrackSettings | None


def parse_request(data: bytes) -> rtc.SignalRequest:
    request = rtc.SignalRequest()
    try:
        request.ParseFromString(data)
    except DecodeError:
        raise MessageError("invalid_message", "frame is not a SignalRequest") from None
    return request


def decode(data: bytes, req: int, wall: float) -> tuple[str, Any, Decoded]:
    """The request in `data`: its oneof case, the request itself, and what keyroom makes of it;
    `req` numbers it so a refusal can be matched back to it."""
    request = parse_request(data)
    case = request.WhichOneof("message")
    if case is None:
        raise MessageError("invalid_message", "SignalRequest names no request keyroom knows")
    inner = getattr(request, case)
    if case in IGNORED:
        return case, inner, None
    decoder = DECODERS.get(case)
    if decoder is None:
        raise MessageError("invalid_message", f"{case} is not supported by keyroom", req)
    return case, inner, decoder(inner, req, wall)


def _offer(sd: rtc.SessionDescription, req: int, wall: float) -> Decoded:
    return Offer(target="publisher", sdp=_sdp(sd, req), req=req)


def _answer(sd: rtc.SessionDescription, req: int, wall: float) -> Decoded:
    return Answer(target="subscriber", sdp=_sdp(sd, req), req=req)


def _sdp(sd: rtc.SessionDescription, req: int) -> str:
    if not sd.sdp:
        raise MessageError("invalid_message", "empty SDP", req)
    return sd.sdp


def _trickle(trickle: rtc.TrickleRequest, req: int, wall: float) -> Decoded:
    try:
        candidate = json.loads(trickle.candidateInit)
    except ValueError:
        raise MessageError("invalid_message", "candidateInit is not JSON", req) from None
    if not isinstance(candidate, dict):
        raise MessageError("invalid_message", "candidateInit is not an object", req)
    if trickle.target == rtc.SUBSCRIBER:
        return Trickle(target="subscriber", candidate=candidate, req=req)
    return Trickle(target="publisher", candidate=candidate, req=req)


def _add_track(add: rtc.AddTrackRequest, req: int, wall: float) -> Decoded:
    kind = TYPE_KIND.get(add.type)
    if kind is None:
        raise MessageError("invalid_message", "only audio and video tracks", req)
    if not add.cid or len(add.cid) > 256 or len(add.name) > 256:
        raise MessageError("invalid_message", "cid must be 1..256 characters", req)
    source = ENUM_SOURCE.get(add.source)
    if source is None:
        source = "camera" if kind == "video" else "microphone"
    simulcast = [{"quality": layer.quality} for layer in add.layers]
    # LiveKit's frame cryptor (GCM) or an app's own (CUSTOM): keyroom's "e2ee" either way,
    # which the room's `e2ee_required` checks and subscribers' SDKs read to decrypt.
    encryption: Literal["none", "e2ee"] = (
        "none" if add.encryption == models.Encryption.NONE else "e2ee"
    )
    return AddTrack(
        cid=add.cid, kind=kind, source=source, name=add.name, muted=add.muted,  # type: ignore[arg-type]
        simulcast=simulcast, encryption=encryption, disable_red=add.disable_red, req=req,
    )  # fmt: skip


def _mute(mute: rtc.MuteTrackRequest, req: int, wall: float) -> Decoded:
    return Mute(track_sid=_track_sid(mute.sid, req), muted=mute.muted, req=req)


def _track_sid(sid: str, req: int) -> str:
    if not sid or len(sid) > 64:
        raise MessageError("invalid_message", "track sid must be 1..64 characters", req)
    return sid


def _subscription(update: rtc.UpdateSubscription, req: int, wall: float) -> Decoded:
    sids = list(update.track_sids)
    for tracks in update.participant_tracks:
        sids.extend(tracks.track_sids)
    if len(sids) > 256 or any(not s or len(s) > 256 for s in sids):
        raise MessageError("invalid_message", "at most 256 track sids", req)
    return Subscribe(track_sids=sids, subscribe=update.subscribe, req=req)


def _track_setting(settings: rtc.UpdateTrackSettings, req: int, wall: float) -> Decoded:
    """Settings for one track; the edge makes them a layer choice or a pause (tracksettings)."""
    if len(settings.track_sids) != 1:
        return None  # keyroom chooses layers per track; several at once are ignored
    sid = _track_sid(settings.track_sids[0], req)
    return TrackSettings(
        track_sid=sid, quality=settings.quality, width=settings.width, height=settings.height,
        disabled=settings.disabled, req=req,
    )  # fmt: skip


def _leave(leave: rtc.LeaveRequest, req: int, wall: float) -> Decoded:
    return Leave(req=req)


def _ping(timestamp: int, req: int, wall: float) -> Decoded:
    return Local(rtc.SignalResponse(pong=timestamp))


def _ping_req(ping: rtc.Ping, req: int, wall: float) -> Decoded:
    pong = rtc.Pong(last_ping_timestamp=ping.timestamp, timestamp=int(wall * 1000))
    return Local(rtc.SignalResponse(pong_resp=pong))


def _update_metadata(update: rtc.UpdateParticipantMetadata, req: int, wall: float) -> Decoded:
    return UpdateMetadata(metadata=update.metadata, name=update.name, req=req)


DECODERS: dict[str, Callable[[Any, int, float], Decoded]] = {
    "offer": _offer,
    "answer": _answer,
    "trickle": _trickle,
    "add_track": _add_track,
    "mute": _mute,
    "subscription": _subscription,
    "track_setting": _track_setting,
    "leave": _leave,
    "ping": _ping,
    "ping_req": _ping_req,
    "update_metadata": _update_metadata,
}


# -- out ------------------------------------------------------------------------------------------

Lookup = Callable[[str], Mapping[str, Any] | None]


def leave_response(reason: str, *, can_reconnect: bool = False) -> rtc.SignalResponse:
    action = rtc.LeaveRequest.RESUME if can_reconnect else rtc.LeaveRequest.DISCONNECT
    leave = rtc.LeaveRequest(
        can_reconnect=can_reconnect,
        reason=DISCONNECT_REASON.get(reason, models.UNKNOWN_REASON),
        action=action,
    )
    return rtc.SignalResponse(leave=leave)


class Translator:
    """keyroom's frames for one participant as LiveKit `SignalResponse`s.

    `lookup(sid)` is the current info dict of a participant in the room (None when gone):
    LiveKit's updates carry whole participants, keyroom's events only what changed."""

    def __init__(self, lookup: Lookup, *, reconnect: bool = False) -> None:
        self.lookup = lookup
        self.reconnect = reconnect
        self.own_sid = ""
        # Requests waiting for their reply: req -> (case, the request), for request_response.
        self.requests: dict[int, tuple[str, Any]] = {}
        self._speaking: set[str] = set()
        # SessionDescription ids: the JS SDK waits for the answer that names its offer's id;
        # the server's own offers are numbered too.
        self.offer_ids: deque[int] = deque()
        self._offers = 0

    def translate(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        kind = str(frame.get("type"))
        method = getattr(self, "_" + kind, None)
        req = frame.get("req")
        if isinstance(req, int) and kind != "error":
            answered = self.requests.pop(req, None)
            if kind == "ok" and answered is not None and answered[0] == "update_metadata":
                return self._metadata_updated(answered[1])
        if kind == "error" and isinstance(req, int) and self.requests.get(req, ("",))[0] == "offer":
            self.offer_ids.popleft()  # a refused offer gets no answer
        if method is None:
            return []
        result: list[rtc.SignalResponse] = method(frame)
        return result

    def _metadata_updated(self, update: rtc.UpdateParticipantMetadata) -> list[rtc.SignalResponse]:
        """The SDKs wait for their metadata update's answer (5 s, else they give up) and take
        their own new metadata from the participant update LiveKit's server sends everyone."""
        done = rtc.RequestResponse(
            request_id=update.request_id, reason=rtc.RequestResponse.OK, update_metadata=update
        )
        return [rtc.SignalResponse(request_response=done), *self._update_of(self.own_sid)]

    def _joined(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        self.own_sid = str(frame["participant"]["sid"])
        ice = [
            rtc.ICEServer(
                urls=list(s.get("urls", ())),
                username=str(s.get("username", "")),
                credential=str(s.get("credential", "")),
            )
            for s in frame.get("ice_servers", ())
        ]
        relay = frame.get("ice_transport_policy") == "relay"
        config = models.ClientConfiguration(force_relay=models.ENABLED if relay else models.UNSET)
        info = models.ServerInfo(
            edition=models.ServerInfo.Standard, version=SERVER_VERSION, protocol=SERVER_PROTOCOL,
            node_id="keyroom",
        )  # fmt: skip
        if self.reconnect:
            reconnect = rtc.ReconnectResponse(
                ice_servers=ice, client_configuration=config, server_info=info
            )
            # As LiveKit's server: then everyone's current info (this participant's too: its
            # metadata or permissions may have changed while it was away) and the room's.
            everyone = [frame["participant"], *frame.get("participants", ())]
            update = rtc.ParticipantUpdate(participants=[participant_info(p) for p in everyone])
            return [
                rtc.SignalResponse(reconnect=reconnect),
                rtc.SignalResponse(update=update),
                rtc.SignalResponse(room_update=rtc.RoomUpdate(room=room_info(frame["room"]))),
            ]
        join = rtc.JoinResponse(
            room=room_info(frame["room"]),
            participant=participant_info(frame["participant"]),
            # Looked up: the edge's info carries what keyroom's frame lacks (declared layers).
            other_participants=[
                participant_info(self.lookup(str(p["sid"])) or p)
                for p in frame.get("participants", ())
            ],
            server_version=SERVER_VERSION,
            ice_servers=ice,
            # keyroom offers the subscriber connection at once: the SDK waits for it.
            subscriber_primary=True,
            client_configuration=config,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_TIMEOUT,
            server_info=info,
        )
        return [rtc.SignalResponse(join=join)]

    def _answer(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        offer_id = self.offer_ids.popleft() if self.offer_ids else 0
        sd = rtc.SessionDescription(type="answer", sdp=str(frame["sdp"]), id=offer_id)
        return [rtc.SignalResponse(answer=sd)]

    def _offer(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        self._offers += 1
        sd = rtc.SessionDescription(type="offer", sdp=str(frame["sdp"]), id=self._offers)
        return [rtc.SignalResponse(offer=sd)]

    def _track_published(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        if "cid" in frame:
            published = rtc.TrackPublishedResponse(
                cid=str(frame["cid"]), track=track_info(frame["track"])
            )
            return [rtc.SignalResponse(track_published=published)]
        return self._update_of(str(frame.get("participant_sid", "")))

    def _update_of(self, sid: str) -> list[rtc.SignalResponse]:
        info = self.lookup(sid)
        if info is None:
            return []
        update = rtc.ParticipantUpdate(participants=[participant_info(info)])
        return [rtc.SignalResponse(update=update)]

    def _participant_joined(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        update = rtc.ParticipantUpdate(participants=[participant_info(frame["participant"])])
        return [rtc.SignalResponse(update=update)]

    _participant_updated = _participant_joined

    def _participant_left(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        gone = models.ParticipantInfo(
            sid=str(frame["sid"]),
            identity=str(frame.get("identity", "")),
            state=models.ParticipantInfo.DISCONNECTED,
            disconnect_reason=DISCONNECT_REASON.get(
                str(frame.get("reason")), models.UNKNOWN_REASON
            ),
        )
        self._speaking.discard(gone.sid)
        return [rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[gone]))]

    def _track_unpublished(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        sid = str(frame["participant_sid"])
        if sid == self.own_sid:
            gone = rtc.TrackUnpublishedResponse(track_sid=str(frame["track_sid"]))
            return [rtc.SignalResponse(track_unpublished=gone)]
        return self._update_of(sid)

    def _track_muted(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        sid = str(frame["participant_sid"])
        if sid == self.own_sid:  # an admin muted this participant's own track
            mute = rtc.MuteTrackRequest(sid=str(frame["track_sid"]), muted=bool(frame["muted"]))
            return [rtc.SignalResponse(mute=mute)]
        return self._update_of(sid)

    def _permissions_changed(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        return self._update_of(self.own_sid)

    def _room_updated(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        update = rtc.RoomUpdate(room=room_info(frame["room"]))
        return [rtc.SignalResponse(room_update=update)]

    def _active_speakers(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        """LiveKit sends changes: the new speakers, and those who stopped as inactive."""
        now = {str(s["sid"]): float(s["level"]) for s in frame.get("speakers", ())}
        speakers = [models.SpeakerInfo(sid=s, level=v, active=True) for s, v in now.items()]
        speakers += [
            models.SpeakerInfo(sid=s, level=0.0, active=False) for s in self._speaking - set(now)
        ]
        self._speaking = set(now)
        return [rtc.SignalResponse(speakers_changed=rtc.SpeakersChanged(speakers=speakers))]

    def _dynacast(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        """keyroom's dynacast (layers nobody receives switched off) as LiveKit's: the SDK sets
        its encodings of those qualities inactive, and active again when asked."""
        qualities = [
            rtc.SubscribedQuality(
                quality=RID_QUALITY.get(str(layer.get("rid")), POSITION_QUALITY[min(index, 2)]),
                enabled=bool(layer.get("active")),
            )
            for index, layer in enumerate(frame.get("layers", ()))
        ]
        update = rtc.SubscribedQualityUpdate(
            track_sid=str(frame.get("track_sid", "")), subscribed_qualities=qualities
        )
        return [rtc.SignalResponse(subscribed_quality_update=update)]

    def _leave(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        return [leave_response(str(frame.get("reason", "")))]

    def _error(self, frame: Mapping[str, Any]) -> list[rtc.SignalResponse]:
        req = frame.get("req")
        case, request = self.requests.pop(req, ("", None)) if isinstance(req, int) else ("", None)
        response = rtc.RequestResponse(
            request_id=getattr(request, "request_id", 0) if request is not None else 0,
            reason=ERROR_REASON.get(str(frame.get("code")), rtc.RequestResponse.UNCLASSIFIED_ERROR),
            message=str(frame.get("message", "")),
        )
        if case in ("trickle", "add_track", "mute", "update_metadata") and request is not None:
            getattr(response, case).CopyFrom(request)
        return [rtc.SignalResponse(request_response=response)]
