"""A command-line participant: `python -m signaling.bot URL TOKEN [--publish] [--duration S]`.

Joins, optionally publishes a synthetic camera and microphone, and prints every event, a status
line with running counts every few seconds and, at the end, how many frames each received track
decoded. A refused join, a lost connection or the server ending the session is one line saying
why (exit status 1), not a traceback. Handy for trying a server by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from collections import Counter

import aiohttp
import uvloop

from signaling.client import FrameCounter, KeyroomClient, KeyroomError, RemoteTrack, SessionClosed
from signaling.client.errors import Frame
from signaling.media import SyntheticAudioTrack, SyntheticVideoTrack


class Bot:
    """The running counts the status line shows."""

    def __init__(self, client: KeyroomClient) -> None:
        self.client = client
        self.events: Counter[str] = Counter()
        self.counters: list[tuple[RemoteTrack, FrameCounter]] = []
        client.on("*", self.event)
        client.on(
            "track", lambda remote: self.counters.append((remote, FrameCounter(remote.track)))
        )

    def event(self, frame: Frame) -> None:
        self.events[str(frame.get("type"))] += 1
        print("event:", frame, flush=True)

    def status(self) -> str:
        frames = sum(counter.count for _, counter in self.counters)
        events = ", ".join(f"{kind} {n}" for kind, n in sorted(self.events.items())) or "none"
        return (
            f"status: {len(self.client.participants)} others in the room,"
            f" {len(self.counters)} tracks received, {frames} frames decoded; events: {events}"
        )

    async def finish(self) -> None:
        for remote, counter in self.counters:
            await counter.stop()
            print(
                f"received {remote.kind} from {remote.participant_identity}: {counter.count} frames"
            )


def ended(exc: SessionClosed) -> str:
    """One line for a session the server (or the network) ended."""
    why = exc.reason or "no leave frame"
    text = f"session ended by the server: {why} (close {exc.close_code})"
    return f"{text}: {exc.message}" if exc.message else text


async def run(args: argparse.Namespace) -> int:
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    client = KeyroomClient(args.url, args.token, ssl=context)
    bot = Bot(client)
    try:
        joined = await client.connect()
    except KeyroomError as exc:
        print(f"join refused: {exc.code}: {exc.message} (close {exc.close_code})", file=sys.stderr)
        return 1
    except SessionClosed as exc:
        print(ended(exc), file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"cannot reach {args.url}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    me = joined["participant"]
    print(f"joined room {joined['room']['name']!r} as {me['identity']} ({me['sid']})", flush=True)
    try:
        await stay(client, bot, args)
    except SessionClosed as exc:
        print(ended(exc), file=sys.stderr)
        return 1
    except KeyroomError as exc:
        print(f"refused: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await bot.finish()
        await client.leave()
    return 0


async def stay(client: KeyroomClient, bot: Bot, args: argparse.Namespace) -> None:
    """Publish if asked, then print the status until `duration` ends or the session does."""
    if args.publish:
        await client.publish(SyntheticVideoTrack(), source="camera", name="test pattern")
        await client.publish(SyntheticAudioTrack(), source="microphone", name="tone")
        print("publishing a test pattern and a tone", flush=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.duration
    while (left := deadline - loop.time()) > 0:
        try:
            # No event matches: this returns when the session ends (SessionClosed) or times out.
            await client.next_event(predicate=lambda _: False, timeout=min(args.status, left))
        except TimeoutError:
            print(bot.status(), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m signaling.bot", description=__doc__)
    parser.add_argument("url", help="the server's /rtc WebSocket URL (ws:// or wss://)")
    parser.add_argument("token", help="an access token")
    parser.add_argument("--publish", action="store_true", help="publish camera and microphone")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to stay (30)")
    parser.add_argument(
        "--cafile", help="PEM CA bundle to verify a wss:// server with (self-signed, private CA)"
    )
    parser.add_argument(
        "--status", type=float, default=5.0, help="seconds between status lines (5)"
    )
    args = parser.parse_args()
    return uvloop.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
