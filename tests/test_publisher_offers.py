"""Publisher offers cannot pile transceivers up: the total per connection is capped (issue 11.4)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiortc import RTCPeerConnection

from loadtest.hostile import renamed_mids
from signaling.client import KeyroomClient, KeyroomError
from tests.conftest import start_server, stop_server

SECTIONS_PER_OFFER = 8


async def test_repeated_offers_with_new_sections_are_refused_past_the_total(
    tmp_path: Path,
) -> None:
    server = start_server(tmp_path)
    # No canPublish at all: the cap must hold for who may not publish either.
    client = KeyroomClient(server.ws_url, server.token("mallory", grants={"canPublish": False}))
    pc = RTCPeerConnection()
    try:
        await client.connect()
        for _ in range(SECTIONS_PER_OFFER):
            pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        answered = 0
        with pytest.raises(KeyroomError) as refused:
            for n in range(20):
                sdp = renamed_mids(offer, f"r{n}x")
                await client.request({"type": "offer", "target": "publisher", "sdp": sdp})
                answered += 1
        assert answered == 64 // SECTIONS_PER_OFFER
        assert refused.value.code == "invalid_message"
        assert "more than 64 media sections on this connection" in str(refused.value)
        assert await client.ping() < 1.0  # the session goes on
    finally:
        await pc.close()
        await client.leave()
        stop_server(server)
