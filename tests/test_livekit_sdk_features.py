"""LiveKit's Python SDK (`livekit` 1.2.1) against keyroom: token refresh (`refresh_token`),
connection quality, binary data packets and RPC, with the SDK unmodified (tests/
test_livekit_sdk.py has the rest)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aioice.ice
import jwt
import pytest
from livekit import api, rtc

from auth.tokens import mint_token
from loadtest import spawn
from loadtest.livekitnet import CLIENT_IP
from loadtest.livekitpeer import SdkPeer
from sfu.iceaddr import restrict_host_addresses
from signaling.client import KeyroomClient
from tests.conftest import KEY_ID, SECRET, ServerProcess, wait_logged
from tests.livekit_helpers import lk_token, lk_url, room_api, start_lk_server
from tests.test_livekit_sdk import ROOM, _keyroom_token, peers, veth  # noqa: F401  (veth is a fixture)

pytestmark = pytest.mark.asyncio
ONCE = "lk-once"  # a room of single-use tokens


@pytest.fixture
def lk_server(veth: str, tmp_path: Path) -> Iterator[ServerProcess]:  # noqa: F811
    """keyroom as tests/test_livekit_sdk.py starts it, with a room of single-use tokens."""
    config = f"[auth]\nmax_failures = 1000\nleeway = 0\n[rooms.{ONCE}]\nsingle_use_tokens = true\n"
    server = start_lk_server(tmp_path, config)
    try:
        yield server
    finally:
        spawn.stop(server.process)


class Refreshes:
    """The tokens the SDK was given (its `token_refreshed` event; the SDK keeps the last one
    to reconnect with)."""

    def __init__(self, peer: SdkPeer) -> None:
        self.room = peer.room
        self.tokens: list[str] = []
        self.changed = asyncio.Event()
        peer.room.on("token_refreshed", self._on_refresh)

    def _on_refresh(self) -> None:
        self.tokens.append(str(self.room._token))  # noqa: SLF001  (the SDK has no getter)
        self.changed.set()

    async def until(self, count: int, timeout: float = 10) -> str:
        async with asyncio.timeout(timeout):
            while len(self.tokens) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.tokens[-1]


def video_of(token: str) -> dict[str, object]:
    claims = jwt.decode(token, options={"verify_signature": False})
    video: dict[str, object] = claims["video"]
    return video


async def test_a_single_use_token_rejoins_by_the_refreshed_token(lk_server: ServerProcess) -> None:
    """The application's token is spent by the join; the token the server refreshed the SDK
    with joins again (a full rejoin: admission, single use), once."""
    once = mint_token(key_id=KEY_ID, secret=SECRET, identity="alice", room=ONCE, ttl=600,
                      now=time.time(), name="alice")  # fmt: skip
    first = SdkPeer("alice")
    refreshes = Refreshes(first)
    try:
        await first.connect(lk_url(lk_server), once)
        refreshed = await refreshes.until(1)
    finally:
        await first.close()
    assert refreshed != once
    assert (
        jwt.decode(refreshed, options={"verify_signature": False})["exp"]
        == jwt.decode(once, options={"verify_signature": False})["exp"]
    )
    spent = SdkPeer("alice")
    with pytest.raises(rtc.ConnectError):
        await spent.connect(lk_url(lk_server), once)
    await spent.close()
    again = SdkPeer("alice")
    try:
        await again.connect(lk_url(lk_server), refreshed)
        assert again.room.local_participant.identity == "alice"
        assert again.room.name == ONCE
    finally:
        await again.close()
    log = await wait_logged(lk_server, '"reason":"jti_reused"')
    assert '"event":"token_refreshed"' in log


async def test_own_metadata_and_a_permission_downgrade_are_in_the_refreshed_token(
    lk_server: ServerProcess,
) -> None:
    lkapi = room_api(lk_server)
    peer = SdkPeer("bob")
    refreshes = Refreshes(peer)
    try:
        await peer.connect(lk_url(lk_server), lk_token("bob", ROOM, can_update_own_metadata=True))
        assert video_of(await refreshes.until(1))["canPublish"] is True
        # Answered at once (the SDK waits up to 5 s for the answer), and seen by the SDK itself.
        seen = asyncio.Event()
        peer.room.on("participant_metadata_changed", lambda *args: seen.set())
        async with asyncio.timeout(2):
            await peer.room.local_participant.set_metadata("hand up")
            await seen.wait()
        assert peer.room.local_participant.metadata == "hand up"
        claims = jwt.decode(await refreshes.until(2), options={"verify_signature": False})
        assert claims["metadata"] == "hand up"
        update = api.UpdateParticipantRequest(
            room=ROOM, identity="bob",
            permission=api.ParticipantPermission(can_subscribe=True, can_publish=False),
        )  # fmt: skip
        await lkapi.room.update_participant(update)
        downgraded = await refreshes.until(3)
        assert video_of(downgraded)["canPublish"] is False
    finally:
        await peer.close()
        await lkapi.aclose()
    again = SdkPeer("bob")
    try:
        await again.connect(lk_url(lk_server), downgraded)
        assert not again.room.local_participant.permissions.can_publish
        assert again.room.local_participant.metadata == "hand up"
    finally:
        await again.close()


async def test_connection_quality_of_self_and_others_reaches_the_sdk(
    lk_server: ServerProcess,
) -> None:
    """keyroom's levels as LiveKit's `ConnectionQualityUpdate`: each SDK learns its own and the
    other's quality (UNKNOWN until the server says)."""
    async with peers(lk_server, "alice", "bob") as (alice, bob):
        seen: dict[str, rtc.ConnectionQuality] = {}
        changed = asyncio.Event()

        def on_quality(participant: rtc.Participant, quality: rtc.ConnectionQuality) -> None:
            seen[participant.identity] = quality
            changed.set()

        alice.room.on("connection_quality_changed", on_quality)
        async with asyncio.timeout(15):
            while len(seen) < 2:
                changed.clear()
                await changed.wait()
        assert seen == {
            "alice": rtc.ConnectionQuality.QUALITY_EXCELLENT,
            "bob": rtc.ConnectionQuality.QUALITY_EXCELLENT,
        }


async def test_binary_data_rpc_and_streams_between_sdk_participants(
    lk_server: ServerProcess,
) -> None:
    async with peers(lk_server, "alice", "bob", "carol") as (alice, bob, carol):
        blob = bytes(range(256)) * 8  # 2 KiB, not UTF-8
        await alice.room.local_participant.publish_data(
            blob, reliable=True, topic="bin", destination_identities=["bob"]
        )
        await bob.received.until(lambda: bool(bob.received.data), timeout=15)
        assert bob.received.data == [("alice", "bin", blob)]

        callers: list[str] = []

        def add(data: rtc.RpcInvocationData) -> str:
            callers.append(data.caller_identity)
            return str(sum(json.loads(data.payload)))

        bob.room.local_participant.register_rpc_method("add", add)
        result = await alice.room.local_participant.perform_rpc(
            destination_identity="bob", method="add", payload="[1, 2, 3]", response_timeout=10
        )
        assert (result, callers) == ("6", ["alice"])

        # A text stream whose sender claims another identity: the server sets the real one.
        got: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()

        async def read(reader: rtc.TextStreamReader, identity: str) -> None:
            got.set_result((identity, await reader.read_all()))

        tasks: list[asyncio.Task[None]] = []
        bob.room.register_text_stream_handler(
            "notes",
            lambda reader, identity: tasks.append(asyncio.ensure_future(read(reader, identity))),
        )
        writer = await alice.room.local_participant.stream_text(
            topic="notes", destination_identities=["bob"], sender_identity="mallory"
        )
        await writer.write("hello ")
        await writer.write("stream")
        await writer.aclose()
        assert await asyncio.wait_for(got, 10) == ("alice", "hello stream")
        # Nothing of the above was for carol; a broadcast reaches her (and came after them).
        await alice.room.local_participant.publish_data(b"\xff all", topic="all")
        await carol.received.until(lambda: bool(carol.received.data), timeout=10)
        assert carol.received.data == [("alice", "all", b"\xff all")]
        # The RoomService's SendData takes binary payloads too (no sender: the server's).
        lkapi = room_api(lk_server)
        try:
            await lkapi.room.send_data(
                api.SendDataRequest(room=ROOM, data=b"\x00\xfe", topic="srv",
                                    destination_identities=["carol"])
            )  # fmt: skip
        finally:
            await lkapi.aclose()
        await carol.received.until(lambda: len(carol.received.data) >= 2, timeout=10)
        assert carol.received.data[-1] == ("", "srv", b"\x00\xfe")


async def test_a_subscriber_asking_for_low_quality_gets_the_low_layer(
    lk_server: ServerProcess,
) -> None:
    """A simulcast publisher (the SDK's own layers: 640x480 sends two); the subscriber's
    `set_video_quality` is keyroom's layer choice: LOW brings the low layer's dimensions, as
    the publisher declared them (reported in TrackInfo.layers), HIGH the top ones again."""
    alice = SdkPeer("alice", width=640, height=480, simulcast=True)
    bob = SdkPeer("bob")
    lkapi = room_api(lk_server)
    try:
        await alice.connect(lk_url(lk_server), lk_token("alice", ROOM))
        await bob.connect(lk_url(lk_server), lk_token("bob", ROOM))
        [video_sid] = await alice.publish(audio=False)

        def size_is(size: tuple[int, int]) -> bool:
            return bob.received.size.get("alice") == size

        await bob.received.until(lambda: size_is((640, 480)), timeout=20)
        publication = bob.room.remote_participants["alice"].track_publications[video_sid]
        assert publication.simulcasted
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=ROOM))
        [track] = [t for p in listed.participants for t in p.tracks if t.sid == video_sid]
        assert track.simulcast and [layer.rid for layer in track.layers] == ["q", "h"]
        low = (track.layers[0].width, track.layers[0].height)
        assert low < (640, 480) and (track.layers[1].width, track.layers[1].height) == (640, 480)
        publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_LOW)
        await bob.received.until(lambda: size_is(low), timeout=10)
        publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
        await bob.received.until(lambda: size_is((640, 480)), timeout=10)
    finally:
        await lkapi.aclose()
        await bob.close()
        await alice.close()


@contextlib.asynccontextmanager
async def keyroom_client(server: ServerProcess, identity: str) -> AsyncIterator[KeyroomClient]:
    """keyroom's Python client in ROOM, its ICE on the veth pair (aiortc, like libwebrtc)."""
    before = aioice.ice.get_host_addresses
    restrict_host_addresses([CLIENT_IP])
    client = KeyroomClient(f"ws://127.0.0.1:{server.port}/rtc", _keyroom_token(identity))
    try:
        yield client
    finally:
        await client.close()
        aioice.ice.get_host_addresses = before


async def test_a_keyroom_client_gets_binary_payloads_base64_and_no_streams(
    lk_server: ServerProcess,
) -> None:
    """docs/protocol.md 2.5: what keyroom's JSON clients make of an SDK's data."""
    async with keyroom_client(lk_server, "kr") as client, peers(lk_server, "sdk") as (sdk,):
        await client.connect()
        await client.send_data("ready", topic="sync")  # the data path is up both ways
        await sdk.received.until(lambda: bool(sdk.received.data), timeout=15)
        await sdk.room.local_participant.send_text("not for keyroom", topic="notes")
        await sdk.room.local_participant.publish_data(b"\xff\x00bin", topic="bin")
        message = await client.next_data(timeout=10)
        assert (message["from"], message["topic"]) == ("sdk", "bin")
        assert message["encoding"] == "base64"
        assert base64.b64decode(message["payload"]) == b"\xff\x00bin"
