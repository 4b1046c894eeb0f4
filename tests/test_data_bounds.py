"""Data channels are bounded (issue 11 item 11): no data channel opens without `canPublishData`,
and SCTP reassembly holds no more than the receive window, however large a message is sent."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import aiohttp
import pytest
from aiortc.rtcsctptransport import DataChunk, RTCSctpTransport

from sfu.internals.sctp import on_data_dropped, receive_data_chunk_bounded
from sfu.publishing import reject_data_section
from sfu.sdpinfo import describe_sections
from signaling.client import KeyroomClient, KeyroomError
from tests.conftest import ServerProcess

LAST, FIRST, UNORDERED = 0x01, 0x02, 0x04
WINDOW = 1024 * 1024  # what aiortc advertises
FRAGMENT = 1200


class Association:
    """An aiortc SCTP transport fed DATA chunks by hand, with the bounded reassembly."""

    def __init__(self) -> None:
        self.sctp = RTCSctpTransport(SimpleNamespace(state="new"))  # type: ignore[arg-type]
        self.sctp._last_received_tsn = 0  # noqa: SLF001
        self.delivered: list[tuple[int, bytes]] = []
        self.drops = 0
        self.most_held = 0
        self.tsn = 0

        async def receive(stream_id: int, pp_id: int, data: bytes) -> None:
            self.delivered.append((stream_id, data))

        self.sctp._receive = receive  # type: ignore[method-assign]  # noqa: SLF001
        on_data_dropped(self.sctp, self._dropped)

    def _dropped(self) -> None:
        self.drops += 1

    async def send(self, stream_id: int, seq: int, data: bytes, *, flags: int = 0) -> None:
        """Fragments of one message, as a sender ignoring the window sends them."""
        pieces = [data[i : i + FRAGMENT] for i in range(0, len(data), FRAGMENT)]
        for n, piece in enumerate(pieces):
            await self.fragment(
                stream_id, seq, piece,
                flags | (FIRST if n == 0 else 0) | (LAST if n == len(pieces) - 1 else 0),
            )  # fmt: skip

    async def fragment(self, stream_id: int, seq: int, piece: bytes, flags: int) -> None:
        self.tsn += 1
        chunk = DataChunk(flags=flags)
        chunk.tsn, chunk.stream_id, chunk.stream_seq, chunk.protocol = (
            self.tsn, stream_id, seq, 51,
        )  # fmt: skip
        chunk.user_data = piece
        await receive_data_chunk_bounded(self.sctp, chunk)
        self.most_held = max(self.most_held, self.held)

    @property
    def held(self) -> int:
        streams = self.sctp._inbound_streams.values()  # noqa: SLF001
        return sum(len(c.user_data) for s in streams for c in s.reassembly)


@pytest.mark.parametrize("flags", [0, UNORDERED], ids=["ordered", "unordered"])
async def test_an_oversized_message_is_dropped_within_the_window(flags: int) -> None:
    association = Association()
    await association.send(1, 0, b"a" * 100, flags=flags)
    await association.send(1, 1, b"x" * 3 * WINDOW, flags=flags)  # 3 MiB in 2,600 fragments
    assert association.most_held <= WINDOW
    assert association.drops >= 1
    assert association.sctp._advertised_rwnd >= 0  # noqa: SLF001  (a SACK can carry it)
    # The stream goes on: the next message is delivered, nothing of the dropped one.
    await association.send(1, 2, b"after", flags=flags)
    assert [data for _, data in association.delivered] == [b"a" * 100, b"after"]
    assert association.held == 0 or flags == UNORDERED


async def test_other_streams_keep_flowing_while_one_overflows() -> None:
    association = Association()
    big = b"x" * 2 * WINDOW
    pieces = [big[i : i + FRAGMENT] for i in range(0, len(big), FRAGMENT)]
    for n, piece in enumerate(pieces):
        flags = (FIRST if n == 0 else 0) | (LAST if n == len(pieces) - 1 else 0)
        await association.fragment(3, 0, piece, flags)
        if n % 100 == 0:
            await association.send(5, n // 100, b"small %d" % n)
    assert association.most_held <= WINDOW
    small = [data for stream, data in association.delivered if stream == 5]
    assert len(small) == len(range(0, len(pieces), 100))
    assert all(stream == 5 for stream, _ in association.delivered)


def test_the_data_section_is_answered_rejected() -> None:
    answer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n"
        "a=rtpmap:111 opus/48000/2\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n"
        "a=sctp-port:5000\r\na=max-message-size:65536\r\n"
    )
    rejected = reject_data_section(answer)
    assert "a=group:BUNDLE 0\r\n" in rejected
    sections = describe_sections(rejected)
    assert [(s.kind, s.port, s.rejected) for s in sections] == [
        ("audio", 9, False),
        ("application", 0, True),
    ]


async def dropped_data(server: ServerProcess) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.http_url + "/metrics") as response:
            text = await response.text()
    found = re.search(r'keyroom_rtp_packets_dropped_total\{reason="data_overflow"\} (\S+)', text)
    return int(float(found.group(1))) if found else 0


async def test_no_data_channel_opens_without_the_right(server: ServerProcess) -> None:
    alice = KeyroomClient(server.ws_url, server.token("alice"))
    mute = KeyroomClient(server.ws_url, server.token("mute", grants={"canPublishData": False}))
    await alice.connect()
    await mute.connect()
    try:
        with pytest.raises(KeyroomError) as refused:
            await mute.send_data("should not pass", timeout=3)
        assert refused.value.code == "forbidden"
        # A client ignoring the refusal gets no association: its channel never opens.
        channel = mute._publisher_channels["_reliable"]  # noqa: SLF001
        opened = asyncio.Event()
        channel.on("open", opened.set)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(opened.wait(), 2)
        assert channel.readyState != "open"
        assert await mute.ping() < 1
    finally:
        await alice.leave()
        await mute.leave()


async def test_an_oversized_message_from_a_real_client_is_dropped_and_data_flows(
    server: ServerProcess,
) -> None:
    alice = KeyroomClient(server.ws_url, server.token("alice"))
    bob = KeyroomClient(server.ws_url, server.token("bob"))
    carol = KeyroomClient(server.ws_url, server.token("carol"))
    for client in (alice, bob, carol):
        await client.connect()
    try:
        await alice.send_data("before")
        assert (await bob.next_data(timeout=10))["payload"] == "before"
        channel = alice._publisher_channels["_reliable"]  # noqa: SLF001
        channel.transport._remote_max_message_size = 0  # noqa: SLF001  (no client-side cap)
        channel.send(b"x" * (3 * WINDOW))  # past the window, ignoring it as aiortc does
        await carol.send_data("from carol")
        assert (await bob.next_data(timeout=20))["payload"] == "from carol"
        await alice.send_data("after")  # the same ordered channel goes on
        assert (await bob.next_data(timeout=20))["payload"] == "after"
        assert await dropped_data(server) >= 1
        assert await alice.ping() < 1
    finally:
        for client in (alice, bob, carol):
            await client.leave()
