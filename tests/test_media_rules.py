"""Rights and clean-up on the media plane, through a real server and real aiortc clients."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from aiortc.rtp import RtpPacket

from signaling.client import KeyroomClient, KeyroomError, count_frames, describe_sections
from signaling.media import SyntheticAudioTrack, SyntheticVideoTrack
from tests.conftest import ServerProcess, eventually


async def test_track_not_granted_by_add_track_is_rejected_and_dropped(
    server: ServerProcess,
) -> None:
    sneaky = KeyroomClient(server.ws_url, server.token("sneaky"))
    viewer = KeyroomClient(server.ws_url, server.token("viewer"))
    await sneaky.connect()
    await viewer.connect()
    try:
        await sneaky.publish(SyntheticAudioTrack(), source="microphone")
        granted = await viewer.next_track(timeout=10)
        assert await count_frames(granted.track, 5.0, enough=1) > 0
        # A second track straight on the PC, never announced with add_track.
        assert sneaky.publisher_pc is not None
        pc = sneaky.publisher_pc
        extra = pc.addTransceiver(SyntheticVideoTrack(), direction="sendonly")
        rejected = await sneaky.renegotiate_publisher()
        assert rejected == {extra.mid}
        # A client that ignores the rejection and sends RTP for that section anyway.
        offer = pc.localDescription.sdp
        (section,) = [s for s in describe_sections(offer) if s.mid == extra.mid]
        transport = pc.getTransceivers()[0].sender.transport
        for seq in range(50):
            packet = RtpPacket(payload_type=97, sequence_number=seq, timestamp=seq * 3000)
            packet.ssrc = section.ssrcs[0]
            packet.payload = b"\x10" + bytes(100)
            await transport._send_rtp(packet.serialize())  # noqa: SLF001
        # The sneaked video's RTP reached the server and was dropped, not forwarded.
        await eventually(
            lambda: server.runtime()["stats"]["dropped"].get("unknown_ssrc", 0) >= 50,
            what="50 packets dropped as unknown_ssrc",
        )
        await viewer.ping()  # a subscriber offer for it would have come before this reply
        assert [t.kind for t in viewer.remote_tracks.values()] == ["audio"]
        assert granted.kind == "audio"
    finally:
        await sneaky.leave()
        await viewer.leave()


async def test_publish_refused_without_right(server: ServerProcess) -> None:
    viewer = KeyroomClient(server.ws_url, server.token("v", grants={"canPublish": False}))
    camera_only = KeyroomClient(
        server.ws_url, server.token("c", grants={"canPublishSources": ["camera"]})
    )
    await viewer.connect()
    await camera_only.connect()
    try:
        for client, source in ((viewer, "camera"), (camera_only, "microphone")):
            kind = "video" if source == "camera" else "audio"
            with pytest.raises(KeyroomError) as refused:
                await client.request(
                    {"type": "add_track", "cid": "x", "kind": kind, "source": source}
                )
            assert refused.value.code == "forbidden"
        await camera_only.publish(SyntheticVideoTrack(), source="camera")
    finally:
        await viewer.leave()
        await camera_only.leave()


async def test_data_messages_carry_the_server_set_sender(server: ServerProcess) -> None:
    alice = KeyroomClient(server.ws_url, server.token("alice"))
    bob = KeyroomClient(server.ws_url, server.token("bob"))
    carol = KeyroomClient(server.ws_url, server.token("carol"))
    mute = KeyroomClient(server.ws_url, server.token("mute", grants={"canPublishData": False}))
    for client in (alice, bob, carol, mute):
        await client.connect()
    try:
        await alice.send_data("hello all", topic="chat")
        for receiver in (bob, carol, mute):
            message = await receiver.next_data(timeout=10)
            assert message["from"] == "alice" and message["payload"] == "hello all"
            assert message["topic"] == "chat" and message["channel"] == "_reliable"
            assert message["from_sid"] == alice.participant["sid"]
        await alice.send_data("just bob", to=["bob"], reliable=False)
        message = await bob.next_data(timeout=10)
        assert message["payload"] == "just bob" and message["channel"] == "_lossy"
        # Over the 64 KiB cap: dropped, the channel stays usable.
        await alice.send_data("x" * 70_000)
        await alice.send_data("after")
        assert (await carol.next_data(timeout=10))["payload"] == "after"
        assert (await bob.next_data(timeout=10))["payload"] == "after"

        # No canPublishData: the server rejects the publisher's data section (PROTOCOL 2.5),
        # so nothing can be sent (bob and carol get the next message from alice first).
        with pytest.raises(KeyroomError) as refused:
            await mute.send_data("should not pass")
        assert refused.value.code == "forbidden"
        # A forged sender in the envelope is ignored: `from` is always set by the server.
        channel = alice._publisher_channels["_reliable"]  # noqa: SLF001
        channel.send('{"from": "bob", "from_sid": "PA_fake", "payload": "forged"}')
        forged = await carol.next_data(timeout=10)
        assert forged["payload"] == "forged" and forged["from"] == "alice"
        assert forged["from_sid"] == alice.participant["sid"]
        assert (await bob.next_data(timeout=10))["payload"] == "forged"
        await alice.send_data("marker")
        assert (await bob.next_data(timeout=10))["payload"] == "marker"
        assert alice.events == [e for e in alice.events if e.get("type") != "data"]
    finally:
        for client in (alice, bob, carol, mute):
            await client.leave()


async def test_unpublish_stops_forwarding_within_a_second(server: ServerProcess) -> None:
    pub = KeyroomClient(server.ws_url, server.token("pub"))
    sub = KeyroomClient(server.ws_url, server.token("sub"))
    await pub.connect()
    await sub.connect()
    try:
        info = await pub.publish(SyntheticVideoTrack(), source="camera")
        remote = await sub.next_track(timeout=10)
        assert await count_frames(remote.track, 5.0, enough=1) > 0
        # Forwarding goes on right up to the unpublish: what stops it is the unpublish.
        flowing = server.runtime()["stats"]["packets_out"]
        await eventually(lambda: server.runtime()["stats"]["packets_out"] > flowing)
        await pub.request({"type": "unpublish", "track_sid": info["sid"]})
        event = await sub.next_event("track_unpublished", timeout=5)
        assert event["track_sid"] == info["sid"]
        await asyncio.sleep(1.0)
        settled = server.runtime()["stats"]
        # The client still sends the track: 1.5 s of its video (22 packets or more) reaches the
        # server, and none of it is forwarded.
        await eventually(
            lambda: server.rtp_arrived() >= server.rtp_arrived(settled) + 22, timeout=5
        )
        assert server.runtime()["stats"]["packets_out"] == settled["packets_out"]
    finally:
        await pub.leave()
        await sub.leave()


async def test_keyframe_requests_are_throttled(server: ServerProcess) -> None:
    pub = KeyroomClient(server.ws_url, server.token("pub"))
    sub = KeyroomClient(server.ws_url, server.token("sub"))
    await pub.connect()
    await sub.connect()
    try:
        await pub.publish(SyntheticVideoTrack(), source="camera")
        remote = await sub.next_track(timeout=10)
        await count_frames(remote.track, 1.0)
        assert sub.subscriber_pc is not None
        (transceiver,) = [t for t in sub.subscriber_pc.getTransceivers() if t.kind == "video"]
        ssrc = next(
            s.ssrcs[0]
            for s in describe_sections(sub.subscriber_pc.remoteDescription.sdp)
            if s.kind == "video"
        )

        def requests() -> int:
            return int(server.runtime()["stats"]["keyframe_requests"])

        before = requests()
        started = time.monotonic()
        for n in range(40):  # 40 PLIs in ~2 s
            if n:
                await asyncio.sleep(0.05)
            await transceiver.receiver._send_rtcp_pli(ssrc)  # noqa: SLF001
        during = requests()
        # One more, suppressed unless the window is already over: it goes out all the same, at
        # the latest when its window ends.
        await transceiver.receiver._send_rtcp_pli(ssrc)  # noqa: SLF001
        await eventually(lambda: requests() > during, timeout=2)
        elapsed = time.monotonic() - started
        sent = requests() - before
        assert 2 <= sent <= elapsed / 0.5 + 1, (sent, elapsed)
    finally:
        await pub.leave()
        await sub.leave()


async def test_sigterm_sends_server_shutdown_and_exits_within_5s(tmp_path) -> None:
    from tests.conftest import start_server

    server = start_server(tmp_path)
    clients = [KeyroomClient(server.ws_url, server.token(f"c{i}")) for i in range(3)]
    for client in clients:
        await client.connect()
    await clients[0].publish(SyntheticAudioTrack(), source="microphone")
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    for client in clients:
        event = await client.next_event("leave", timeout=5)
        assert event["reason"] == "server_shutdown"
    code = await asyncio.get_running_loop().run_in_executor(None, server.process.wait, 10)
    assert code == 0
    assert time.monotonic() - started < 5
    for client in clients:
        assert client.close_code == 1001
        await client.close()
