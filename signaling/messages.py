"""Every signaling message as one typed schema (PROTOCOL section 2): msgspec Structs, tagged on
`type`, validated in C when decoded.

Client messages ignore unknown fields (forward compatible); a field that may be absent but never
null is `UNSET` when absent. Server messages leave out `req` when they answer no request. The
events the room emits (`participant_joined`, ...) are declared here too: they are the contract a
client author reads, and a test holds the room's frames to them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from signaling.protocol import PROTOCOL_VERSION

MAX_REQ = 2**53
MAX_SDP_CHARS = 64 * 1024

Req = Annotated[int, Meta(ge=0, lt=MAX_REQ)]
Token = Annotated[str, Meta(min_length=1, max_length=64 * 1024)]
Sdp = Annotated[str, Meta(min_length=1, max_length=MAX_SDP_CHARS)]
TrackSid = Annotated[str, Meta(min_length=1, max_length=64)]
Kind = Literal["audio", "video"]
Source = Literal["camera", "microphone", "screen_share", "screen_share_audio"]
Target = Literal["publisher", "subscriber"]
# A proof of possession of the key a bound token names (auth/keybinding.py).
ProofField = Annotated[str, Meta(min_length=1, max_length=2048)] | UnsetType


class ClientMessage(Struct, tag_field="type", kw_only=True):
    req: Req | None = None


class Join(ClientMessage, tag="join"):
    token: Token
    protocol: int = PROTOCOL_VERSION
    auto_subscribe: bool = True
    client: dict[str, Any] = {}
    proof: ProofField = UNSET


class Resume(ClientMessage, tag="resume"):
    resume_token: Annotated[str, Meta(min_length=1, max_length=512)]
    protocol: int = PROTOCOL_VERSION
    proof: ProofField = UNSET


class AddTrack(ClientMessage, tag="add_track"):
    cid: Annotated[str, Meta(min_length=1, max_length=256)]
    kind: Kind
    source: Source | UnsetType = UNSET
    name: Annotated[str, Meta(max_length=256)] = ""
    muted: bool = False
    simulcast: list[Any] = []
    encryption: Literal["none", "e2ee"] = "none"
    disable_red: bool = False  # audio: answer the section without RED (LiveKit's field)


class Offer(ClientMessage, tag="offer"):
    target: Literal["publisher"]
    sdp: Sdp


class Answer(ClientMessage, tag="answer"):
    target: Literal["subscriber"]
    sdp: Sdp


class Trickle(ClientMessage, tag="trickle"):
    target: Target
    candidate: dict[str, Any]


class Unpublish(ClientMessage, tag="unpublish"):
    track_sid: TrackSid


class Mute(ClientMessage, tag="mute"):
    track_sid: TrackSid
    muted: bool


class Subscribe(ClientMessage, tag="subscribe"):
    track_sids: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=256)]], Meta(max_length=256)
    ]
    subscribe: bool = True


class SetQuality(ClientMessage, tag="set_quality"):
    track_sid: TrackSid
    quality: Literal["low", "medium", "high"]


class Refresh(ClientMessage, tag="refresh"):
    token: Token
    proof: ProofField = UNSET


class UpdateMetadata(ClientMessage, tag="update_metadata"):
    metadata: Annotated[str, Meta(max_length=64 * 1024)] | UnsetType = UNSET
    name: Annotated[str, Meta(max_length=1024)] | UnsetType = UNSET


class IceRestart(ClientMessage, tag="ice_restart"):
    pass


class Ping(ClientMessage, tag="ping"):
    pass


class Leave(ClientMessage, tag="leave"):
    pass


Request = (
    AddTrack
    | Offer
    | Answer
    | Trickle
    | Unpublish
    | Mute
    | Subscribe
    | SetQuality
    | Refresh
    | UpdateMetadata
    | IceRestart
    | Ping
    | Leave
)
AnyClientMessage = Join | Resume | Request
CLIENT_MESSAGES: dict[str, type[ClientMessage]] = {
    cls.__struct_config__.tag: cls for cls in (Join, Resume, *Request.__args__)
}


# -- server -> client -----------------------------------------------------------------------------

Info = dict[str, Any]


class ServerMessage(Struct, tag_field="type", kw_only=True, omit_defaults=True):
    req: int | None = None


class Ok(ServerMessage, tag="ok"):
    pass


class Error(ServerMessage, tag="error"):
    code: str
    message: str


class Pong(ServerMessage, tag="pong"):
    pass


class Joined(ServerMessage, tag="joined"):
    room: Info
    participant: Info
    participants: list[Info]
    ice_servers: list[Info]
    ice_transport_policy: Literal["all", "relay"]
    resume_token: str


class PublisherAnswer(ServerMessage, tag="answer"):
    target: Literal["publisher"]
    sdp: str


class SubscriberOffer(ServerMessage, tag="offer"):
    target: Literal["subscriber"]
    sdp: str


class TrackPublished(ServerMessage, tag="track_published"):
    """The reply to `add_track` carries `cid`; the event to others carries `participant_sid`."""

    track: Info
    cid: str | UnsetType = UNSET
    participant_sid: str | UnsetType = UNSET


class ServerLeave(ServerMessage, tag="leave"):
    reason: str
    # Why, for a person: e.g. the setting that refused the peer's ICE candidates.
    message: str | None = None


class Redirect(ServerMessage, tag="redirect"):
    """Instead of `joined`: the room is on another node; join there with the same token."""

    url: str


class TokenRefreshRequired(ServerMessage, tag="token_refresh_required"):
    expires_at: int


class ParticipantJoined(ServerMessage, tag="participant_joined"):
    participant: Info


class ParticipantLeft(ServerMessage, tag="participant_left"):
    sid: str
    identity: str
    reason: str


class ParticipantUpdated(ServerMessage, tag="participant_updated"):
    participant: Info


class TrackUnpublished(ServerMessage, tag="track_unpublished"):
    participant_sid: str
    track_sid: str


class TrackMuted(ServerMessage, tag="track_muted"):
    participant_sid: str
    track_sid: str
    muted: bool


class LayerActivity(Struct):
    rid: str
    active: bool


class Dynacast(ServerMessage, tag="dynacast"):
    track_sid: str
    layers: list[LayerActivity]


class Speaker(Struct):
    sid: str
    level: float


class ActiveSpeakers(ServerMessage, tag="active_speakers"):
    speakers: list[Speaker]


class PermissionsChanged(ServerMessage, tag="permissions_changed"):
    permissions: Info


class RoomUpdated(ServerMessage, tag="room_updated"):
    room: Info


class RecordingNotice(ServerMessage, tag="recording"):
    """PROTOCOL 7: whether any track of the room is being recorded."""

    active: bool


class ConnectionQuality(ServerMessage, tag="connection_quality"):
    quality: str
    rtt_ms: float | None
    loss_down: float
    loss_up: float
    jitter_ms: float
    bandwidth_bps: int | None


AnyServerMessage = (
    Ok
    | Error
    | Pong
    | Joined
    | PublisherAnswer
    | SubscriberOffer
    | TrackPublished
    | ServerLeave
    | Redirect
    | TokenRefreshRequired
    | ParticipantJoined
    | ParticipantLeft
    | ParticipantUpdated
    | TrackUnpublished
    | TrackMuted
    | Dynacast
    | ActiveSpeakers
    | PermissionsChanged
    | RoomUpdated
    | RecordingNotice
    | ConnectionQuality
)
