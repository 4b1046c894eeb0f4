"""Transport-cc in the subscriber connection (sfu/subscribing.py): offered unless the room
turns it off, settled by the first answer, and then stamped on every down-track's packets.
In process: keyroom's Subscribing against an aiortc client whose answer is given the
extension the way a browser's would carry it (aiortc itself does not implement it)."""

from __future__ import annotations

import asyncio
import struct

from aiortc import RTCPeerConnection, RTCSessionDescription

from sfu import internals, subscribing
from sfu.rtp import parse_rtp
from sfu.twcc import URI
from tests.test_section_reuse import new_subscribing, video_track


async def answer(client: RTCPeerConnection, offer: str, accept: bool) -> str:
    """aiortc's answer, with the offer's transport-cc lines copied in when `accept`."""
    await client.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    await client.setLocalDescription(await client.createAnswer())
    sdp: str = client.localDescription.sdp
    if not accept:
        return sdp
    line = next(x for x in offer.split("\r\n") if x.endswith(URI))
    return sdp.replace("a=mid:0\r\n", f"a=mid:0\r\n{line}\r\n")


async def negotiate(
    accept: bool, allowed: bool = True
) -> tuple[subscribing.Subscribing, str, bytes]:
    """The negotiated Subscribing, its offer, and a packet as its down-track sends it."""
    pc, client = internals.new_peer_connection(), internals.new_peer_connection()
    offers: asyncio.Queue[str] = asyncio.Queue()
    sub = new_subscribing(pc, offers)
    sub.transport_cc.allowed = lambda: allowed
    try:
        sub.subscribe(video_track("TR_v"))
        offer = await asyncio.wait_for(offers.get(), 5)
        sub.handle_answer(await answer(client, offer, accept))
        assert sub._negotiation is not None  # noqa: SLF001
        await asyncio.wait_for(sub._negotiation, 5)  # noqa: SLF001
        rewriter = sub.subscriptions["TR_v"].rewriter
        assert rewriter is not None
        packet = struct.pack("!BBHII", 0x80, 96, 1, 2, 3) + b"\x90" * 20
        out = rewriter.rewrite(packet, parse_rtp(packet))
        assert out is not None
        return sub, offer, out
    finally:
        sub.stop()
        await pc.close()
        await client.close()


async def test_an_accepted_offer_turns_stamping_on_for_every_down_track() -> None:
    sub, offer, sent = await negotiate(accept=True)
    ext_id = sub.transport_cc.accepted
    assert ext_id is not None and f"a=extmap:{ext_id} {URI}" in offer
    assert "transport-cc" in offer
    assert sub.sink is not None and sub.sink.transport_sequence is not None
    assert sub.sink.transport_sequence.ext_id == ext_id
    assert sub._feedback.congestion.paced  # noqa: SLF001
    assert sent[16] == (ext_id << 4) | 1  # the down-track reserves the slot first


async def test_an_answer_without_it_leaves_the_connection_as_before() -> None:
    sub, offer, sent = await negotiate(accept=False)
    assert URI in offer  # offered ...
    assert sub.transport_cc.accepted is None  # ... not taken
    assert sub.sink is not None and sub.sink.transport_sequence is None
    assert not sub._feedback.congestion.paced  # noqa: SLF001
    assert sent[16] >> 4 == 1  # the MID (aiortc id 1) comes first: no slot


async def test_the_room_limit_off_offers_nothing() -> None:
    sub, offer, _ = await negotiate(accept=False, allowed=False)
    assert URI not in offer and "transport-cc" not in offer
    assert sub.sink is not None and sub.sink.transport_sequence is None
