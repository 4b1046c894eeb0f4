"""LiveKit's own Python SDK (`livekit` 1.2.1, native libwebrtc) and server SDK (`livekit-api`)
against keyroom, unmodified: media both ways, data, the RoomService, and keyroom's access
control (expiry, revocation, live permission changes) as an SDK app sees it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aioice.ice
import pytest
from livekit import api, rtc

from loadtest import livekitload, spawn
from loadtest.livekitnet import CLIENT_IP, veth_pair
from loadtest.livekitpeer import SdkPeer
from sfu.iceaddr import restrict_host_addresses
from signaling.client import KeyroomClient
from signaling.media import SyntheticVideoTrack, count_frames
from tests.conftest import KEY_ID, SECRET, ServerProcess, eventually, wait_logged
from tests.livekit_helpers import (
    METRICS_TOKEN,
    TcpRelay,
    lk_token,
    lk_url,
    room_api,
    start_lk_server,
)

pytestmark = pytest.mark.asyncio
ROOM = "lk-room"


@pytest.fixture(scope="module")
def veth() -> Iterator[str]:
    with veth_pair() as address:
        yield address
    # The SDK's native handles are released by finalizers: run them here, not in the middle of
    # a later test (under CPython 3.11.7 one that ran inside `ast.parse` made it raise
    # "AST constructor recursion depth mismatch" in tests/test_structure.py, once).
    gc.collect()


@pytest.fixture
def lk_server(veth: str, tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_lk_server(tmp_path, "[auth]\nmax_failures = 1000\nleeway = 0\n")
    try:
        yield server
    finally:
        spawn.stop(server.process)


@contextlib.asynccontextmanager
async def peers(server: ServerProcess, *identities: str) -> AsyncIterator[list[SdkPeer]]:
    made = [SdkPeer(identity) for identity in identities]
    try:
        for peer in made:
            await peer.connect(lk_url(server), lk_token(peer.identity, ROOM))
        yield made
    finally:
        for peer in made:
            await peer.close()


def receiving(peer: SdkPeer, identity: str, kind: str, frames: int) -> bool:
    return peer.received.count(identity, kind) >= frames


async def test_three_sdk_participants_see_and_hear_each_other(lk_server: ServerProcess) -> None:
    async with peers(lk_server, "alice", "bob", "carol") as group:
        for peer in group:
            assert peer.room.local_participant.sid.startswith("PA_")
            assert len(await peer.publish()) == 2
        for peer in group:
            others = [p.identity for p in group if p is not peer]

            def enough(peer: SdkPeer = peer, others: list[str] = others) -> bool:
                return all(
                    receiving(peer, o, "video", 10) and receiving(peer, o, "audio", 20)
                    for o in others
                )

            await peer.received.until(enough, timeout=30)
            for other in others:
                assert peer.received.size[other] == (320, 240)
        assert sorted(group[0].room.remote_participants) == ["bob", "carol"]
        assert group[0].room.name == ROOM


async def test_unpublish_and_mute_reach_the_others(lk_server: ServerProcess) -> None:
    async with peers(lk_server, "alice", "bob") as (alice, bob):
        video_sid, audio_sid = await alice.publish()
        await bob.received.until(lambda: receiving(bob, "alice", "video", 5), timeout=20)
        remote = bob.room.remote_participants["alice"]
        alice.room.local_participant.track_publications[audio_sid].track.mute()
        await eventually(lambda: remote.track_publications[audio_sid].muted, 5, "muted")
        await alice.room.local_participant.unpublish_track(video_sid)
        await eventually(lambda: video_sid not in remote.track_publications, 5, "unpublished")
        assert audio_sid in remote.track_publications


async def test_data_packets_carry_the_authenticated_sender(lk_server: ServerProcess) -> None:
    async with peers(lk_server, "alice", "bob", "carol") as (alice, bob, carol):
        await alice.room.local_participant.publish_data(b"to all", reliable=True, topic="chat")
        await alice.room.local_participant.publish_data(
            b"to bob", reliable=False, topic="dm", destination_identities=["bob"]
        )
        await bob.received.until(lambda: len(bob.received.data) >= 2, timeout=15)
        await carol.received.until(lambda: len(carol.received.data) >= 1, timeout=15)
        assert sorted(bob.received.data) == [
            ("alice", "chat", b"to all"),
            ("alice", "dm", b"to bob"),
        ]
        assert carol.received.data == [("alice", "chat", b"to all")]


async def test_room_service_lists_mutes_updates_and_removes(lk_server: ServerProcess) -> None:
    lkapi = room_api(lk_server)
    try:
        async with peers(lk_server, "alice", "bob", "carol") as (alice, bob, carol):
            video_sid, _audio_sid = await alice.publish()
            await bob.received.until(lambda: receiving(bob, "alice", "video", 5), timeout=20)
            rooms = await lkapi.room.list_rooms(api.ListRoomsRequest())
            assert [(r.name, r.num_participants) for r in rooms.rooms] == [(ROOM, 3)]
            assert rooms.rooms[0].sid.startswith("RM_")
            listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=ROOM))
            by_identity = {p.identity: p for p in listed.participants}
            assert sorted(by_identity) == ["alice", "bob", "carol"]
            assert {t.sid for t in by_identity["alice"].tracks} >= {video_sid}

            muted = await lkapi.room.mute_published_track(
                api.MuteRoomTrackRequest(
                    room=ROOM, identity="alice", track_sid=video_sid, muted=True
                )
            )
            assert muted.track.muted
            publication = bob.room.remote_participants["alice"].track_publications[video_sid]
            await eventually(lambda: publication.muted, 5, "bob sees alice's video muted")

            update = api.UpdateParticipantRequest(
                room=ROOM, identity="bob", metadata="moderated",
                permission=api.ParticipantPermission(can_subscribe=True, can_publish=False),
            )  # fmt: skip
            info = await lkapi.room.update_participant(update)
            assert info.metadata == "moderated" and not info.permission.can_publish
            await eventually(
                lambda: not bob.room.local_participant.permissions.can_publish,
                5,
                "bob's permission",
            )

            await lkapi.room.remove_participant(
                api.RoomParticipantIdentity(room=ROOM, identity="carol")
            )
            await asyncio.wait_for(carol.disconnected.wait(), 10)
            assert carol.disconnect_reason == rtc.DisconnectReason.PARTICIPANT_REMOVED
            await eventually(lambda: "carol" not in alice.room.remote_participants, 5, "carol gone")
    finally:
        await lkapi.aclose()
    audit = await wait_logged(lk_server, '"event":"kicked"')
    assert '"method":"MutePublishedTrack"' in audit


async def test_token_expiry_ends_the_sdk_session(lk_server: ServerProcess) -> None:
    peer = SdkPeer("shortlived")
    try:
        await peer.connect(lk_url(lk_server), lk_token("shortlived", ROOM, ttl=3))
        await asyncio.wait_for(peer.disconnected.wait(), 15)
        # keyroom's `token_expired` leave, in LiveKit's terms (docs/livekit.md).
        assert peer.disconnect_reason == rtc.DisconnectReason.USER_REJECTED
    finally:
        await peer.close()


async def test_revoked_identity_cannot_reconnect(lk_server: ServerProcess) -> None:
    token = lk_token("mallory", ROOM)
    lkapi = room_api(lk_server)
    peer = SdkPeer("mallory")
    try:
        await peer.connect(lk_url(lk_server), token)
        revoke = api.RoomParticipantIdentity(
            room=ROOM, identity="mallory", revoke_token_ts=int(time.time())
        )
        await lkapi.room.remove_participant(revoke)
        await asyncio.wait_for(peer.disconnected.wait(), 10)
        assert peer.disconnect_reason == rtc.DisconnectReason.PARTICIPANT_REMOVED
        again = SdkPeer("mallory")
        with pytest.raises(rtc.ConnectError):
            await again.connect(lk_url(lk_server), token)
        await again.close()
    finally:
        await peer.close()
        await lkapi.aclose()
    log = await wait_logged(lk_server, '"reason":"revoked"')
    assert '"event":"revoked"' in log


async def test_publish_revoked_tracks_stop_within_one_second(lk_server: ServerProcess) -> None:
    lkapi = room_api(lk_server)
    try:
        async with peers(lk_server, "alice", "bob") as (alice, bob):
            await alice.publish()
            await bob.publish(audio=False)
            await bob.received.until(lambda: receiving(bob, "alice", "video", 5), timeout=20)
            unsubscribed = asyncio.Event()
            bob.room.on("track_unsubscribed", lambda *args: unsubscribed.set())
            update = api.UpdateParticipantRequest(
                room=ROOM, identity="alice",
                permission=api.ParticipantPermission(can_subscribe=True, can_publish=False),
            )  # fmt: skip
            started = time.monotonic()
            await lkapi.room.update_participant(update)
            await asyncio.wait_for(unsubscribed.wait(), 1.0)
            assert time.monotonic() - started < 1.0
            frozen = bob.received.count("alice", "video")
            # A further second of alice's media (counted by what alice receives of bob's): no
            # more of it reaches bob.
            mark = alice.received.count("bob", "video")
            await alice.received.until(lambda: receiving(alice, "bob", "video", mark + 15), 10)
            assert bob.received.count("alice", "video") <= frozen + 1
    finally:
        await lkapi.aclose()


async def test_mixed_room_with_a_keyroom_python_client(lk_server: ServerProcess) -> None:
    before = aioice.ice.get_host_addresses
    restrict_host_addresses([CLIENT_IP])  # aiortc, like libwebrtc, on the veth pair
    client = KeyroomClient(f"ws://127.0.0.1:{lk_server.port}/rtc", _keyroom_token("kr"))
    try:
        async with peers(lk_server, "sdk") as (sdk,):
            await client.connect()
            await client.publish(SyntheticVideoTrack(), source="camera", name="cam")
            await sdk.publish(audio=False)
            await sdk.received.until(lambda: receiving(sdk, "kr", "video", 10), timeout=20)
            assert sdk.received.size["kr"] == (160, 120)
            remote = await client.next_track(timeout=20)
            assert remote.participant_identity == "sdk"
            assert await count_frames(remote.track, 10, enough=10) >= 10
            await client.send_data("hello", topic="chat")
            await sdk.received.until(lambda: bool(sdk.received.data), timeout=10)
            assert sdk.received.data == [("kr", "chat", b"hello")]
            await sdk.room.local_participant.publish_data(b"hi back", topic="chat")
            message = await client.next_data(timeout=10)
            assert (message["from"], message["payload"]) == ("sdk", "hi back")
    finally:
        await client.close()
        aioice.ice.get_host_addresses = before


def _keyroom_token(identity: str) -> str:
    from auth.tokens import mint_token

    return mint_token(
        key_id=KEY_ID, secret=SECRET, identity=identity, room=ROOM, ttl=600, now=time.time(),
        name=identity,
    )  # fmt: skip


async def test_load_tester_drives_the_sdk(lk_server: ServerProcess) -> None:
    """`keyroom loadtest --client livekit`, CI-sized: joins timed, forwarding measured with
    SDK and keyroom publishers (the full run is in docs/benchmarks.md)."""
    server = livekitload.Server(
        lk_server.port, lk_server.process.pid, SECRET, key_id=KEY_ID, metrics_token=METRICS_TOKEN
    )
    joins = await livekitload.measure_joins(server, 3)
    assert joins["joins"] == 3 and 0 < joins["p50_ms"] <= joins["p95_ms"] <= joins["max_ms"]
    options = livekitload.Options(
        publishers=1,
        subscribers=1,
        duration=1.5,
        warmup=1.5,
        idle=1.0,
        width=320,
        height=240,
        lean_subscribers=2,
    )
    for kind in ("livekit", "keyroom"):
        row = await livekitload.measure_forwarding(server, kind, options)
        assert (
            row["packets_forwarded"] > 0 and row["server_cpu_us_per_forwarded_packet"] is not None
        )
        assert row["marginal_cpu_us_per_forwarded_packet"] is not None
        assert row["packets_received_by_keyroom_subscribers"] > 0
        assert row["frames_decoded_by_subscribers"] > 0


@contextlib.asynccontextmanager
async def relayed(server: ServerProcess) -> AsyncIterator[tuple[TcpRelay, str]]:
    """A relay between an SDK and `server`'s signaling: the URL to give the SDK."""
    relay = TcpRelay(server.port)
    port = await relay.start()
    try:
        yield relay, f"ws://127.0.0.1:{port}"
    finally:
        await relay.close()


async def test_sdk_resumes_in_the_same_session_after_losing_its_socket(
    lk_server: ServerProcess,
) -> None:
    """A lost signaling socket: the SDK resumes (reconnect=1, its publisher restarting ICE and
    keyroom its subscriber), keeps its sid, and media flows both ways after."""
    alice, bob = SdkPeer("alice"), SdkPeer("bob")
    async with relayed(lk_server) as (relay, url):
        try:
            await alice.connect(url, lk_token("alice", ROOM))
            await bob.connect(lk_url(lk_server), lk_token("bob", ROOM))
            await alice.publish()
            await bob.publish(audio=False)
            await bob.received.until(lambda: receiving(bob, "alice", "video", 10), timeout=30)
            await alice.received.until(lambda: receiving(alice, "bob", "video", 10), timeout=30)
            sid = alice.room.local_participant.sid
            before = await ice_of(alice)
            events: list[str] = []
            reconnected = asyncio.Event()
            alice.room.on("reconnecting", lambda: events.append("reconnecting"))
            alice.room.on("reconnected", lambda: reconnected.set())
            relay.cut()
            await asyncio.wait_for(reconnected.wait(), 30)
            assert events == ["reconnecting"] and alice.room.local_participant.sid == sid

            async def restarted() -> bool:
                now = await ice_of(alice)
                return all(now[pc][0] != before[pc][0] and now[pc][1] for pc in now)

            # Both PCs on new ICE credentials (libwebrtc's transport stats), connected.
            await eventually(restarted, 30, lambda: f"ICE restart of both PCs from {before}")
            marks = bob.received.count("alice", "video"), alice.received.count("bob", "video")
            await bob.received.until(lambda: receiving(bob, "alice", "video", marks[0] + 30), 30)
            await alice.received.until(lambda: receiving(alice, "bob", "video", marks[1] + 30), 30)
            assert not bob.disconnected.is_set() and "alice" in bob.room.remote_participants
        finally:
            await alice.close()
            await bob.close()
    # Resumed, not joined again (a full reconnect is a second join).
    log = lk_server.log().splitlines()
    assert len([x for x in log if '"join_accepted"' in x and '"alice"' in x]) == 1


async def ice_of(peer: SdkPeer) -> dict[str, tuple[str, bool]]:
    """Per PC: the local ICE ufrag of its transport, and whether its ICE is connected."""
    stats = await peer.room.get_rtc_stats()
    out = {}
    for name, pc in (("publisher", stats.publisher_stats), ("subscriber", stats.subscriber_stats)):
        for entry in pc:
            if entry.WhichOneof("stats") == "transport":
                transport = entry.transport.transport
                connected = transport.ice_state in (
                    rtc.stats.ICE_TRANSPORT_CONNECTED,
                    rtc.stats.ICE_TRANSPORT_COMPLETED,
                )
                out[name] = (transport.ice_local_username_fragment, connected)
    return out


async def test_sdk_resume_refused_after_a_revocation_ends_its_session(
    lk_server: ServerProcess,
) -> None:
    lkapi = room_api(lk_server)
    peer = SdkPeer("mallory")
    async with relayed(lk_server) as (relay, url):
        try:
            await peer.connect(url, lk_token("mallory", ROOM))
            reconnecting = asyncio.Event()
            peer.room.on("reconnecting", lambda: reconnecting.set())
            relay.cut(hold=True)  # its resume waits at the relay while the admin revokes
            await asyncio.wait_for(reconnecting.wait(), 30)
            revoke = api.RoomParticipantIdentity(
                room=ROOM, identity="mallory", revoke_token_ts=int(time.time())
            )
            await lkapi.room.remove_participant(revoke)
            relay.passing.set()
            await asyncio.wait_for(peer.disconnected.wait(), 30)
            assert peer.disconnect_reason == rtc.DisconnectReason.PARTICIPANT_REMOVED
        finally:
            await peer.close()
            await lkapi.aclose()
    await wait_logged(lk_server, '"event":"resume_refused"')
