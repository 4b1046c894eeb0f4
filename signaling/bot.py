"""A command-line participant: `python -m signaling.bot URL TOKEN [--publish] [--duration S]`.

Joins, optionally publishes a synthetic camera and microphone, and prints every event and, for
each received track, how many frames it decoded. Handy for trying a server by hand.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop

from signaling.client import FrameCounter, KeyroomClient, RemoteTrack
from signaling.media import SyntheticAudioTrack, SyntheticVideoTrack


async def run(url: str, token: str, publish: bool, duration: float) -> int:
    client = KeyroomClient(url, token)
    joined = await client.connect()
    me = joined["participant"]
    print(f"joined room {joined['room']['name']!r} as {me['identity']} ({me['sid']})")
    counters: list[tuple[RemoteTrack, FrameCounter]] = []
    client.on("track", lambda remote: counters.append((remote, FrameCounter(remote.track))))
    for kind in ("participant_joined", "participant_left", "track_published", "error"):
        client.on(kind, lambda frame: print("event:", frame))
    if publish:
        await client.publish(SyntheticVideoTrack(), source="camera", name="test pattern")
        await client.publish(SyntheticAudioTrack(), source="microphone", name="tone")
        print("publishing a test pattern and a tone")
    try:
        await asyncio.sleep(duration)
    finally:
        for remote, counter in counters:
            await counter.stop()
            print(
                f"received {remote.kind} from {remote.participant_identity}: {counter.count} frames"
            )
        await client.leave()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m signaling.bot", description=__doc__)
    parser.add_argument("url", help="the server's /rtc WebSocket URL")
    parser.add_argument("token", help="an access token")
    parser.add_argument("--publish", action="store_true", help="publish camera and microphone")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to stay (30)")
    args = parser.parse_args()
    return uvloop.run(run(args.url, args.token, args.publish, args.duration))


if __name__ == "__main__":
    raise SystemExit(main())
