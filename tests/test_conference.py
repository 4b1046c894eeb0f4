"""A working conference through a real `keyroom serve`: real aiortc clients over loopback."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from signaling.client import KeyroomClient, RemoteTrack, count_frames
from signaling.media import SyntheticAudioTrack, SyntheticVideoTrack
from tests.conftest import ServerProcess, eventually, session_end


async def publish_av(client: KeyroomClient) -> None:
    await client.publish(SyntheticAudioTrack(), source="microphone", name="mic")
    await client.publish(SyntheticVideoTrack(), source="camera", name="cam")


async def collect_tracks(client: KeyroomClient, count: int, timeout: float) -> list[RemoteTrack]:
    tracks = []
    deadline = time.monotonic() + timeout
    while len(tracks) < count:
        tracks.append(await client.next_track(timeout=max(deadline - time.monotonic(), 0.01)))
    return tracks


async def test_three_participants_see_and_hear_each_other(server: ServerProcess) -> None:
    names = ["alice", "bob", "carol"]
    clients = [KeyroomClient(server.ws_url, server.token(n)) for n in names]
    try:
        for client in clients:
            await client.connect()
        for client in clients:
            await publish_av(client)
        started = time.monotonic()
        results = await asyncio.gather(*(collect_tracks(c, 4, 15) for c in clients))
        for me, tracks in zip(names, results, strict=True):
            by_sender: dict[str, set[str]] = {}
            for remote in tracks:
                by_sender.setdefault(remote.participant_identity, set()).add(remote.kind)
            assert by_sender == {n: {"audio", "video"} for n in names if n != me}
        counts = await asyncio.gather(
            *(count_frames(r.track, 4.0) for tracks in results for r in tracks)
        )
        remaining = 15 - (time.monotonic() - started)
        assert remaining > 0
        # Over 4 s: 60 frames of video at 15 fps, 200 of audio (20 ms each); at least a third.
        sent = {"video": 4 * 15, "audio": 4 * 50}
        for tracks, offset in zip(results, range(0, 12, 4), strict=True):
            for remote, frames in zip(tracks, counts[offset : offset + 4], strict=True):
                assert frames > sent[remote.kind] / 3, (
                    f"{remote.participant_identity} {remote.kind}: {frames} frames"
                )
        runtime = server.runtime()
        assert runtime["codecs"] == 0
        assert not [t for t in runtime["threads"] if "decoder" in t or "encoder" in t]
        # Besides the loop: the audit log's writer and aiortc's executor (DTLS), nothing else.
        assert all(
            "ThreadPoolExecutor" in t or t in ("MainThread", "keyroom-audit")
            for t in runtime["threads"]
        ), runtime["threads"]
        assert runtime["stats"]["packets_out"] > 0
    finally:
        for client in clients:
            await client.leave()


async def test_join_and_leave_events_arrive_in_order(server: ServerProcess) -> None:
    observer = KeyroomClient(server.ws_url, server.token("observer"))
    await observer.connect()
    others = []
    try:
        for name in ["p1", "p2", "p3"]:
            client = KeyroomClient(server.ws_url, server.token(name))
            await client.connect()
            others.append(client)
        for client in others:
            await client.leave()
        events: list[dict] = []
        for _ in range(6):
            event = await observer.next_event(
                predicate=lambda e: e["type"] in ("participant_joined", "participant_left")
            )
            events.append(event)
        seen = [
            (e["type"], e["participant"]["identity"] if "participant" in e else e["identity"])
            for e in events
        ]
        assert seen == [
            ("participant_joined", "p1"),
            ("participant_joined", "p2"),
            ("participant_joined", "p3"),
            ("participant_left", "p1"),
            ("participant_left", "p2"),
            ("participant_left", "p3"),
        ], observer.events
        assert all(e.get("reason") == "left" for e in events[3:])
    finally:
        await observer.leave()


async def test_late_joiner_gets_video_within_a_second(server: ServerProcess) -> None:
    publisher = KeyroomClient(server.ws_url, server.token("pub"))
    await publisher.connect()
    await publisher.publish(SyntheticVideoTrack(), source="camera")
    # The publisher is well past its first keyframe: 3 s of its video (45 packets or more).
    await eventually(lambda: server.rtp_arrived() >= 45, timeout=10)
    late = KeyroomClient(server.ws_url, server.token("late"), auto_subscribe=False)
    try:
        joined = await late.connect()
        (info,) = [p for p in joined["participants"] if p["identity"] == "pub"]
        track_sid = info["tracks"][0]["sid"]
        subscribed_at = time.monotonic()
        await late.subscribe([track_sid])
        remote = await late.next_track(timeout=5)
        frame = await asyncio.wait_for(remote.track.recv(), 5)
        elapsed = time.monotonic() - subscribed_at
        assert (frame.width, frame.height) == (160, 120)  # a decoded frame of the publisher's
        assert elapsed < 1.0, f"first video frame after {elapsed:.2f}s"
    finally:
        await late.leave()
        await publisher.leave()


async def test_server_sdp_lists_only_rtc_ip(server: ServerProcess) -> None:
    a = KeyroomClient(server.ws_url, server.token("a"))
    b = KeyroomClient(server.ws_url, server.token("b"))
    try:
        await a.connect()
        await b.connect()
        await a.publish(SyntheticVideoTrack(), source="camera")
        await collect_tracks(b, 1, 10)
        # What the server sent last on each connection: its publisher answers, subscriber offers.
        sdps = [
            pc.remoteDescription.sdp
            for c in (a, b)
            for pc in (c.publisher_pc, c.subscriber_pc)
            if pc is not None and pc.remoteDescription is not None
        ]
        assert len(sdps) == 3
        for sdp in sdps:
            addresses = set(re.findall(r"^c=IN IP[46] (\S+)", sdp, re.M))
            addresses |= {m.split()[4] for m in re.findall(r"^a=candidate:(.*)$", sdp, re.M)}
            assert addresses <= {"127.0.0.1", "0.0.0.0"}, addresses
            assert "127.0.0.1" in addresses
    finally:
        await a.leave()
        await b.leave()


async def test_malformed_frames_get_errors_and_the_session_goes_on(server: ServerProcess) -> None:
    client = KeyroomClient(server.ws_url, server.token("m"))
    other = KeyroomClient(server.ws_url, server.token("o"))
    await client.connect()
    await other.connect()
    try:
        bad = [
            "not json",
            '{"type":"nope","req":5}',
            '{"type":"add_track","req":6,"cid":7,"kind":"video"}',
            '{"type":"offer","req":8,"target":"publisher","sdp":"garbage"}',
            '{"type":"mute","req":9,"track_sid":"TR_nope","muted":"yes"}',
            '{"type":"trickle","req":10,"target":"publisher","candidate":{"candidate":"zzz"}}',
            '{"type":"subscribe","req":11,"track_sids":"all"}',
            "[]",
        ]
        for frame in bad:
            await client.send_raw(frame)
        errors = [await client.next_event("error") for _ in bad]
        assert all(e["code"] == "invalid_message" for e in errors), errors
        assert [e.get("req") for e in errors] == [None, 5, 6, 8, 9, 10, 11, None]
        assert await client.ping() < 1
        assert await other.ping() < 1
        await client.publish(SyntheticVideoTrack(), source="camera")
        assert (await other.next_track(timeout=10)).participant_identity == "m"
    finally:
        await client.leave()
        await other.leave()


async def test_too_many_bad_frames_close_4429(server: ServerProcess) -> None:
    client = KeyroomClient(server.ws_url, server.token("spammer"))
    await client.connect()
    for _ in range(25):
        try:
            await client.send_raw("{")
        except Exception:
            break
    event = await client.next_event("leave", timeout=5)
    assert event["reason"] == "protocol_error"
    assert await session_end(client) == 4429
    await client.close()


@pytest.mark.parametrize("cycles", [20])
async def test_join_leave_cycles_leave_nothing_behind(server: ServerProcess, cycles: int) -> None:
    host = KeyroomClient(server.ws_url, server.token("host"))
    await host.connect()
    await host.publish(SyntheticAudioTrack(), source="microphone")

    async def cycle(i: int) -> None:
        guest = KeyroomClient(server.ws_url, server.token(f"guest{i}"))
        await guest.connect()
        await guest.publish(SyntheticAudioTrack(), source="microphone")
        await guest.next_track(timeout=10)
        await guest.leave()

    try:
        await cycle(-1)  # warm-up: first-use imports and caches are not leaks
        # Nothing announces the end of the host's renegotiation and of the guest's last tasks.
        await asyncio.sleep(1)
        before = server.runtime()
        for i in range(cycles):
            await cycle(i)

        def cleaned_up() -> bool:
            after = server.runtime()
            return (
                after["participants"] == before["participants"] == 1
                and after["peer_connections"] == before["peer_connections"]
                and after["tasks"] <= before["tasks"]
                and after["udp_sockets"] <= before["udp_sockets"]
                and after["open_fds"] <= before["open_fds"]
            )

        await eventually(cleaned_up, timeout=5, what=lambda: f"{before} -> {server.runtime()}")
    finally:
        await host.leave()


async def test_active_speakers_come_from_audio_levels(server: ServerProcess) -> None:
    loud = KeyroomClient(server.ws_url, server.token("loud"))
    quiet = KeyroomClient(server.ws_url, server.token("quiet"))
    observer = KeyroomClient(server.ws_url, server.token("observer"))
    for client in (loud, quiet, observer):
        await client.connect()
    try:
        info = await loud.publish(SyntheticAudioTrack(), source="microphone")
        await quiet.publish(SyntheticAudioTrack(amplitude=0), source="microphone")
        event = await observer.next_event(
            "active_speakers", timeout=10, predicate=lambda e: bool(e["speakers"])
        )
        (speaker,) = event["speakers"]
        assert speaker["sid"] == loud.participant["sid"] and 0 < speaker["level"] <= 1
        await loud.mute(info["sid"], True)  # a muted track is nobody speaking
        event = await observer.next_event("active_speakers", timeout=5)
        assert event["speakers"] == []
    finally:
        for client in (loud, quiet, observer):
            await client.leave()
