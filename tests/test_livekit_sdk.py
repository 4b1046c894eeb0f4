"""LiveKit's own Python SDK (`livekit` 1.2.1, native libwebrtc) and server SDK (`livekit-api`)
against keyroom, unmodified: media both ways, data, the RoomService, and keyroom's access
control (expiry, revocation, live permission changes) as an SDK app sees it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from livekit import api, rtc

from loadtest.livekitpeer import SdkPeer
from tests.conftest import KEY_ID, SECRET, ServerProcess
from tests.livekit_helpers import lk_server, lk_token, lk_url, veth  # noqa: F401

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def peers(server: ServerProcess, *identities: str) -> AsyncIterator[list[SdkPeer]]:
    made = [SdkPeer(identity) for identity in identities]
    try:
        for peer in made:
            await peer.connect(lk_url(server), lk_token(peer.identity))
        yield made
    finally:
        for peer in made:
            await peer.close()


def room_api(server: ServerProcess) -> api.LiveKitAPI:
    return api.LiveKitAPI(f"http://127.0.0.1:{server.port}", KEY_ID, SECRET)


async def test_three_sdk_participants_see_and_hear_each_other(lk_server: ServerProcess) -> None:
    async with peers(lk_server, "alice", "bob", "carol") as group:
        for peer in group:
            assert peer.room.local_participant.sid.startswith("PA_")
            assert len(await peer.publish()) == 2
        for peer in group:
            others = [p.identity for p in group if p is not peer]

            def enough(peer: SdkPeer = peer, others: list[str] = others) -> bool:
                r = peer.received
                return all(r.count(o, "video") >= 10 and r.count(o, "audio") >= 20 for o in others)

            await peer.received.until(enough, timeout=30)
            for other in others:
                assert peer.received.size[other] == (320, 240)
        # Everyone is listed by everyone, with keyroom's ids.
        assert sorted(group[0].room.remote_participants) == ["bob", "carol"]
        assert group[0].room.name == "lk-room"
