"""RED audio subscribers served by fan-out workers (`[rtc] fanout_workers`, sfu/fanout/), end to
end with the project's Python client (aiortc underneath).

aiortc has no RED, so the clients negotiate it the way Chromium does, in their SDP: the
publisher offers `red/48000/2` over Opus as 111 (Chromium's numbering; keyroom's subscriber
offers name Opus 96, so the worker renames every block header), then sends RED packets itself
on its negotiated SSRC, each Opus frame again in the next packet; three subscribers keep the
RED keyroom offers them in their answers, one answers without it. Each subscriber's plaintext
RTP and RTCP are read from its DTLS transport. A server with two workers: every copy comes
from a worker (its RED ones counted by `keyroom_fanout_worker_red_packets_total`, the main
process sending none), with the right payload types and no sequence gap, Sender Reports for
each stream; then a worker is killed and main takes its RED subscribers back, RED still.
"""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loadtest.clients import ParkedTrack
from sfu import internals
from sfu.red import read_red, wrap
from sfu.redsdp import PREFERRED_PT, offer_red
from sfu.rtcp import SenderReport, parse_rtcp
from sfu.rtp import parse_rtp
from signaling.client import KeyroomClient
from tests.conftest import ServerProcess, eventually
from tests.test_fanout_workers import fanout_server, metric, workers_of  # noqa: F401

RED_PT = 63  # the publisher's, as Chromium offers it
OPUS_PT = 111  # the publisher's Opus, as Chromium numbers it
SUBSCRIBER_RED_PT = PREFERRED_PT  # what keyroom's subscriber offers name RED
SUBSCRIBER_OPUS_PT = 96  # aiortc's Opus, in keyroom's offers and so in the answers
RED_VIEWERS = 3
FRAME = 0.02


def as_chromium(offer: str) -> str:
    """aiortc's publisher offer (one audio section) with Opus numbered 111 and RED over it
    offered, as Chromium's."""
    lines = []
    for line in offer.split("\r\n"):
        if line.startswith("m=audio "):
            line = " ".join(str(OPUS_PT) if f == "96" else f for f in line.split(" "))
        for prefix in ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"):
            if line.startswith(f"{prefix}96 "):
                line = f"{prefix}{OPUS_PT} " + line.split(" ", 1)[1]
        lines.append(line)
    return offer_red("\r\n".join(lines), RED_PT)


def munge(client: KeyroomClient, target: str, change: Callable[[str], str]) -> None:
    """Rewrite the client's SDP for `target` ("publisher" offers, "subscriber" answers) on its
    way to the server."""
    connection = client._connection
    send: Callable[[dict[str, Any]], Awaitable[None]] = connection.send

    async def munged(frame: dict[str, Any]) -> None:
        if frame.get("target") == target and frame.get("type") in ("offer", "answer"):
            frame = {**frame, "sdp": change(frame["sdp"])}
        await send(frame)

    connection.send = munged  # type: ignore[method-assign]


def keep_red(answer: str) -> str:
    """The subscriber's answer keeping the RED keyroom offered, over its Opus."""
    return offer_red(answer, SUBSCRIBER_RED_PT)


@dataclass
class Received:
    """A subscriber's plaintext RTP (payload type, sequence number, RED block payload types)
    and its Sender Reports."""

    packets: list[tuple[int, int, tuple[int, ...]]] = field(default_factory=list)
    ssrcs: set[int] = field(default_factory=set)
    reports: list[SenderReport] = field(default_factory=list)

    async def on_rtp(self, data: bytes, arrival_time_ms: int = 0) -> None:
        info = parse_rtp(data)
        blocks: tuple[int, ...] = ()
        if info.payload_type == SUBSCRIBER_RED_PT:
            red = read_red(data, info.payload_start, info.payload_end)
            assert red is not None
            blocks = (*(b[0] for b in red.redundant), red.primary_pt)
        self.packets.append((info.payload_type, info.sequence, blocks))
        self.ssrcs.add(info.ssrc)

    async def on_rtcp(self, data: bytes) -> None:
        self.reports += [m for m in parse_rtcp(data) if isinstance(m, SenderReport)]


async def listen(client: KeyroomClient) -> Received:
    """The client's subscriber transport hooked, once its track arrived."""
    await client.next_track(timeout=20)
    pc = client.subscriber_pc
    assert pc is not None
    dtls = internals.bundle_transport(pc)
    assert dtls is not None
    received = Received()
    internals.hook_transport(dtls, received.on_rtp, received.on_rtcp)
    return received


async def send_red(client: KeyroomClient, stop: asyncio.Event) -> None:
    """Publish audio and send RED packets (each frame with the one before) every 20 ms."""
    track = ParkedTrack("audio")
    await client.publish(track, source="microphone")
    pc = client.publisher_pc
    assert pc is not None
    transceiver = next(t for t in pc.getTransceivers() if t.sender.track is track)
    codec = next(c for c in internals.negotiated_codecs(transceiver) if "opus" in c.mimeType)
    assert codec.payloadType == OPUS_PT, codec
    ssrc = internals.sender_ssrc(transceiver)
    while pc.connectionState != "connected":
        await asyncio.wait_for(_state_change(pc), 20)
    dtls = internals.bundle_transport(pc)
    assert dtls is not None
    sink = internals.RtpSink(dtls)
    seq = 0
    loop = asyncio.get_running_loop()
    due = loop.time()
    while not stop.is_set():
        frame = bytes((seq & 0xFF,)) * 60
        payload = wrap(OPUS_PT, frame, [(OPUS_PT, 960, bytes(((seq - 1) & 0xFF,)) * 60)])
        header = bytes((0x80, RED_PT)) + seq.to_bytes(2, "big") + (seq * 960).to_bytes(4, "big")
        sink.send(header + ssrc.to_bytes(4, "big") + payload)
        seq = (seq + 1) & 0xFFFF
        due += FRAME
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, due - loop.time()))
        except TimeoutError:
            pass


async def _state_change(pc: Any) -> None:
    changed = asyncio.Event()
    pc.once("connectionstatechange", changed.set)
    await changed.wait()


def main_copies(server: ServerProcess) -> float:
    """Copies the main process sent itself: all copies less the workers' (one scrape)."""
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        values[name] = value
    return float(values["keyroom_rtp_packets_out_total"]) - float(
        values["keyroom_fanout_worker_packets_total"]
    )


def no_gap(sequence_numbers: list[int]) -> bool:
    pairs = zip(sequence_numbers, sequence_numbers[1:], strict=False)
    return all((b - a) & 0xFFFF == 1 for a, b in pairs)


async def grown(streams: list[Received], marks: list[int], more: int) -> None:
    await eventually(
        lambda: all(len(s.packets) >= m + more for s, m in zip(streams, marks, strict=True)),
        20,
        lambda: (
            f"{more} more each: {[len(s.packets) - m for s, m in zip(streams, marks, strict=True)]}"
        ),
    )


async def test_red_subscribers_get_red_from_a_worker_and_from_main_once_it_dies(
    fanout_server: ServerProcess,  # noqa: F811 (the fixture imported above)
) -> None:
    server = fanout_server
    viewers = [KeyroomClient(server.ws_url, server.token(f"viewer{i}")) for i in range(4)]
    for viewer in viewers[:RED_VIEWERS]:
        munge(viewer, "subscriber", keep_red)
    alice = KeyroomClient(server.ws_url, server.token("alice"))
    munge(alice, "publisher", as_chromium)
    stop = asyncio.Event()
    sender: asyncio.Task[None] | None = None
    try:
        for client in (*viewers, alice):
            await client.connect()
        sender = asyncio.create_task(send_red(alice, stop))
        streams = await asyncio.gather(*(listen(viewer) for viewer in viewers))
        await eventually(
            lambda: metric(server, "keyroom_fanout_worker_down_tracks") == len(viewers),
            15,
            lambda: f"every down-track on a worker: {server.log_path.read_text()[-3000:]}",
        )
        # From here on every copy is a worker's: the RED ones counted apart, main sends none.
        main_before = main_copies(server)
        red_before = metric(server, "keyroom_fanout_worker_red_packets_total")
        marks = [len(s.packets) for s in streams]
        await grown(streams, marks, 75)
        await eventually(  # the workers report four times a second
            lambda: (
                metric(server, "keyroom_fanout_worker_red_packets_total")
                >= red_before + RED_VIEWERS * 75
            ),
            10,
            "the workers' RED count",
        )
        assert main_copies(server) == main_before
        for i, stream in enumerate(streams):
            window = stream.packets[marks[i] :]
            if i < RED_VIEWERS:  # RED, its blocks naming the subscriber's own Opus
                assert {(pt, blocks) for pt, _, blocks in window} == {
                    (SUBSCRIBER_RED_PT, (SUBSCRIBER_OPUS_PT, SUBSCRIBER_OPUS_PT))
                }, i
            else:  # the primary Opus alone
                assert {(pt, blocks) for pt, _, blocks in window} == {(SUBSCRIBER_OPUS_PT, ())}
            assert no_gap([seq for _, seq, _ in window]), i
        # Sender Reports for each stream (the workers send them once a second), in its clock.
        await eventually(lambda: all(s.reports for s in streams), 10, "sender reports")
        for stream in streams:
            (ssrc,) = stream.ssrcs
            report = stream.reports[-1]
            assert report.ssrc == ssrc and report.packets > 0 and report.octets > 0
        # A worker dies: main takes its subscribers back, RED ones with RED, and sends them.
        os.kill(workers_of(server)[0], signal.SIGKILL)
        await eventually(
            lambda: metric(server, "keyroom_fanout_worker_failures_total") == 1, 10, "noticed"
        )
        assert metric(server, "keyroom_fanout_worker_down_tracks") < len(viewers)
        taken_back = main_copies(server)
        marks = [len(s.packets) for s in streams]
        await grown(streams, marks, 50)
        assert main_copies(server) >= taken_back + 50
        for i, stream in enumerate(streams):
            window = stream.packets[marks[i] :]
            wanted = SUBSCRIBER_RED_PT if i < RED_VIEWERS else SUBSCRIBER_OPUS_PT
            assert {pt for pt, _, _ in window} == {wanted}, i
    finally:
        stop.set()
        if sender is not None:
            await asyncio.gather(sender, return_exceptions=True)
        for client in (alice, *viewers):
            await client.leave()
