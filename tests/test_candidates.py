"""Remote candidate hygiene: the deny list, the per-connection cap, and a 5,000-candidate offer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aioice.ice
import orjson
import pytest
from aiortc import RTCPeerConnection

from sfu.candidates import (
    DENIED,
    HOSTNAME,
    NOT_RELAY,
    TOO_MANY,
    CandidatePolicy,
    RemoteCandidateGuard,
    denied_address,
)
from signaling.client import KeyroomClient, KeyroomError, count_frames
from signaling.media import SyntheticVideoTrack
from tests.conftest import start_server, stop_server

PUBLIC = CandidatePolicy(allow_private=False, allow_loopback=False)


@pytest.mark.parametrize(
    "host",
    [
        "169.254.1.1", "fe80::1", "224.0.0.251", "ff02::1", "0.0.0.0", "::", "255.255.255.255",
        "10.0.0.1", "172.16.5.5", "192.168.1.1", "100.64.0.1", "fd00::1", "127.0.0.1", "::1",
        "::ffff:10.0.0.1", "::ffff:127.0.0.1",
    ],
)  # fmt: skip
def test_a_public_deployment_denies_internal_addresses(host: str) -> None:
    assert denied_address(host, PUBLIC)


@pytest.mark.parametrize("host", ["8.8.8.8", "2001:4860::1", "::ffff:8.8.8.8"])
def test_a_public_deployment_accepts_public_addresses(host: str) -> None:
    assert not denied_address(host, PUBLIC)


@pytest.mark.parametrize(
    "host", ["abc.local", "5f3a9c1e-1b2d-4c3e-9f00-0123456789ab.local", "evil.example"]
)
def test_host_names_are_refused_whatever_the_policy(host: str) -> None:
    """mDNS and other names: the address they resolve to would never meet the policy."""
    guard, refused = make_guard(CandidatePolicy(allow_private=True, allow_loopback=True))
    assert not guard.admit_candidate(host)
    assert refused == [(HOSTNAME, host)] and guard.accepted == 0
    assert denied_address(host, PUBLIC)


def test_private_and_loopback_are_separate_switches() -> None:
    lan = CandidatePolicy(allow_private=True, allow_loopback=False)
    assert not denied_address("192.168.1.1", lan)
    assert denied_address("127.0.0.1", lan)
    assert denied_address("169.254.1.1", lan)  # link-local never
    dev = CandidatePolicy(allow_private=True, allow_loopback=True)
    assert not denied_address("127.0.0.1", dev)


def make_guard(
    policy: CandidatePolicy, relay_only: bool = False
) -> tuple[RemoteCandidateGuard, list[tuple[str, str]]]:
    refused: list[tuple[str, str]] = []
    guard = RemoteCandidateGuard(policy, lambda: relay_only, lambda r, a: refused.append((r, a)))
    return guard, refused


def test_the_cap_counts_admitted_candidates_and_reports_once() -> None:
    guard, refused = make_guard(CandidatePolicy(max_remote_candidates=3))
    results = [guard.admit_candidate(f"8.8.8.{i}") for i in range(10)]
    assert results == [True] * 3 + [False] * 7
    assert refused == [(TOO_MANY, "*")]
    assert (guard.accepted, guard.refused) == (3, 7)


def test_denied_candidates_do_not_use_up_the_cap() -> None:
    guard, refused = make_guard(CandidatePolicy(max_remote_candidates=1, allow_private=False))
    assert not guard.admit_candidate("10.0.0.1")
    assert guard.admit_candidate("8.8.8.8")
    assert refused == [(DENIED, "10.0.0.1")]


def test_refusal_reports_are_bounded() -> None:
    guard, refused = make_guard(CandidatePolicy(allow_private=False))
    for i in range(1000):
        guard.admit_check(f"10.0.{i // 250}.{i % 250}")
    assert len(refused) == 16 and guard.refused == 1000


def test_relay_only_admits_the_relays_only() -> None:
    policy = CandidatePolicy(relay_addresses=frozenset({"127.0.0.2", "2001:db8::5"}))
    guard, refused = make_guard(policy, relay_only=True)
    assert guard.admit_candidate("127.0.0.2") and guard.admit_check("127.0.0.2")
    assert guard.admit_check("::ffff:127.0.0.2")
    assert guard.admit_check("2001:db8:0::5")
    assert not guard.admit_candidate("127.0.0.1") and not guard.admit_check("127.0.0.1")
    assert not guard.admit_candidate("abc.local")
    assert refused[0] == (NOT_RELAY, "127.0.0.1")
    open_room, _ = make_guard(policy, relay_only=False)
    assert open_room.admit_check("127.0.0.1")


def test_the_internals_the_guard_patches_exist() -> None:
    # sfu.internals.guard_remote_candidates replaces these per instance.
    assert hasattr(RTCPeerConnection, "_RTCPeerConnection__createDtlsTransport")
    assert hasattr(aioice.ice.Connection, "add_remote_candidate")
    assert hasattr(aioice.ice.Connection, "request_received")


# --- a real server ------------------------------------------------------------------------------

FLOOD = 5000
MAX_SDP_CHARS = 65536  # signaling/messages.py: a larger offer is refused before it is parsed


def junk_candidates(count: int) -> list[str]:
    lines = [
        f"a=candidate:{i} 1 udp 9 11.{i // 250}.{i % 250}.1 {1024 + i} typ host"
        for i in range(count)
    ]
    return [
        "a=candidate:d1 1 udp 9 169.254.9.9 9 typ host",
        "a=candidate:d2 1 udp 9 224.0.0.9 9 typ host",
        *lines,
    ]


def flood_offer(sdp: str, count: int, *, fit: bool) -> str:
    """The offer with junk candidates after the client's real ones, in the first section; with
    `fit`, only as many as keep it within the largest SDP the server accepts."""
    lines = sdp.split("\r\n")
    first = next(i for i, line in enumerate(lines) if line.startswith("m="))
    last = max(i for i, line in enumerate(lines) if line.startswith("a=candidate:") and i > first)
    junk = junk_candidates(count)
    if fit:
        room, kept = MAX_SDP_CHARS - len(sdp), 0
        while kept < len(junk) and room >= len(junk[kept]) + 2:
            room -= len(junk[kept]) + 2
            kept += 1
        junk = junk[:kept]
    return "\r\n".join(lines[: last + 1] + junk + lines[last + 1 :])


def ice_refusals(text: str) -> list[dict[str, Any]]:
    """The `ice_refused` audit records in a server log or an audit file."""
    return [
        record
        for line in text.splitlines()
        if '"event":"ice_refused"' in line
        for record in [orjson.loads(line[line.index("{") :])]
    ]


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1))


async def test_candidate_floods_are_capped_and_the_session_survives(tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text("[server]\nmax_frame_bytes = 1048576\n")
    server = start_server(tmp_path, "--config", str(config))
    alice = KeyroomClient(server.ws_url, server.token("alice"))
    bob = KeyroomClient(server.ws_url, server.token("bob"))
    try:
        await alice.connect()
        await bob.connect()
        # 5,000 in one offer: over the SDP size limit, refused whole; the session goes on.
        pc = alice.publisher_pc
        assert pc is not None
        pc.addTransceiver("audio", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        huge = flood_offer(pc.localDescription.sdp, FLOOD, fit=False)
        assert huge.count("a=candidate:") > FLOOD
        with pytest.raises(KeyroomError, match="invalid_message"):
            await alice.request({"type": "offer", "target": "publisher", "sdp": huge})
        await alice.ping()

        # As many as fit in an accepted offer, then 5,000 trickled: 32 are kept per connection.
        plain_request = alice.request

        async def flooding_request(frame: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
            if frame.get("type") == "offer":
                frame = {**frame, "sdp": flood_offer(frame["sdp"], FLOOD, fit=True)}
            return await plain_request(frame, timeout=30)

        alice.request = flooding_request  # type: ignore[method-assign]
        before = rss_kib(server.process.pid)
        await alice.publish(SyntheticVideoTrack(), source="camera")
        remote = await bob.next_track(timeout=20)
        for line in junk_candidates(FLOOD):
            candidate = {"candidate": line[2:], "sdpMid": "0", "sdpMLineIndex": 0}
            await alice.send_raw(
                orjson.dumps(
                    {"type": "trickle", "target": "publisher", "candidate": candidate}
                ).decode()
            )
        await alice.ping()
        assert await count_frames(remote.track, 2.0) > 10
        grown = rss_kib(server.process.pid) - before
        assert grown < 8 * 1024, f"server RSS grew {grown} KiB"
        refusals = [(r["pc"], r["reason"], r["address"]) for r in ice_refusals(server.log())]
        # Once per connection, and audited (the audit log's lines reach the server log too).
        assert refusals.count(("publisher", TOO_MANY, "*")) == 1
        assert ("publisher", DENIED, "169.254.9.9") in refusals
        assert ("publisher", DENIED, "224.0.0.9") in refusals
        assert pc.connectionState == "connected"
    finally:
        await alice.leave()
        await bob.leave()
        stop_server(server)
