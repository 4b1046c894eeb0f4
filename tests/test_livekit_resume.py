"""LiveKit's resume (`/rtc?reconnect=1&sid=PA_...`) on the wire, without media: what the SDKs
get back when they resume, and each way a resume is refused (signaling/livekit/resume.py).
The SDKs themselves resume in tests/test_livekit_js.py and tests/test_livekit_sdk.py."""

from __future__ import annotations

import time

import aiohttp
import pytest
from livekit.protocol import models, rtc
from livekit.protocol import room as lkroom

from tests.conftest import ServerProcess, eventually
from tests.test_livekit_bad_input import next_response, twirp

pytestmark = pytest.mark.asyncio
ROOM = "resume-room"


def url(server: ServerProcess, token: str, sid: str = "") -> str:
    resume = f"&reconnect=1&sid={sid}" if sid else ""
    return f"{server.ws_url}?access_token={token}&protocol=16&sdk=js{resume}"


def token(server: ServerProcess, identity: str) -> str:
    return server.token(identity, ROOM, grants={"roomJoin": True})


async def first(ws: aiohttp.ClientWebSocketResponse) -> rtc.SignalResponse:
    message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.BINARY, message
    response = rtc.SignalResponse()
    response.ParseFromString(message.data)
    return response


async def remove(server: ServerProcess, identity: str, *, revoke: bool) -> None:
    admin = server.token("ops", ROOM, grants={"roomAdmin": True})
    request = lkroom.RoomParticipantIdentity(
        room=ROOM, identity=identity, revoke_token_ts=int(time.time()) if revoke else 0
    )
    status, _ = await twirp(
        server, "RemoveParticipant", request.SerializeToString(), admin, "application/protobuf"
    )
    assert status == 200


async def test_resume_answers_reconnect_then_everyone_and_the_room(server: ServerProcess) -> None:
    alice, bob = token(server, "alice"), token(server, "bob")
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
                assert (await first(ws)).room_update.room.name == ROOM
                # Nobody saw alice leave and come back.
                assert ("alice", models.ParticipantInfo.DISCONNECTED) not in await seen(bob_ws)


async def seen(ws: aiohttp.ClientWebSocketResponse) -> list[tuple[str, int]]:
    """(identity, state) of every participant update `ws` got, up to a ping's answer."""
    await ws.send_bytes(rtc.SignalRequest(ping=7).SerializeToString())
    updates = []
    while (response := await first(ws)).WhichOneof("message") != "pong":
        updates += [(p.identity, p.state) for p in response.update.participants]
    return updates


async def test_a_resume_takes_over_a_socket_the_server_still_holds(server: ServerProcess) -> None:
    alice = token(server, "alice")
    async with aiohttp.ClientSession() as http, http.ws_connect(url(server, alice)) as old:
        sid = (await next_response(old, "join")).join.participant.sid
        async with http.ws_connect(url(server, alice, sid)) as ws:
            assert (await first(ws)).WhichOneof("message") == "reconnect"
            closed = await old.receive(timeout=5)
            while closed.type == aiohttp.WSMsgType.BINARY:  # what it was sent before the end
                closed = await old.receive(timeout=5)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    joins = [line for line in server.log().splitlines() if '"join_accepted"' in line]
    assert len(joins) == 1


async def test_a_token_of_another_identity_cannot_resume_a_participant(
    server: ServerProcess,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url(server, token(server, "alice"))) as ws:
            sid = (await next_response(ws, "join")).join.participant.sid
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url(server, token(server, "mallory"), sid))
            assert refused.value.status == 401
            assert await seen(ws) == []  # alice's session is untouched
    await eventually(lambda: '"reason":"identity_differs"' in server.log(), 5, "audited")


@pytest.mark.parametrize("revoke", [False, True])
async def test_a_participant_removed_while_away_gets_the_leave_it_missed(
    server: ServerProcess, revoke: bool
) -> None:
    alice = token(server, "alice")
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url(server, alice)) as ws:
            sid = (await next_response(ws, "join")).join.participant.sid
        await remove(server, "alice", revoke=revoke)
        async with http.ws_connect(url(server, alice, sid)) as ws:
            leave = (await first(ws)).leave
            assert leave.reason == models.PARTICIPANT_REMOVED
            assert leave.action == rtc.LeaveRequest.DISCONNECT and not leave.can_reconnect
            assert (await ws.receive(timeout=5)).type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
            )
    reason = "revoked" if revoke else "removed"
    await eventually(lambda: f'"reason":"{reason}"' in server.log(), 5, "audited")


async def test_an_unknown_participant_is_told_to_join_again(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url(server, token(server, "alice"), "PA_gone")) as ws:
            leave = (await first(ws)).leave
            assert leave.reason == models.STATE_MISMATCH
            assert leave.action == rtc.LeaveRequest.RECONNECT
    await eventually(lambda: '"reason":"unknown_participant"' in server.log(), 5, "audited")
