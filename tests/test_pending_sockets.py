"""Sockets that never join (issue 11 item 6): one join deadline that pings do not extend, caps on
sockets not yet joined per address and in all, and an HTTP head and keep-alive timeout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from signaling.pending import PER_IP, TOTAL, PendingConnections, PendingFull
from signaling.protocol import CLOSE_JOIN_TIMEOUT
from tests.conftest import ServerProcess, start_server, stop_server


@contextlib.contextmanager
def configured(tmp_path: Path, server_options: str) -> Iterator[ServerProcess]:
    path = tmp_path / "keyroom.toml"
    path.write_text(f"[server]\n{server_options}\n")
    server = start_server(tmp_path, "--config", str(path))
    try:
        yield server
    finally:
        stop_server(server)


def join(token: str) -> str:
    return json.dumps({"type": "join", "req": 1, "token": token, "protocol": 1})


def metric(server: ServerProcess, line_start: str) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(line_start + " "):
                return float(line.split()[-1])
    raise AssertionError(f"{line_start} not in /metrics")


def test_pending_table_caps_per_address_and_in_all() -> None:
    table = PendingConnections(max_total=3, max_per_address=2)
    a1, a2 = table.admit("192.0.2.1"), table.admit("192.0.2.1")
    with pytest.raises(PendingFull) as per_ip:
        table.admit("192.0.2.1")
    assert per_ip.value.reason == PER_IP
    b1 = table.admit("192.0.2.2")
    with pytest.raises(PendingFull) as total:
        table.admit("192.0.2.3")
    assert total.value.reason == TOTAL and len(table) == 3
    a1.release()
    a1.release()  # idempotent: the admitted path and the socket's end both release
    assert len(table) == 2
    table.admit("192.0.2.1")
    for slot in (a2, b1):
        slot.release()
    assert len(table) == 1


async def test_pings_do_not_extend_the_join_deadline(tmp_path: Path) -> None:
    join_timeout = 2.0
    with configured(tmp_path, f"join_timeout = {join_timeout}") as server:
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            async with http.ws_connect(server.ws_url, autoclose=False) as ws:
                pings = 0
                # A ping about every second, each answered by the server; bounded either way.
                async with asyncio.timeout(join_timeout + 4):
                    while True:
                        try:
                            message = await ws.receive(timeout=1.0)
                        except TimeoutError:
                            await ws.ping()
                            pings += 1
                            continue
                        if message.type == aiohttp.WSMsgType.CLOSE:
                            break
                elapsed = time.monotonic() - started
                assert pings >= 1
                assert message.data == CLOSE_JOIN_TIMEOUT
                assert join_timeout - 0.2 < elapsed < join_timeout + 1.5


@contextlib.asynccontextmanager
async def idle_sockets(
    url: str, count: int
) -> AsyncIterator[list[aiohttp.ClientWebSocketResponse]]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        opened = await asyncio.gather(*(http.ws_connect(url) for _ in range(count)))
        try:
            yield list(opened)
        finally:
            await asyncio.gather(*(ws.close() for ws in opened))


async def test_idle_sockets_from_one_address_do_not_block_other_joins(tmp_path: Path) -> None:
    options = "join_timeout = 60\nmax_pending_per_ip = 300\nmax_pending = 1000"
    with configured(tmp_path, options) as server:
        async with idle_sockets(server.ws_url, 300):
            async with aiohttp.ClientSession() as http:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(server.ws_url)
                assert refused.value.status == 429
            # Another address joins at once, while the 300 sockets still wait.
            other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with aiohttp.ClientSession(connector=other) as http:
                started = time.monotonic()
                async with http.ws_connect(server.ws_url) as ws:
                    await ws.send_str(join(server.token("bystander")))
                    reply = json.loads(await ws.receive_str(timeout=5))
                    assert reply["type"] == "joined"
                    assert time.monotonic() - started < 2
            assert metric(server, 'keyroom_connections_refused_total{reason="per_ip"}') == 1
            assert metric(server, "keyroom_pending_connections") == 300
        assert "connections_refused" not in server.log()  # counted, not logged per attempt


async def test_pending_total_cap_refuses_with_503(tmp_path: Path) -> None:
    with configured(tmp_path, "max_pending = 4") as server:
        async with idle_sockets(server.ws_url, 4):
            other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with aiohttp.ClientSession(connector=other) as http:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(server.ws_url)
                assert refused.value.status == 503
            assert metric(server, 'keyroom_connections_refused_total{reason="total"}') == 1
        # The slots come back when the sockets close: a join goes through again.
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.ws_url) as ws:
                await ws.send_str(join(server.token("later")))
                assert json.loads(await ws.receive_str(timeout=5))["type"] == "joined"


async def closed_within(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: float, drip: bytes
) -> float:
    """Seconds until the server closes the connection; `drip` is sent every half second."""
    started = time.monotonic()
    async with asyncio.timeout(limit):
        while True:
            try:
                data = await asyncio.wait_for(reader.read(1024), 0.5)
            except TimeoutError:
                if drip:
                    writer.write(drip)
                continue
            if not data:
                return time.monotonic() - started


async def test_slow_or_silent_http_connections_are_closed(tmp_path: Path) -> None:
    keepalive = 1.5
    with configured(tmp_path, f"keepalive_timeout = {keepalive}") as server:
        slow = await asyncio.open_connection("127.0.0.1", server.port)
        silent = await asyncio.open_connection("127.0.0.1", server.port)
        slow[1].write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        # The slowloris: a byte of the head every half second never completes it.
        slow_seconds, silent_seconds = await asyncio.gather(
            closed_within(*slow, keepalive + 3, b"a"), closed_within(*silent, keepalive + 3, b"")
        )
        for _, writer in (slow, silent):
            writer.close()
        assert slow_seconds < keepalive + 1.0
        assert silent_seconds < keepalive + 1.0


async def test_pending_cap_counts_the_address_behind_a_trusted_proxy(tmp_path: Path) -> None:
    options = 'trusted_proxies = ["127.0.0.1"]\nmax_pending_per_ip = 2'
    with configured(tmp_path, options) as server:
        async with aiohttp.ClientSession() as http:
            behind = {"X-Forwarded-For": "203.0.113.1"}
            opened = [await http.ws_connect(server.ws_url, headers=behind) for _ in range(2)]
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(server.ws_url, headers=behind)
            assert refused.value.status == 429
            # The proxy's own address is not what is counted: another client behind it gets in.
            other = await http.ws_connect(server.ws_url, headers={"X-Forwarded-For": "203.0.113.2"})
            for ws in (*opened, other):
                await ws.close()
