"""Fan-out workers (`[rtc] fanout_workers`, sfu/fanout/): a room's subscribers served by worker
processes fed by the main process.

A server with two workers on the shared port: every subscriber decodes, NACKs reach the worker
that holds the cache, a subscriber that leaves stops its copies, and a killed worker's
subscribers are taken back by the main process and keep decoding, as are a hung worker's.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sfu.config import ConfigError, load_config
from signaling.client import KeyroomClient
from signaling.media import FrameCounter, SyntheticVideoTrack
from tests.conftest import ServerProcess, eventually, start_server, stop_server
from tests.sharedport_helpers import free_udp_port

SUBSCRIBERS = 4


def metric(server: ServerProcess, name: str) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{name} (\S+)", text, re.M)
    return float(match.group(1)) if match else 0.0


def workers_of(server: ServerProcess) -> list[int]:
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(c) for c in children if b"sfu.fanout.worker" in Path(f"/proc/{c}/cmdline").read_bytes()
    ]


def test_fanout_workers_need_the_shared_port() -> None:
    keys = {"keys": {"k": "s" * 40}}
    with pytest.raises(ConfigError, match="rtc.fanout_workers: needs rtc.udp_port"):
        load_config(None, {"rtc": {"ips": ["127.0.0.1"], "fanout_workers": 2}, "auth": keys}, {})


@pytest.fixture
def fanout_server(tmp_path: Path) -> Any:
    config = tmp_path / "fanout.toml"
    config.write_text(f"[rtc]\nudp_port = {free_udp_port()}\nfanout_workers = 2\n")
    server = start_server(tmp_path, "--config", str(config))
    try:
        yield server
    finally:
        stop_server(server)


async def nack_recent(client: KeyroomClient) -> None:
    """Make the subscriber's receiver NACK two packets it has had (the server resends them)."""
    pc = client.subscriber_pc
    assert pc is not None
    receiver = next(t.receiver for t in pc.getTransceivers() if t.kind == "video")
    streams = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
    ssrc, stream = next(iter(streams.items()))
    latest = stream.max_seq
    await receiver._send_rtcp_nack(ssrc, [(latest - 2) & 0xFFFF, (latest - 1) & 0xFFFF])


async def test_a_room_on_two_workers_decodes_answers_nacks_and_survives_a_crash(
    fanout_server: ServerProcess,
) -> None:
    server = fanout_server
    assert len(workers_of(server)) == 2
    alice = KeyroomClient(server.ws_url, server.token("alice"))
    viewers = [KeyroomClient(server.ws_url, server.token(f"viewer{i}")) for i in range(SUBSCRIBERS)]
    counters: list[FrameCounter] = []
    try:
        await alice.connect()
        for viewer in viewers:
            await viewer.connect()
        await alice.publish(SyntheticVideoTrack(), source="camera")
        remotes = [await viewer.next_track(timeout=20) for viewer in viewers]
        counters = [FrameCounter(r.track) for r in remotes]
        await asyncio.gather(*(counter.wait_for(10, timeout=15) for counter in counters))
        # The copies left from the workers, not from main.
        await eventually(
            lambda: metric(server, "keyroom_fanout_worker_down_tracks") == SUBSCRIBERS,
            10,
            lambda: f"every down-track on a worker: {server.log_path.read_text()[-3000:]}",
        )
        await eventually(  # the workers report four times a second
            lambda: metric(server, "keyroom_fanout_worker_packets_total") > 0, 10, "reports"
        )
        # A NACK reaches the worker that keeps the subscriber's cache, and is answered.
        before = metric(server, "keyroom_rtp_retransmissions_total")
        await nack_recent(viewers[0])
        await eventually(
            lambda: metric(server, "keyroom_rtp_retransmissions_total") > before, 10, "a resend"
        )
        # A subscriber that leaves: its down-track leaves its worker.
        await counters.pop().stop()
        await viewers.pop().leave()
        await eventually(
            lambda: metric(server, "keyroom_fanout_worker_down_tracks") == SUBSCRIBERS - 1,
            10,
            "the leaver's down-track gone",
        )
        # A worker dies: main takes its subscribers back; everyone keeps decoding.
        os.kill(workers_of(server)[0], signal.SIGKILL)
        await eventually(
            lambda: metric(server, "keyroom_fanout_worker_failures_total") == 1, 10, "noticed"
        )
        # Frames decoded from now on (the counters drain continuously: none is a backlog).
        marks = [counter.count for counter in counters]
        await asyncio.gather(
            *(
                counter.wait_for(mark + 15, timeout=15)
                for counter, mark in zip(counters, marks, strict=True)
            )
        )
        assert metric(server, "keyroom_fanout_worker_down_tracks") < SUBSCRIBERS - 1
        # The other one hangs (stopped, not dead): silent past the stall timeout, it is ended
        # and main sends everything.
        os.kill(workers_of(server)[0], signal.SIGSTOP)
        await eventually(
            lambda: metric(server, "keyroom_fanout_worker_failures_total") == 2, 15, "a hang"
        )
        assert metric(server, "keyroom_fanout_worker_down_tracks") == 0
        marks = [counter.count for counter in counters]
        await asyncio.gather(
            *(
                counter.wait_for(mark + 15, timeout=15)
                for counter, mark in zip(counters, marks, strict=True)
            )
        )
    finally:
        for counter in counters:
            await counter.stop()
        for client in (alice, *viewers):
            await client.leave()
