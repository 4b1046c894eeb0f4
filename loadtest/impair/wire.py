"""The user-space "wire": relays Ethernet frames between veth pairs, dropping and delaying them.

This kernel has no netem, so loss and delay live here. The program runs in the wire namespace
(`loadtest.impair.topology.Topology` starts it there). Each link joins a client-side interface
and a server-side interface; frames read on one side with an `AF_PACKET` raw socket are written to
the other side after a fixed delay, unless dropped at random. Uplink (client to server) and
downlink are impaired separately, and order is kept (one FIFO per direction).

Control: one JSON object per line on stdin, `{"link": "pub", "up": {"loss": 0.03, "delay": 0.05},
"down": {...}}` (a missing direction keeps its setting), or `{"stats": true}` which prints
`{"pub": {"up": {"passed": n, "dropped": n}, ...}}` on stdout. "ready" is printed once every
socket is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import socket
import sys
from dataclasses import dataclass, field

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
MAX_FRAME = 65536


@dataclass
class Direction:
    """One direction of one link: its impairment, its delay line and its counters."""

    source: socket.socket
    sink: socket.socket
    rng: random.Random
    loss: float = 0.0
    delay: float = 0.0
    passed: int = 0
    dropped: int = 0
    line: collections.deque[tuple[float, bytes]] = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def on_readable(self) -> None:
        self.receive(asyncio.get_running_loop().time())

    def receive(self, now: float) -> None:
        while True:
            try:
                frame, address = self.source.recvfrom(MAX_FRAME)
            except BlockingIOError:
                return
            if address[2] == PACKET_OUTGOING:
                continue  # our own writes to this side, seen again
            if self.loss and self.rng.random() < self.loss:
                self.dropped += 1
                continue
            if self.delay <= 0 and not self.line:
                self._send(frame)
            else:
                self.line.append((now + self.delay, frame))
                self.wake.set()

    def _send(self, frame: bytes) -> None:
        self.passed += 1
        try:
            self.sink.send(frame)
        except OSError:
            self.dropped += 1  # a full queue on the far side (a tbf cap) loses the frame

    async def drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.line:
                self.wake.clear()
                await self.wake.wait()
                continue
            release, frame = self.line[0]
            wait = release - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self.line.popleft()
            self._send(frame)


def _raw_socket(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((interface, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setblocking(False)
    return sock


def _configure(direction: Direction, settings: dict[str, float]) -> None:
    if "loss" in settings:
        direction.loss = min(max(float(settings["loss"]), 0.0), 1.0)
    if "delay" in settings:
        direction.delay = max(float(settings["delay"]), 0.0)


async def _control(links: dict[str, dict[str, Direction]]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        if command.get("stats"):
            stats = {
                name: {side: {"passed": d.passed, "dropped": d.dropped} for side, d in pair.items()}
                for name, pair in links.items()
            }
            print(json.dumps(stats), flush=True)
            continue
        pair = links[command["link"]]
        for side in ("up", "down"):
            if side in command:
                _configure(pair[side], command[side])
        print("ok", flush=True)


async def relay(specs: list[tuple[str, str, str]], seed: int) -> None:
    """Relays every `(name, client_interface, server_interface)` link until stdin closes."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    links: dict[str, dict[str, Direction]] = {}
    for name, client_side, server_side in specs:
        client_sock, server_sock = _raw_socket(client_side), _raw_socket(server_side)
        up = Direction(client_sock, server_sock, random.Random(rng.random()))
        down = Direction(server_sock, client_sock, random.Random(rng.random()))
        links[name] = {"up": up, "down": down}
        for direction in (up, down):
            loop.add_reader(direction.source, direction.on_readable)
    drains = [asyncio.ensure_future(d.drain()) for pair in links.values() for d in pair.values()]
    print("ready", flush=True)
    try:
        await _control(links)
    finally:
        for task in drains:
            task.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "links", nargs="+", help="NAME:CLIENT_IFACE:SERVER_IFACE, one per impaired link"
    )
    args = parser.parse_args(argv)
    specs = []
    for link in args.links:
        name, client_side, server_side = link.split(":", 2)
        specs.append((name, client_side, server_side))
    asyncio.run(relay(specs, args.seed))


if __name__ == "__main__":
    main()
