"""Python client of the keyroom signaling protocol (docs/protocol.md section 2) on top of aiortc.

One `KeyroomClient` is one participant: a WebSocket (aiohttp) for signaling, a publisher
RTCPeerConnection (the client offers) and a subscriber RTCPeerConnection (the server offers).
It is used by the tests, the load tester and bots:

    client = KeyroomClient("ws://127.0.0.1:7880/rtc", token)
    joined = await client.connect()
    info = await client.publish(SyntheticVideoTrack())
    remote = await client.next_track()
    frames = await count_frames(remote.track, 2.0)
    await client.leave()

It works around several aiortc 1.16 limitations (see docs in the functions of `peers`, `sdp`
and `publisher`, and shared/notes/test-environment.md): rejected media sections, transceivers
negotiated while DTLS is still connecting, and data channels created before the first media
transceiver.

Modules: `participant` (KeyroomClient), `connection` (the WebSocket, requests and replies),
`roster` (the room state kept from events), `publisher` and `subscriber` (the two peer
connections), `peers` (their configuration and the aiortc workarounds), `sdp` (rewriting
descriptions aiortc cannot apply; reading them is `sfu.sdpinfo`'s), `inbox`, `errors`.
"""

from sfu.sdpinfo import MediaSectionInfo, describe_sections
from signaling.client.errors import KeyroomError, SessionClosed
from signaling.client.participant import KeyroomClient
from signaling.client.peers import restart_transceivers
from signaling.client.sdp import make_rejected_sections_applicable
from signaling.client.subscriber import RemoteTrack
from signaling.media import FrameCounter, count_frames
from signaling.protocol import DATA_CHANNELS

__all__ = [
    "DATA_CHANNELS",
    "FrameCounter",
    "KeyroomClient",
    "KeyroomError",
    "MediaSectionInfo",
    "RemoteTrack",
    "SessionClosed",
    "count_frames",
    "describe_sections",
    "make_rejected_sections_applicable",
    "restart_transceivers",
]
