"""Bad input on keyroom's LiveKit edge and Twirp RoomService: each refused in LiveKit's shape
(HTTP status before the upgrade, `request_response` after it, Twirp's `{code, msg}`), audited
where keyroom audits it, nothing created. Signaling only: a loopback dev server is enough."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from livekit.protocol import models, rtc
from livekit.protocol import room as lkroom

from tests.conftest import ServerProcess, eventually, wait_logged

pytestmark = pytest.mark.asyncio


def lk_join_token(server: ServerProcess, identity: str, **grants: Any) -> str:
    return server.token(identity, "bad-room", grants={"roomJoin": True, **grants})


@contextlib.asynccontextmanager
async def raw(
    server: ServerProcess, identity: str
) -> AsyncIterator[tuple[aiohttp.ClientWebSocketResponse, rtc.JoinResponse]]:
    url = f"{server.ws_url}?access_token={lk_join_token(server, identity)}&protocol=16&sdk=js"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        join = await next_response(ws, "join")
        yield ws, join.join


async def next_response(
    ws: aiohttp.ClientWebSocketResponse, case: str, timeout: float = 5
) -> rtc.SignalResponse:
    """The next SignalResponse of `case`, skipping others (offers, updates)."""
    deadline = time.monotonic() + timeout
    while True:
        message = await ws.receive(timeout=max(deadline - time.monotonic(), 0.01))
        assert message.type == aiohttp.WSMsgType.BINARY, message
        response = rtc.SignalResponse()
        response.ParseFromString(message.data)
        if response.WhichOneof("message") == case:
            return response


async def send(ws: aiohttp.ClientWebSocketResponse, **request: Any) -> None:
    await ws.send_bytes(rtc.SignalRequest(**request).SerializeToString())


async def refused(ws: aiohttp.ClientWebSocketResponse) -> rtc.RequestResponse:
    return (await next_response(ws, "request_response")).request_response


async def test_join_answers_in_livekit_terms(server: ServerProcess) -> None:
    async with raw(server, "alice") as (ws, join):
        assert join.participant.sid.startswith("PA_") and join.room.sid.startswith("RM_")
        assert join.participant.identity == "alice" and join.subscriber_primary
        assert join.ping_interval > 0 and join.server_info.protocol >= 9
        await send(ws, ping_req=rtc.Ping(timestamp=1234))
        pong = await next_response(ws, "pong_resp")
        assert pong.pong_resp.last_ping_timestamp == 1234
        await send(ws, ping=99)
        assert (await next_response(ws, "pong")).pong == 99


async def test_unparseable_and_unknown_frames_are_refused_and_counted(
    server: ServerProcess,
) -> None:
    async with raw(server, "alice") as (ws, _join):
        await ws.send_bytes(b"\xff\xff\xff\xff not protobuf")
        answer = await refused(ws)
        assert answer.reason == rtc.RequestResponse.INVALID_REQUEST
        assert "not a SignalRequest" in answer.message
        # Field 99 (no oneof case keyroom or LiveKit knows): a valid message with nothing in it.
        await ws.send_bytes(bytes([0x9A, 0x06, 0x01, 0x00]))
        assert "names no request" in (await refused(ws)).message
        # A case LiveKit has and keyroom does not implement: said so, not ignored.
        await send(ws, subscription_permission=rtc.SubscriptionPermission(all_participants=True))
        assert "not supported" in (await refused(ws)).message
        # Keep going: too many malformed frames end the session (keyroom's limit).
        for _ in range(40):
            if ws.closed:
                break
            await ws.send_bytes(b"\xff")
        closing = await ws.receive(timeout=5)
        while closing.type == aiohttp.WSMsgType.BINARY:
            closing = await ws.receive(timeout=5)
        assert ws.close_code == 4429


async def test_oversized_frame_closes_with_1009(server: ServerProcess) -> None:
    async with raw(server, "alice") as (ws, _join):
        await send(ws, offer=rtc.SessionDescription(type="offer", sdp="v" * 70_000))
        while not ws.closed:
            await ws.receive(timeout=5)
        assert ws.close_code == 1009


async def test_requests_before_their_time_are_refused(server: ServerProcess) -> None:
    async with raw(server, "alice") as (ws, _join):
        candidate = '{"candidate":"candidate:1 1 udp 1 10.0.0.1 9 typ host","sdpMid":"0"}'
        await send(ws, trickle=rtc.TrickleRequest(candidateInit=candidate, target=rtc.PUBLISHER))
        answer = await refused(ws)
        assert answer.WhichOneof("request") == "trickle"  # the request it refuses, echoed
        assert "no publisher description" in answer.message
        await send(ws, answer=rtc.SessionDescription(type="answer", sdp=""))
        assert "empty SDP" in (await refused(ws)).message


async def test_join_without_a_token_or_with_two_is_refused_before_the_upgrade(
    server: ServerProcess,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}/rtc?protocol=16&sdk=js") as response:
            assert (response.status, await response.text()) == (401, "no access token")
        token = lk_join_token(server, "alice")
        url = f"{server.http_url}/rtc?access_token={token}&protocol=16"
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            assert (response.status, await response.text()) == (400, "more than one access token")
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        async with http.get(f"{server.http_url}/rtc?access_token={forged}&sdk=js") as response:
            assert response.status == 401
        async with http.get(f"{server.http_url}/rtc/validate?access_token={forged}") as response:
            assert (response.status, await response.text()) == (401, "unauthorized")
        async with http.get(f"{server.http_url}/rtc/validate?access_token={token}") as response:
            assert response.status == 200
        async with http.get(f"{server.http_url}/rtc/v1?access_token={token}") as response:
            assert response.status == 404  # the Python SDK's cue to use /rtc
    log = await wait_logged(server, '"event":"validate_refused"')
    assert '"reason":"no access token"' in log and '"reason":"more than one access token"' in log
    assert '"event":"join_refused"' in log and '"event":"validate_refused"' in log
    assert server.get_json("/debug/runtime")["participants"] == 0


async def test_other_participants_track_sids_are_not_found(server: ServerProcess) -> None:
    async with raw(server, "alice") as (alice, _), raw(server, "bob") as (bob, _):
        add = rtc.AddTrackRequest(cid="cam-1", name="cam", type=models.VIDEO, source=models.CAMERA)
        await send(alice, add_track=add)
        published = await next_response(alice, "track_published")
        sid = published.track_published.track.sid
        assert sid.startswith("TR_") and published.track_published.cid == "cam-1"
        await send(bob, mute=rtc.MuteTrackRequest(sid=sid, muted=True))
        answer = await refused(bob)
        assert answer.reason == rtc.RequestResponse.NOT_FOUND and answer.mute.sid == sid
        # Not bound to a media section yet, and alice's own: not subscribable either.
        await send(bob, subscription=rtc.UpdateSubscription(track_sids=[sid], subscribe=True))
        assert (await refused(bob)).reason == rtc.RequestResponse.NOT_FOUND
        await send(alice, subscription=rtc.UpdateSubscription(track_sids=[sid], subscribe=True))
        assert (await refused(alice)).reason == rtc.RequestResponse.NOT_FOUND


async def test_publish_refused_by_the_grant_is_audited(server: ServerProcess) -> None:
    token = server.token("viewer", "bad-room", grants={"roomJoin": True, "canPublish": False})
    url = f"{server.ws_url}?access_token={token}&sdk=js"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await next_response(ws, "join")
        await send(ws, add_track=rtc.AddTrackRequest(cid="c", type=models.AUDIO))
        answer = await refused(ws)
        assert answer.reason == rtc.RequestResponse.NOT_ALLOWED and answer.add_track.cid == "c"
    await eventually(lambda: '"event":"publish_refused"' in server.log(), 5, "audit record")


async def twirp(
    server: ServerProcess, method: str, body: bytes, token: str, content_type: str
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    url = f"{server.http_url}/twirp/livekit.RoomService/{method}"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        raw_body = await r.read()
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, raw_body


async def test_twirp_with_participant_tokens_and_bad_bodies(server: ServerProcess) -> None:
    participant = lk_join_token(server, "alice")
    listing = lkroom.ListParticipantsRequest(room="bad-room").SerializeToString()
    status, body = await twirp(
        server, "ListParticipants", listing, participant, "application/protobuf"
    )
    assert (status, body["code"]) == (403, "permission_denied")
    status, body = await twirp(
        server, "CreateRoom", b'{"name":"x"}', participant, "application/json"
    )
    assert (status, body["code"]) == (403, "permission_denied")
    status, body = await twirp(server, "ListRooms", b"{}", "not-a-token", "application/json")
    assert (status, body["code"]) == (401, "unauthenticated")
    admin = server.token("ops", "bad-room", grants={"roomAdmin": True, "roomCreate": True})
    status, body = await twirp(server, "CreateRoom", b"\xff\xff", admin, "application/protobuf")
    assert (status, body["code"]) == (400, "invalid_argument")
    status, body = await twirp(server, "StartEgress", b"{}", admin, "application/json")
    assert (status, body["code"]) == (404, "bad_route")
    # Nothing was created; a valid call works in JSON too.
    status, body = await twirp(
        server, "CreateRoom", b'{"name":"bad-room"}', admin, "application/json"
    )
    assert status == 200 and body["name"] == "bad-room" and body["sid"].startswith("RM_")
    await eventually(lambda: server.log().count('"event":"admin_refused"') >= 3, 10, server.log)
    log = server.log()
    assert '"method":"ListParticipants"' in log
