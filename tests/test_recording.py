"""Encrypted recordings end to end (issue 16): a Python publisher recorded through the admin API,
downloaded, verified without a key, exported with PyAV and decoded; who may record; a killed
server's file; E2EE rooms.

KEYROOM_RECORDING_SECONDS (default 4) sets how long the publisher is recorded; the acceptance
run uses 20: `KEYROOM_RECORDING_SECONDS=20 scripts/test tests/test_recording.py -k python`.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest

from sfu.cli import main as keyroom
from sfu.recording import keys
from signaling.client import KeyroomClient, count_frames
from signaling.client.e2ee import FrameCryptor
from signaling.media import SyntheticAudioTrack, SyntheticVideoTrack
from tests.admin_helpers import call
from tests.conftest import ServerProcess, eventually, start_server, stop_server

SECONDS = float(os.environ.get("KEYROOM_RECORDING_SECONDS", "4"))
FPS = 15


def key_pair(directory: Path) -> None:
    """The operator's keys as `keyroom recording keygen` writes them: private.pem, public.pem."""
    assert keyroom(["recording", "keygen", "--private", str(directory / "private.pem"),
                    "--public", str(directory / "public.pem")]) == 0  # fmt: skip


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[ServerProcess, Path]:
    key_pair(tmp_path)
    config = tmp_path / "keyroom.toml"
    config.write_text(
        f"""
[recording]
public_key = "{tmp_path / "public.pem"}"
chunk_bytes = 16384
flush_interval = 0.2
[audit]
path = "{tmp_path / "audit.jsonl"}"
[auth]
max_failures = 1000
[rooms.rec]
recording_allowed = true
[rooms.secret]
recording_allowed = true
e2ee_required = true
auto_record = true
"""
    )
    server = start_server(tmp_path, "--config", str(config))
    yield server, tmp_path
    stop_server(server)


def recorder(server: ServerProcess, room: str = "rec") -> str:
    return server.token("operator", room, grants={"roomRecord": True, "roomJoin": False})


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def download(server: ServerProcess, path: str, token: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            server.http_url + path, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            return response.status, await response.read()


def decode(path: Path) -> dict[str, tuple[int, float, float]]:
    """Per kind: frames decoded, first and last time (s)."""
    out: dict[str, tuple[int, float, float]] = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            times = []
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue
                for frame in packet.decode():
                    times.append(float(frame.pts * frame.time_base))
            out[stream.type] = (len(times), min(times), max(times))
            container.seek(0)
    return out


async def test_a_python_publisher_is_recorded_exported_and_decoded(
    recorded: tuple[ServerProcess, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    server, tmp_path = recorded
    pub = KeyroomClient(server.ws_url, server.token("pub", "rec"))
    watcher = KeyroomClient(server.ws_url, server.token("watcher", "rec"))
    await pub.connect()
    await watcher.connect()
    try:
        await pub.publish(SyntheticVideoTrack(fps=FPS), source="camera")
        await pub.publish(SyntheticAudioTrack(), source="microphone")
        await eventually(
            lambda: len([e for e in watcher.events if e.get("type") == "track_published"]) == 2
        )
        status, body = await call(server, "POST", "/api/rooms/rec/recordings", recorder(server), {})
        assert status == 201, body
        rid = body["recording"]["id"]
        assert len(body["recording"]["tracks"]) == 2
        notice = await watcher.next_event("recording")
        assert notice["active"] is True
        late = KeyroomClient(server.ws_url, server.token("late", "rec"))
        await late.connect()  # told right after joined
        assert (await late.next_event("recording", timeout=5))["active"] is True
        await late.close()
        # The watcher decodes the video while it is recorded: SECONDS of media go by.
        remote = await watcher.next_track(predicate=lambda r: r.kind == "video")
        assert await count_frames(remote.track, SECONDS) > 0
        status, _ = await call(
            server, "DELETE", f"/api/rooms/rec/recordings/{rid}", recorder(server)
        )
        assert status == 204
        assert (await watcher.next_event("recording"))["active"] is False
    finally:
        await pub.leave()
        await watcher.leave()
    status, body = await call(server, "GET", "/api/rooms/rec/recordings", recorder(server))
    assert status == 200 and [r["id"] for r in body["recordings"]] == [rid]
    status, data = await download(server, f"/api/rooms/rec/recordings/{rid}", recorder(server))
    assert status == 200 and data.startswith(b"KEYROOM-REC")
    file = tmp_path / "got.krec"
    file.write_bytes(data)
    assert keyroom(["recording", "verify", str(file)]) == 0
    out = tmp_path / "out.webm"
    key = str(tmp_path / "private.pem")
    # Every export attempt goes on the audit trail: by default beside the configured log,
    # chained with the server's audit key.
    config = tmp_path / "export.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n'
    )
    audited = ["recording", "export", str(file), "-o", str(out), "--config", str(config)]
    assert keyroom([*audited, "--key", key, "--operator", "alice"]) == 0
    printed = capsys.readouterr().out
    decoded = decode(out)
    frames, first, last = decoded["video"]
    span = last - first
    assert span >= SECONDS - 1.0, printed
    # No frame lost between the first and the last: the count the span implies, within 5 %.
    assert abs(frames - (span * FPS + 1)) <= 0.05 * (span * FPS + 1), (frames, span, printed)
    audio_frames, audio_first, audio_last = decoded["audio"]
    assert abs(audio_frames - ((audio_last - audio_first) / 0.02 + 1)) <= 0.05 * audio_frames
    assert abs(first - audio_first) <= 0.1, printed  # A/V start offsets within 100 ms
    with capsys.disabled():
        print(
            f"\npython publisher, {SECONDS:g} s: video {frames} frames over {span:.2f} s"
            f" (expected {span * FPS + 1:.0f}), audio {audio_frames} frames,"
            f" video starts {first - audio_first:+.3f} s from audio"
        )
    events = [r["event"] for r in audit(tmp_path) if r.get("recording") == rid]
    assert "recording_started" in events and "recording_stopped" in events
    assert "recording_download" in events
    (tmp_path / "other.pem").write_bytes(keys.generate()[0])
    assert keyroom([*audited, "--key", str(tmp_path / "other.pem")]) == 1
    log = tmp_path / "audit.jsonl.exports"
    exports = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["event"], r["recording"], r["operator"], r["outcome"]) for r in exports] == [
        ("recording_export", rid, "alice", "exported"),
        ("recording_export", rid, getpass.getuser(), "failed"),
    ]
    assert "wrong private key" in exports[1]["reason"]
    assert keyroom(["audit", "verify", str(log), "--config", str(config)]) == 0


async def test_who_may_record_list_and_download(recorded: tuple[ServerProcess, Path]) -> None:
    server, tmp_path = recorded
    pub = KeyroomClient(server.ws_url, server.token("pub", "rec"))
    await pub.connect()
    try:
        await pub.publish(SyntheticAudioTrack(), source="microphone")
        status, body = await call(server, "POST", "/api/rooms/rec/recordings", recorder(server), {})
        assert status == 201
        rid = body["recording"]["id"]
        participant = server.token("someone", "rec")
        other_admin = server.token("admin", "other", grants={"roomAdmin": True})
        other_recorder = recorder(server, "other")
        no_record = server.token("admin", "rec", grants={"roomAdmin": True})
        for token in (participant, other_admin, other_recorder, no_record):
            for method, path in (
                ("POST", "/api/rooms/rec/recordings"),
                ("GET", "/api/rooms/rec/recordings"),
                ("GET", f"/api/rooms/rec/recordings/{rid}"),
                ("GET", f"/api/recordings/{rid}"),
                ("DELETE", f"/api/rooms/rec/recordings/{rid}"),
            ):
                status, _ = await call(
                    server, method, path, token, {} if method == "POST" else None
                )
                assert status == 403, (method, path)
        status, _ = await call(server, "GET", "/api/rooms/rec/recordings", None)
        assert status == 401
        for bad in ("..%2F..%2Fauth.db", "RC_..%2F..%2Faudit", "x" * 80, "RC_%2e%2e"):
            status, _ = await call(server, "GET", f"/api/recordings/{bad}", recorder(server))
            assert status in (400, 403, 404), bad
            status, _ = await call(
                server, "GET", f"/api/rooms/rec/recordings/{bad}", recorder(server)
            )
            assert status in (400, 404), bad
        # A recording of room rec is not found through another room's path.
        status, _ = await call(
            server, "GET", f"/api/rooms/other/recordings/{rid}", recorder(server, "other")
        )
        assert status == 404
        status, _ = await call(
            server, "POST", "/api/rooms/room1/recordings", recorder(server, "room1"), {}
        )
        assert status in (403, 404)  # not recording_allowed (or no such room)
    finally:
        await pub.leave()
    # Repeated refusals are aggregated by the audit log (auth/auditrate.py): both reasons show.
    await eventually(
        lambda: (
            "roomRecord is for another room" in (tmp_path / "audit.jsonl").read_text()
            and "roomRecord is false" in (tmp_path / "audit.jsonl").read_text()
        ),
        timeout=15,
    )
    # Nothing but the one recording was written, and only in data_dir/recordings.
    assert [p.parent.name for p in (tmp_path / "data").rglob("*.krec")] == ["recordings"]


async def test_a_killed_server_leaves_complete_chunks_that_export(tmp_path: Path) -> None:
    key_pair(tmp_path)
    config = tmp_path / "keyroom.toml"
    config.write_text(
        f'[recording]\npublic_key = "{tmp_path / "public.pem"}"\nchunk_bytes = 4096\n'
        "flush_interval = 0.2\n[rooms.rec]\nrecording_allowed = true\n"
    )
    server = start_server(tmp_path, "--config", str(config))
    pub = KeyroomClient(server.ws_url, server.token("pub", "rec"))
    try:
        await pub.connect()
        await pub.publish(SyntheticVideoTrack(fps=FPS), source="camera")
        await eventually(lambda: server.runtime()["stats"]["packets_in"] > 10, timeout=10)
        status, body = await call(server, "POST", "/api/rooms/rec/recordings", recorder(server), {})
        assert status == 201
        path = tmp_path / "data" / "recordings" / f"{body['recording']['id']}.krec"
        await eventually(lambda: path.stat().st_size > 30_000, timeout=15)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
    finally:
        await pub.close()
    assert keyroom(["recording", "verify", str(path)]) == 1  # no final chunk: named
    assert keyroom(["recording", "verify", "--partial", str(path)]) == 0
    out = tmp_path / "killed.webm"
    key = str(tmp_path / "private.pem")
    assert keyroom(["recording", "export", str(path), "--key", key, "-o", str(out)]) == 1
    assert (
        keyroom(["recording", "export", "--partial", str(path), "--key", key, "-o", str(out)]) == 0
    )
    assert decode(out)["video"][0] > 5
    other, _ = keys.generate()
    (tmp_path / "other.pem").write_bytes(other)
    assert keyroom(["recording", "export", str(path), "--key", str(tmp_path / "other.pem"),
                    "-o", str(out), "--partial"]) == 1  # fmt: skip


async def test_e2ee_rooms_refuse_clear_tracks_and_record_ciphertext(
    recorded: tuple[ServerProcess, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    server, tmp_path = recorded
    cryptor = FrameCryptor.from_passphrase("correct horse", "secret")
    clear = KeyroomClient(server.ws_url, server.token("clear", "secret"))
    pub = KeyroomClient(server.ws_url, server.token("pub", "secret"))
    # Python subscribers decrypt in the client: the right key decodes, a wrong one nothing.
    friend = KeyroomClient(server.ws_url, server.token("friend", "secret"), e2ee=cryptor)
    wrong = FrameCryptor.from_passphrase("wrong", "secret")
    stranger = KeyroomClient(server.ws_url, server.token("stranger", "secret"), e2ee=wrong)
    joined = await clear.connect()
    assert joined["room"]["e2ee_required"] is True
    await pub.connect()
    await friend.connect()
    await stranger.connect()
    try:
        with pytest.raises(Exception, match="end-to-end encrypted"):
            await clear.publish(SyntheticVideoTrack(), source="camera")
        info = await pub.publish(SyntheticVideoTrack(fps=FPS), source="camera", e2ee=cryptor)
        assert info["encryption"] == "e2ee"
        # auto_record: the first publication starts a recording.
        assert (await pub.next_event("recording", timeout=10))["active"] is True
        seen = await friend.next_track(timeout=15)
        assert await count_frames(seen.track, 10.0, enough=10) == 10
        unseen = await stranger.next_track(timeout=15)
        assert await count_frames(unseen.track, 1.5) == 0
        assert unseen.decryption.failures > 10 and seen.decryption.failures == 0
        await eventually(
            lambda: any(
                p.stat().st_size > 20_000 for p in (tmp_path / "data" / "recordings").glob("*.krec")
            ),
            timeout=15,
        )
    finally:
        for client in (pub, clear, friend, stranger):
            await client.leave()
    refusals = [r for r in audit(tmp_path) if r.get("event") == "publish_refused"]
    assert any("e2ee_required" in str(r.get("reason")) for r in refusals)
    (path,) = (tmp_path / "data" / "recordings").glob("*.krec")
    # An auto recording follows its room until the room closes, or until it is stopped.
    status, _ = await call(
        server, "DELETE", f"/api/rooms/secret/recordings/{path.stem}", recorder(server, "secret")
    )
    assert status == 204
    assert keyroom(["recording", "verify", str(path)]) == 0
    key = str(tmp_path / "private.pem")
    out = tmp_path / "e2ee.webm"
    assert keyroom(["recording", "export", str(path), "--key", key, "-o", str(out)]) == 1
    assert "end-to-end encrypted" in capsys.readouterr().err
    # What the server holds (and forwarded): no frame PyAV can decode.
    assert _decodable_ciphertext(path, key) == 0
    assert keyroom(["recording", "export", str(path), "--key", key, "-o", str(out),
                    "--e2ee-passphrase", "correct horse"]) == 0  # fmt: skip
    assert decode(out)["video"][0] > 5
    assert keyroom(["recording", "export", str(path), "--key", key, "-o", str(out),
                    "--e2ee-passphrase", "wrong"]) == 1  # fmt: skip


async def test_e2ee_media_keeps_decrypting_after_a_leave_ratchets_the_keys(
    server: ServerProcess,
) -> None:
    def client(identity: str) -> KeyroomClient:
        cryptor = FrameCryptor.from_passphrase("correct horse", "rotation")
        return KeyroomClient(server.ws_url, server.token(identity, "rotation"), e2ee=cryptor)

    pub, sub, leaver = client("pub"), client("sub"), client("leaver")
    for c in (pub, sub, leaver):
        await c.connect()
    try:
        await pub.publish(SyntheticVideoTrack(fps=FPS), source="camera")
        seen = await sub.next_track(timeout=15)
        assert await count_frames(seen.track, 10.0, enough=5) == 5
        await leaver.leave()
        await pub.next_event("participant_left", timeout=10)
        await sub.next_event("participant_left", timeout=10)
        assert pub.e2ee is not None and sub.e2ee is not None
        assert pub.e2ee.index == sub.e2ee.index == 1
        newest = sub.e2ee._newest  # noqa: SLF001 - which index the receiver decrypts now
        await eventually(lambda: newest.get("pub", (0, 0.0))[0] == 1, timeout=10)
        assert await count_frames(seen.track, 10.0, enough=15) == 15
        assert seen.decryption.failures == 0
    finally:
        for c in (pub, sub):
            await c.leave()


def _decodable_ciphertext(path: Path, key: str, identity: str | None = None) -> int:
    """Frames of the recorded (forwarded) payloads that a VP8 decoder accepts as they are."""
    from sfu.recording.depacketize import vp8_frames
    from sfu.recording.export import collect
    from sfu.recording.reader import decrypt

    with open(path, "rb") as file:
        _, records = decrypt(file, keys.load_private(key))
        tracks, _ = collect(records)
    # One video track, recorded layer by layer when the page sends simulcast: every layer.
    videos = [
        t
        for t in tracks.values()
        if t.kind == "video" and identity in (None, t.info["participant"]["identity"])
    ]
    assert len({t.info["sid"] for t in videos}) == 1, [t.info for t in videos]
    decoded = 0
    for track in videos:
        frames = vp8_frames(track.packets).frames
        assert len(frames) > 10 or track.info.get("layer")  # a top layer may never have come
        codec = av.CodecContext.create("vp8", "r")
        for frame in frames:
            try:
                decoded += len(codec.decode(av.Packet(frame.data)))
            except av.error.FFmpegError:
                continue
    return decoded


def test_verify_names_damage_in_a_real_file(tmp_path: Path) -> None:
    """The CLI's own words for a flipped byte (unit tests cover every kind of damage)."""
    from tests.test_recording_format import _file

    data, _private, _ = _file()
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0x40
    path = tmp_path / "d.krec"
    path.write_bytes(bytes(damaged))
    assert keyroom(["recording", "verify", str(path)]) == 1


def test_export_refuses_to_run_unaudited_when_the_audit_log_is_broken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_recording_format import _file

    data, _private, _ = _file()
    (tmp_path / "r.krec").write_bytes(data)
    (tmp_path / "audit.key").write_text("k" * 64)
    (tmp_path / "audit.jsonl").write_text('{"event": "forged"}\n')
    out = tmp_path / "out.webm"
    assert keyroom(["recording", "export", str(tmp_path / "r.krec"), "--key", "nokey.pem",
                    "-o", str(out), "--audit", str(tmp_path / "audit.jsonl"),
                    "--audit-key", str(tmp_path / "audit.key")]) == 2  # fmt: skip
    assert "audit log" in capsys.readouterr().err and not out.exists()
