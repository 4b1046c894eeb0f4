"""Issue 18.7 and 18.8: the bundled bot trusts a private CA, prints every event and running
counts, says in one line why a session ended; the client reports the close frame it got; the
server's last line says it stopped."""

from __future__ import annotations

import asyncio
import signal
import struct
import subprocess
import sys
from pathlib import Path

from aiohttp import web

from signaling.client.connection import Connection
from signaling.client.errors import SessionClosed
from tests.conftest import ServerProcess, eventually, stop_server
from tests.deploy_helpers import RUNNABLE_CONFIG, private_network, start_configured
from tests.test_client_unit import scripted_server
from tests.test_tls import trusting, write_self_signed


async def test_the_close_frame_counts_even_when_the_connection_drops_at_once() -> None:
    async def close_then_drop(ws: web.WebSocketResponse) -> None:
        # A close frame (1001), then the TCP connection ends, as when a server process exits.
        transport = ws._req.transport if ws._req is not None else None  # noqa: SLF001
        assert transport is not None
        transport.write(b"\x88\x02" + struct.pack("!H", 1001))
        transport.abort()

    ends: list[SessionClosed] = []
    async with scripted_server(close_then_drop) as url:
        connection = Connection(
            url,
            None,
            dispatch=lambda _: None,
            on_reply=lambda _: None,
            on_closed=ends.append,
            on_server_close=lambda: None,
        )
        try:
            await connection.open(5)
            await connection.wait_reader(5)
            assert connection.close_code == 1001
            assert [e.close_code for e in ends] == [1001]
        finally:
            await connection.close_http()


def bot(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "signaling.bot", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tls_server(tmp_path: Path, lan: str) -> tuple[ServerProcess, Path]:
    cert, key = write_self_signed(tmp_path, "keyroom-bot")
    config = (
        f'{RUNNABLE_CONFIG}\n[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
        f'[rtc]\nips = ["{lan}"]\n'
    )
    return start_configured(tmp_path, config, context=trusting(cert)), cert


async def test_bot_over_tls_with_a_private_ca_sees_the_shutdown(tmp_path: Path) -> None:
    with private_network() as lan:
        server, cert = tls_server(tmp_path, lan)
        url = f"wss://127.0.0.1:{server.port}/rtc"
        try:
            # Without the CA: one line, no traceback.
            untrusted = bot(url, server.token("eve"), "--duration", "5")
            _, err = untrusted.communicate(timeout=60)
            assert untrusted.returncode == 1
            assert err.startswith(f"cannot reach {url}") and "Traceback" not in err
            # A bad token: the refusal's code and message on one line.
            refused = bot(url, "not-a-token", "--cafile", str(cert))
            _, err = refused.communicate(timeout=60)
            assert refused.returncode == 1
            assert err.strip().startswith("join refused: unauthorized") and "Traceback" not in err
            await watch_a_call_end_with_the_server(server, url, cert)
        finally:
            stop_server(server)
        assert server.log().rstrip().endswith("INFO keyroom.server: keyroom stopped")


async def watch_a_call_end_with_the_server(server: ServerProcess, url: str, cert: Path) -> None:
    flags = ["--cafile", str(cert), "--duration", "60", "--status", "0.5"]
    bob = bot(url, server.token("bob"), *flags)
    alice: subprocess.Popen[str] | None = None
    lines: list[str] = []

    def read_until(*wanted: str) -> bool:
        assert bob.stdout is not None
        while line := bob.stdout.readline():
            lines.append(line)
            if all(w in line for w in wanted):
                return True
        return False

    try:
        # Bob first, so that he sees alice arrive and publish as events.
        assert await asyncio.wait_for(asyncio.to_thread(read_until, "joined room"), 60), lines
        alice = bot(url, server.token("alice"), "--publish", *flags)
        # Bob's status lines count alice's tracks (and frames: media itself is the first
        # deployment test's, with clients bound to one address) as they arrive.
        try:
            done = await asyncio.wait_for(
                asyncio.to_thread(read_until, "2 tracks received", "frames decoded"), 60
            )
        except TimeoutError:
            raise AssertionError("".join(lines[-5:]) + server.log()[-3000:]) from None
        assert done, "".join(lines)
        assert any("event: {'type': 'track_published'" in line for line in lines)
        server.process.send_signal(signal.SIGTERM)
        out, err = bob.communicate(timeout=30)
        assert bob.returncode == 1, out + err
        assert err.strip().splitlines()[-1] == (
            "session ended by the server: server_shutdown (close 1001)"
        )
        assert "Traceback" not in err
        assert "received video from alice:" in out
        assert any("frames decoded; events:" in line for line in lines)
        alice.communicate(timeout=30)
    finally:
        for process in (alice, bob):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    await eventually(lambda: server.process.poll() is not None, 15, "server exit")
