"""Authentication comes first: refusals close with the right code and create nothing."""

from __future__ import annotations

import base64
import json
import time

import aiohttp
import jwt
import pytest

from tests.conftest import KEY_ID, SECRET, ServerProcess


async def first_frames(server: ServerProcess, *frames: str | bytes) -> tuple[list[dict], int]:
    """Send frames on a fresh socket; return what the server sent and its close code."""
    received = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.ws_url) as ws:
            for frame in frames:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    received.append(json.loads(message.data))
            return received, ws.close_code or 0


def join(token: str, req: int = 1) -> str:
    return json.dumps({"type": "join", "req": req, "token": token, "protocol": 1})


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def bad_tokens(server: ServerProcess) -> dict[str, str]:
    now = int(time.time())
    video = {"room": "room1", "roomJoin": True}
    base = {
        "iss": KEY_ID,
        "sub": "mallory",
        "nbf": now,
        "iat": now,
        "exp": now + 600,
        "video": video,
    }
    sign = lambda claims, secret=SECRET: jwt.encode(  # noqa: E731
        claims, secret, algorithm="HS256", headers={"kid": KEY_ID}
    )
    return {
        "bad signature": sign(base, "another-secret-that-is-long-enough-000000"),
        "expired": sign({**base, "nbf": now - 7200, "iat": now - 7200, "exp": now - 3600}),
        "missing exp": sign({k: v for k, v in base.items() if k != "exp"}),
        "no room": sign({**base, "video": {"roomJoin": True}}),
        "wildcard room": sign({**base, "video": {"room": "*", "roomJoin": True}}),
        "no roomJoin": sign({**base, "video": {"room": "room1"}}),
        "no identity": sign({k: v for k, v in base.items() if k != "sub"}),
        "alg none": b64({"alg": "none", "typ": "JWT", "kid": KEY_ID}) + "." + b64(base) + ".",
        "ttl too long": sign({**base, "exp": now + 7 * 24 * 3600}),
        "unknown key": jwt.encode(base, SECRET, algorithm="HS256", headers={"kid": "nokey"}),
        "not a jwt": "not-a-token",
    }


@pytest.mark.parametrize(
    "case",
    [
        "bad signature",
        "expired",
        "missing exp",
        "alg none",
        "ttl too long",
        "unknown key",
        "not a jwt",
        "no room",
        "wildcard room",
        "no roomJoin",
        "no identity",
    ],  # fmt: skip
)
async def test_bad_token_closes_4401_and_creates_nothing(server: ServerProcess, case: str) -> None:
    token = bad_tokens(server)[case]
    frames, code = await first_frames(server, join(token))
    assert code == 4401
    assert frames == [
        {"type": "error", "req": 1, "code": "unauthorized", "message": "unauthorized"}
    ]
    health = server.runtime()
    assert health["rooms"] == 0 and health["participants"] == 0
    assert server.runtime()["peer_connections"] == 0


async def test_wrong_room_is_another_room(server: ServerProcess) -> None:
    """Rooms compare byte for byte: a token for 'Room1' never lands in 'room1'."""
    from signaling.client import KeyroomClient

    alice = KeyroomClient(server.ws_url, server.token("alice", room="room1"))
    bob = KeyroomClient(server.ws_url, server.token("bob", room="Room1"))
    await alice.connect()
    joined = await bob.connect()
    try:
        assert joined["room"]["name"] == "Room1"
        assert joined["participants"] == []
        assert server.runtime()["rooms"] == 2
    finally:
        await alice.leave()
        await bob.leave()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", 4400),
        (json.dumps({"type": "offer", "target": "publisher", "sdp": "v=0"}), 4400),
        (json.dumps({"type": "join", "token": 42}), 4400),
        (json.dumps([1, 2]), 4400),
    ],
)
async def test_malformed_first_frame_closes_4400(
    server: ServerProcess, frame: str, code: int
) -> None:
    frames, close_code = await first_frames(server, frame)
    assert close_code == code
    assert len(frames) == 1 and frames[0]["type"] == "error"
    assert frames[0]["code"] == "invalid_message"
    assert server.runtime()["participants"] == 0


async def test_binary_first_frame_closes_1003(server: ServerProcess) -> None:
    frames, code = await first_frames(server, b"\x00\x01")
    assert code == 1003 and frames == []


async def test_oversized_frame_closes_1009(server: ServerProcess) -> None:
    frames, code = await first_frames(server, json.dumps({"type": "join", "token": "x" * 70000}))
    assert code == 1009


async def test_join_timeout_closes_4408(tmp_path) -> None:
    from tests.conftest import start_server, stop_server

    server = start_server(tmp_path, "--config", str(_config(tmp_path, "join_timeout = 0.5")))
    try:
        frames, code = await first_frames(server)
        assert code == 4408
        assert [f["type"] for f in frames] == ["error"]
    finally:
        stop_server(server)


def _config(tmp_path, server_lines: str) -> object:
    path = tmp_path / "keyroom.toml"
    path.write_text(f"[server]\n{server_lines}\n")
    return path


async def test_livekit_token_joins(server: ServerProcess) -> None:
    from livekit import api

    from signaling.client import KeyroomClient

    token = (
        api.AccessToken(KEY_ID, SECRET)
        .with_identity("lk-user")
        .with_name("LiveKit User")
        .with_grants(api.VideoGrants(room_join=True, room="room1", can_publish=False))
        .to_jwt()
    )
    client = KeyroomClient(server.ws_url, token)
    joined = await client.connect()
    try:
        me = joined["participant"]
        assert me["identity"] == "lk-user" and me["name"] == "LiveKit User"
        assert me["permissions"]["canPublish"] is False
        assert me["permissions"]["canSubscribe"] is True
    finally:
        await client.leave()


async def test_unicode_normalisation_makes_another_room(server: ServerProcess) -> None:
    import unicodedata

    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    from signaling.client import KeyroomClient

    a = KeyroomClient(server.ws_url, server.token("a", room=nfc))
    b = KeyroomClient(server.ws_url, server.token("b", room=nfd))
    await a.connect()
    joined = await b.connect()
    try:
        assert joined["room"]["name"] == nfd and joined["participants"] == []
    finally:
        await a.leave()
        await b.leave()


async def test_token_over_8_kib_is_refused(server: ServerProcess) -> None:
    token = server.token("big", grants={"canPublishSources": ["camera"]}) + "A" * 8200
    frames, code = await first_frames(server, join(token))
    assert code == 4401 and frames[0]["code"] == "unauthorized"
