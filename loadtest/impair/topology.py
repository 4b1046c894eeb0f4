"""Impaired-network topology: server, wire and one namespace per client, built by the caller.

    client ns "pub"            wire ns                          server ns
    krc0 10.78.0.10 ==veth== krw0c  [wire.py relay]  krw0s ==veth== krs0 --+
    krc1 10.78.0.11 ==veth== krw1c  [  per link,  ]  krw1s ==veth== krs1 --+-- krbr0 10.78.0.1
                                    [ up and down ]                         (bridge)

Every namespace is held by a `sleep` process started with `unshare --net` from the caller's own
namespace (the test's throw-away namespace), so nothing gets a global name and everything goes
away with the holders. Loss and delay: the relay (`loadtest.impair.wire`), per link and
direction. Rate caps: `tc tbf` on the client's interface (uplink) or the server's bridge port
(downlink). Offloads are switched off on every veth: a raw socket would otherwise see
unsegmented super-frames and frames with unfinished checksums.

`run_in(name, coroutine_function)` runs a coroutine on an event loop in a thread that entered
the namespace (`setns` is per thread), so an aiortc client of the test process lives behind its
link; `command(name, argv)` prefixes a command with `nsenter` (a server, a browser).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import fcntl
import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

SERVER_ADDRESS = "10.78.0.1"
PREFIX = 24
CLONE_NEWNET = 0x40000000
SIOCETHTOOL = 0x8946
# Legacy ethtool "set" commands: tx checksum, scatter-gather, TSO, GSO, GRO.
_OFFLOADS = (0x17, 0x19, 0x1F, 0x24, 0x2C)


@dataclass(frozen=True)
class Impairment:
    """One direction of one link; `rate_kbit` caps it with tbf (None: uncapped)."""

    loss: float = 0.0
    delay: float = 0.0
    rate_kbit: int | None = None


def _run(argv: Sequence[str]) -> None:
    subprocess.run(list(argv), check=True, stdout=subprocess.DEVNULL)


def _disable_offloads(interface: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for command in _OFFLOADS:
            value = ctypes.create_string_buffer(struct.pack("II", command, 0))
            request = struct.pack("16sP", interface.encode(), ctypes.addressof(value))
            request += b"\0" * (40 - len(request))
            with contextlib.suppress(OSError):  # GRO on older kernels, say
                fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)


class Namespace:
    """A network namespace held by a `sleep` process; gone when the process ends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.holder = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", "ip link set lo up && echo up && exec sleep 1d"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "up":
            raise RuntimeError(f"namespace {name}: unshare failed")
        self.path = f"/proc/{self.holder.pid}/ns/net"

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={self.path}", *argv]

    def run(self, *argv: str) -> None:
        _run(self.command(argv))

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def _enter(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path) as handle:
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")


class Topology:
    """A server namespace and one impaired link per named client (see the module docstring)."""

    def __init__(self, clients: Sequence[str], seed: int = 1) -> None:
        self.clients = list(clients)
        self.namespaces: dict[str, Namespace] = {}
        self._wire: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        try:
            self._build(seed)
        except BaseException:
            self.close()
            raise

    def _build(self, seed: int) -> None:
        server = self.namespaces["server"] = Namespace("server")
        wire = self.namespaces["wire"] = Namespace("wire")
        server.run("ip", "link", "add", "krbr0", "type", "bridge")
        server.run("ip", "addr", "add", f"{SERVER_ADDRESS}/{PREFIX}", "dev", "krbr0")
        server.run("ip", "link", "set", "krbr0", "up")
        links = []
        for index, name in enumerate(self.clients):
            client = self.namespaces[name] = Namespace(name)
            self._pair(f"krc{index}", client, f"krw{index}c", wire)
            self._pair(f"krs{index}", server, f"krw{index}s", wire)
            client.run("ip", "addr", "add", f"{self.address(name)}/{PREFIX}", "dev", f"krc{index}")
            server.run("ip", "link", "set", f"krs{index}", "master", "krbr0")
            links.append(f"{name}:krw{index}c:krw{index}s")
        self._wire = subprocess.Popen(
            wire.command(
                [sys.executable, "-m", "loadtest.impair.wire", "--seed", str(seed), *links]
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._reply() != "ready":
            raise RuntimeError("the wire relay did not start")

    def _pair(self, a: str, a_ns: Namespace, b: str, b_ns: Namespace) -> None:
        _run(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
        for interface, namespace in ((a, a_ns), (b, b_ns)):
            _run(["ip", "link", "set", interface, "netns", str(namespace.holder.pid)])
            namespace.run("ip", "link", "set", interface, "up")
            self.run_sync(namespace.name, _disable_offloads, interface)

    def _reply(self) -> str:
        assert self._wire is not None and self._wire.stdout is not None
        return self._wire.stdout.readline().strip()

    def _send(self, command: dict[str, Any]) -> str:
        assert self._wire is not None and self._wire.stdin is not None
        with self._lock:
            self._wire.stdin.write(json.dumps(command) + "\n")
            self._wire.stdin.flush()
            return self._reply()

    def address(self, client: str) -> str:
        return f"10.78.0.{10 + self.clients.index(client)}"

    def interface(self, client: str) -> str:
        return f"krc{self.clients.index(client)}"

    def command(self, namespace: str, argv: Sequence[str]) -> list[str]:
        """`argv` prefixed to run in `namespace` ("server" or a client name)."""
        return self.namespaces[namespace].command(argv)

    def impair(
        self, client: str, up: Impairment | None = None, down: Impairment | None = None
    ) -> None:
        """Sets loss, delay and rate of a client's uplink and/or downlink (None: unchanged)."""
        index = self.clients.index(client)
        command: dict[str, Any] = {"link": client}
        for side, impairment, namespace, interface in (
            ("up", up, client, f"krc{index}"),
            ("down", down, "server", f"krs{index}"),
        ):
            if impairment is None:
                continue
            command[side] = {"loss": impairment.loss, "delay": impairment.delay}
            self._rate(namespace, interface, impairment.rate_kbit)
        if self._send(command) != "ok":
            raise RuntimeError("the wire relay refused the impairment")

    def _rate(self, namespace: str, interface: str, rate_kbit: int | None) -> None:
        ns = self.namespaces[namespace]
        subprocess.run(
            ns.command(["tc", "qdisc", "del", "dev", interface, "root"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if rate_kbit is not None:
            ns.run(
                "tc", "qdisc", "add", "dev", interface, "root", "tbf",
                "rate", f"{rate_kbit}kbit", "burst", "16kb", "latency", "100ms",
            )  # fmt: skip

    def stats(self) -> dict[str, dict[str, dict[str, int]]]:
        """Frames passed and dropped by the relay, per client and direction."""
        result: dict[str, dict[str, dict[str, int]]] = json.loads(self._send({"stats": True}))
        return result

    def readdress(self, client: str, address: str) -> None:
        """Moves a client to another address on its link (a network change, for ICE restart)."""
        interface = self.interface(client)
        self.namespaces[client].run("ip", "addr", "flush", "dev", interface)
        self.namespaces[client].run("ip", "addr", "add", f"{address}/{PREFIX}", "dev", interface)

    def run_sync(self, namespace: str, function: Callable[..., T], *args: Any) -> T:
        """Calls `function(*args)` in a fresh thread that entered the namespace."""
        path = self.namespaces[namespace].path

        def entered() -> T:
            _enter(path)
            return function(*args)

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(entered).result()

    def run_in(self, namespace: str, coroutine: Callable[[], Awaitable[T]]) -> T:
        """Runs `coroutine()` to completion on a new event loop inside the namespace."""

        async def main() -> T:
            return await coroutine()

        return self.run_sync(namespace, lambda: asyncio.run(main()))

    async def run_in_async(self, namespace: str, coroutine: Callable[[], Awaitable[T]]) -> T:
        """`run_in` without blocking the caller's event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.run_in, namespace, coroutine)

    def close(self) -> None:
        if self._wire is not None:
            with contextlib.suppress(OSError, ValueError):
                assert self._wire.stdin is not None
                self._wire.stdin.close()
            try:
                self._wire.wait(5)
            except subprocess.TimeoutExpired:
                self._wire.kill()
                self._wire.wait()
            self._wire = None
        for namespace in reversed(list(self.namespaces.values())):
            namespace.close()
        self.namespaces.clear()


@contextlib.contextmanager
def topology(clients: Sequence[str], seed: int = 1) -> Iterator[Topology]:
    built = Topology(clients, seed)
    try:
        yield built
    finally:
        built.close()
