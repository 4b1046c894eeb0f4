"""A normal meeting raises no security alert (issue 15): the detection rules' false-positive check
against a real server.

Ten participants (by default) join one room; three publish synthetic video within the room's
`max_video_bitrate`; half of them hold a device key and join with bound tokens; every
`churn_interval` seconds one leaves and comes back with a fresh token. The room has `room_hours`
around now, so every rule is armed. At the end the server's audit log must hold no
`security_alert`. The suite runs it for a few seconds (tests/test_quiet_meeting.py); the
acceptance run is five minutes:

    python -m loadtest.quietmeeting --minutes 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth.keybinding import public_jwk, thumbprint
from auth.tokens import mint_token
from loadtest.spawn import free_port, start, stop, wait_healthy
from signaling.client import KeyroomClient, KeyroomError, SessionClosed
from signaling.media import SyntheticVideoTrack

ROOM = "standup"
PUBLISHERS = 3
MAX_VIDEO_BITRATE = 2_000_000


@dataclass
class Server:
    url: str
    key_id: str
    secret: str
    audit_path: Path


@dataclass
class Meeting:
    server: Server
    rng: random.Random
    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)
    clients: dict[str, KeyroomClient] = field(default_factory=dict)
    joins: int = 0
    failures: list[str] = field(default_factory=list)

    async def join(self, identity: str, publish: bool) -> None:
        key = self.keys.get(identity)
        bind = None if key is None else thumbprint(public_jwk(key.public_key()))
        token = mint_token(
            key_id=self.server.key_id, secret=self.server.secret, identity=identity, room=ROOM,
            ttl=900, now=time.time(), bind=bind,
        )  # fmt: skip
        client = KeyroomClient(self.server.url, token, key=key)
        try:
            await client.connect()
            if publish:
                await client.publish(SyntheticVideoTrack())
        except (KeyroomError, SessionClosed, TimeoutError, OSError) as exc:
            self.failures.append(f"{identity}: {type(exc).__name__} {exc}")
            await client.close()
            return
        self.joins += 1
        self.clients[identity] = client

    async def leave(self, identity: str) -> None:
        client = self.clients.pop(identity, None)
        if client is not None:
            await client.leave()


def _hours_around_now() -> str:
    hour = time.gmtime().tm_hour
    return f"{(hour - 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"


@contextlib.contextmanager
def quiet_server(workdir: Path) -> Iterator[Server]:
    """A dev server with an audit log, a room with hours around now and a video limit."""
    port, key_id, secret = free_port(), "quiet", secrets.token_urlsafe(32)
    audit_path = workdir / "audit.jsonl"
    config = workdir / "keyroom.toml"
    config.write_text(
        f'[audit]\npath = "{audit_path}"\n'
        f'[rooms.{ROOM}]\nmax_video_bitrate = {MAX_VIDEO_BITRATE}\nduplicate_identity = "replace"\n'
        f'[security]\nroom_hours = {{ {ROOM} = "{_hours_around_now()}" }}\n'
    )
    command = [
        sys.executable, "-m", "sfu", "serve", "--dev", "--host", "127.0.0.1", "--port", str(port),
        "--rtc-ip", "127.0.0.1", "--key", f"{key_id}={secret}", "--config", str(config),
        "--log-level", "warning",
    ]  # fmt: skip
    log_path = workdir / "server.log"
    process = start(command, log_path, cwd=workdir)
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}/healthz", log_path, "server")
        yield Server(f"ws://127.0.0.1:{port}/rtc", key_id, secret, audit_path)
    finally:
        stop(process)


async def run_meeting(
    server: Server, *, participants: int, seconds: float, churn_interval: float, seed: int = 15
) -> dict[str, Any]:
    """The meeting; the audit log is read by `alerts()` once the server has stopped."""
    rng = random.Random(seed)
    meeting = Meeting(server, rng)
    people = [f"p{n}" for n in range(participants)]
    for n, identity in enumerate(people):
        if n % 2:
            meeting.keys[identity] = Ed25519PrivateKey.generate()
    await asyncio.gather(*(meeting.join(p, n < PUBLISHERS) for n, p in enumerate(people)))
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    churned = 0
    while loop.time() < until:
        await asyncio.sleep(churn_interval)
        identity = rng.choice(people)
        await meeting.leave(identity)
        await meeting.join(identity, people.index(identity) < PUBLISHERS)
        churned += 1
    await asyncio.gather(*(meeting.leave(p) for p in list(meeting.clients)))
    return {"joins": meeting.joins, "churned": churned, "failures": meeting.failures}


def alerts(audit_path: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in audit_path.read_text().splitlines() if line]
    return [r for r in records if r.get("event") == "security_alert"]


def quiet_meeting(participants: int, seconds: float, churn_interval: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="keyroom-quiet-") as tmp:
        with quiet_server(Path(tmp)) as server:
            result = asyncio.run(
                run_meeting(
                    server, participants=participants, seconds=seconds,
                    churn_interval=churn_interval,
                )
            )  # fmt: skip
        result["alerts"] = alerts(server.audit_path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.quietmeeting", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--churn-interval", type=float, default=2.0, metavar="S")
    args = parser.parse_args(argv)
    from sfu.iceaddr import restrict_host_addresses

    restrict_host_addresses(["127.0.0.1"])
    result = quiet_meeting(args.participants, args.minutes * 60, args.churn_interval)
    print(f"joins: {result['joins']}, churned: {result['churned']}")
    for failure in result["failures"]:
        print(f"failed: {failure}")
    for alert in result["alerts"]:
        print(f"alert: {json.dumps(alert)}")
    print(f"security alerts: {len(result['alerts'])}")
    return 0 if not result["alerts"] and not result["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
