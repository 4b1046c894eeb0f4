"""LiveKit's resume (`/rtc?reconnect=1&sid=PA_...`) on the wire, without media: what the SDKs
get back when they resume, and each way a resume is refused (signaling/livekit/resume.py).
The SDKs themselves resume in tests/test_livekit_js.py and tests/test_livekit_sdk.py."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from livekit.protocol import models, rtc
from livekit.protocol import room as lkroom

from tests.conftest import ServerProcess, eventually, start_server, stop_server
from tests.test_livekit_bad_input import next_response, twirp

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module (each test in a room of its own); refusals do not brake."""
    workdir = tmp_path_factory.mktemp("lkresume")
    config = workdir / "keyroom.toml"
    config.write_text("[auth]\nmax_failures = 1000\n")
    process = start_server(workdir, "--config", str(config))
    try:
        yield process
    finally:
        stop_server(process)


@pytest.fixture
def room(request: pytest.FixtureRequest) -> str:
    return "resume-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:12]


def audited(server: ServerProcess, room: str, text: str) -> bool:
    return any(room in line and text in line for line in server.log().splitlines())


def url(server: ServerProcess, token: str, sid: str = "") -> str:
    resume = f"&reconnect=1&sid={sid}" if sid else ""
    return f"{server.ws_url}?access_token={token}&protocol=16&sdk=js{resume}"


def token(server: ServerProcess, identity: str, room: str) -> str:
    return server.token(identity, room, grants={"roomJoin": True})


async def first(ws: aiohttp.ClientWebSocketResponse) -> rtc.SignalResponse:
    message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.BINARY, message
    response = rtc.SignalResponse()
    response.ParseFromString(message.data)
    return response


async def remove(server: ServerProcess, room: str, identity: str, *, revoke: bool) -> None:
    admin = server.token("ops", room, grants={"roomAdmin": True})
    request = lkroom.RoomParticipantIdentity(
        room=room, identity=identity, revoke_token_ts=int(time.time()) if revoke else 0
    )
    status, _ = await twirp(
        server, "RemoveParticipant", request.SerializeToString(), admin, "application/protobuf"
    )
    assert status == 200


async def test_resume_answers_reconnect_then_everyone_and_the_room(
    server: ServerProcess, room: str
) -> None:
    alice, bob = token(server, "alice", room), token(server, "bob", room)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url(server, bob)) as bob_ws:
            await next_response(bob_ws, "join")
            async with http.ws_connect(url(server, alice)) as ws:
                sid = (await next_response(ws, "join")).join.participant.sid
            # The socket is gone (parked, or about to be): the SDK resumes with its join token.
            async with http.ws_connect(url(server, alice, sid)) as ws:
                reconnect = await first(ws)
                assert reconnect.WhichOneof("message") == "reconnect"
                assert reconnect.reconnect.server_info.protocol >= 9
                update = await first(ws)
                identities = {p.identity: p.sid for p in update.update.participants}
                assert identities["alice"] == sid and "bob" in identities
                assert (await first(ws)).room_update.room.name == room
                # Nobody saw alice leave and come back.
                assert ("alice", models.ParticipantInfo.DISCONNECTED) not in await seen(bob_ws)


async def seen(ws: aiohttp.ClientWebSocketResponse) -> list[tuple[str, int]]:
    """(identity, state) of every participant update `ws` got, up to a ping's answer."""
    await ws.send_bytes(rtc.SignalRequest(ping=7).SerializeToString())
    updates: list[tuple[str, int]] = []
    while (response := await first(ws)).WhichOneof("message") != "pong":
        updates += [(p.identity, p.state) for p in response.update.participants]
    return updates


async def test_a_resume_takes_over_a_socket_the_server_still_holds(
    server: ServerProcess, room: str
) -> None:
    alice = token(server, "alice", room)
    async with aiohttp.ClientSession() as http, http.ws_connect(url(server, alice)) as old:
        sid = (await next_response(old, "join")).join.participant.sid
        async with http.ws_connect(url(server, alice, sid)) as ws:
            assert (await first(ws)).WhichOneof("message") == "reconnect"
            closed = await old.receive(timeout=5)
            while closed.type == aiohttp.WSMsgType.BINARY:  # what it was sent before the end
                closed = await old.receive(timeout=5)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    log = server.log().splitlines()
    assert len([x for x in log if '"join_accepted"' in x and room in x]) == 1


async def test_a_token_of_another_identity_cannot_resume_a_participant(
    server: ServerProcess, room: str
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url(server, token(server, "alice", room))) as ws:
            sid = (await next_response(ws, "join")).join.participant.sid
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url(server, token(server, "mallory", room), sid))
            assert refused.value.status == 401
            assert await seen(ws) == []  # alice's session is untouched
    await eventually(lambda: audited(server, room, '"reason":"identity_differs"'), 5, "audited")


@pytest.mark.parametrize("revoke", [False, True])
async def test_a_participant_removed_while_away_gets_the_leave_it_missed(
    server: ServerProcess, room: str, revoke: bool
) -> None:
    alice = token(server, "alice", room)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url(server, alice)) as ws:
            sid = (await next_response(ws, "join")).join.participant.sid
        await remove(server, room, "alice", revoke=revoke)
        async with http.ws_connect(url(server, alice, sid)) as ws:
            leave = (await first(ws)).leave
            assert leave.reason == models.PARTICIPANT_REMOVED
            assert leave.action == rtc.LeaveRequest.DISCONNECT and not leave.can_reconnect
            assert (await ws.receive(timeout=5)).type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
            )
    reason = "revoked" if revoke else "removed"
    await eventually(lambda: audited(server, room, f'"reason":"{reason}"'), 5, "audited")


async def test_an_unknown_participant_is_told_to_join_again(
    server: ServerProcess, room: str
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url(server, token(server, "alice", room), "PA_gone")) as ws:
            leave = (await first(ws)).leave
            assert leave.reason == models.STATE_MISMATCH
            assert leave.action == rtc.LeaveRequest.RECONNECT
    await eventually(lambda: audited(server, room, '"reason":"unknown_participant"'), 5, "audited")


async def test_a_malformed_sid_is_refused_before_the_upgrade(
    server: ServerProcess, room: str
) -> None:
    async with aiohttp.ClientSession() as http:
        for sid in ("PA_" + "x" * 100, "PA_%00x", "PA_%C3%A9"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url(server, token(server, "alice", room), sid))
            assert refused.value.status == 400


async def test_with_resuming_off_the_sdk_is_told_to_join_again(tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text("[server]\nresume_window = 0\n")
    server = start_server(tmp_path, "--config", str(config))
    try:
        alice = token(server, "alice", "no-resume")
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url(server, alice)) as ws:
                sid = (await next_response(ws, "join")).join.participant.sid
                # Even while the server still holds the socket: nothing would keep the session.
                async with http.ws_connect(url(server, alice, sid)) as again:
                    leave = (await first(again)).leave
                    assert leave.reason == models.STATE_MISMATCH
                    assert leave.action == rtc.LeaveRequest.RECONNECT
                assert await seen(ws) == []  # the session goes on
        await eventually(
            lambda: audited(server, "no-resume", '"reason":"resume_disabled"'), 5, "audited"
        )
    finally:
        stop_server(server)
