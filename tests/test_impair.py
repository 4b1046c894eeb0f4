"""The impaired-network topology (loadtest.impair): links really lose and delay, separately."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from loadtest.impair import SERVER_ADDRESS, Impairment, Topology, topology
from loadtest.impair.__main__ import parse_impairment

PORT = 9000


def _echo_server() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((SERVER_ADDRESS, PORT))
    return sock


def _echo(sock: socket.socket) -> None:
    while True:
        try:
            data, peer = sock.recvfrom(2048)
        except OSError:
            return
        sock.sendto(data, peer)


def _probe(count: int) -> tuple[int, float]:
    """Sends `count` datagrams in one burst; returns echoes received and the median RTT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    sent: dict[int, float] = {}
    for index in range(count):
        sent[index] = time.monotonic()
        sock.sendto(index.to_bytes(4, "big") + bytes(500), (SERVER_ADDRESS, PORT))
    rtts: list[float] = []
    try:
        while len(rtts) < count:
            data = sock.recv(2048)
            rtts.append(time.monotonic() - sent[int.from_bytes(data[:4], "big")])
    except TimeoutError:
        pass
    sock.close()
    rtts.sort()
    return len(rtts), rtts[len(rtts) // 2] if rtts else float("inf")


@pytest.fixture
def links() -> Iterator[Topology]:
    with topology(["a", "b"], seed=7) as built:
        server = built.run_sync("server", _echo_server)
        threading.Thread(target=_echo, args=(server,), daemon=True).start()
        yield built
        server.close()


def test_impairments_are_per_link_and_direction(links: Topology) -> None:
    for name in ("a", "b"):  # clean links, ARP learned
        assert links.run_sync(name, _probe, 50)[0] == 50
    links.impair("a", up=Impairment(loss=0.3), down=Impairment(delay=0.08))
    received, rtt = links.run_sync("a", _probe, 200)
    assert 100 < received < 180  # ~30 % lost upstream
    assert rtt >= 0.08
    stats = links.stats()["a"]
    assert stats["up"]["dropped"] > 20 and stats["down"]["dropped"] == 0
    received, rtt = links.run_sync("b", _probe, 200)
    assert received == 200 and rtt < 0.05  # the other client is unaffected


def test_readdress_and_rate_cap(links: Topology) -> None:
    links.readdress("a", "10.78.0.200")
    assert links.run_sync("a", _probe, 20)[0] == 20
    links.impair("a", down=Impairment(rate_kbit=100))
    # 200 x 532-byte echoes at 100 kbit/s with a 16 kB bucket: most are dropped by tbf.
    received, _ = links.run_sync("a", _probe, 200)
    assert 20 < received < 150


def test_cli_parses_impairments() -> None:
    assert parse_impairment("sub1=loss:0.03,delay:0.1,rate:300") == (
        "sub1",
        Impairment(0.03, 0.1, 300),
    )
