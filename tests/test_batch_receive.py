"""The shared port's batched receive (sfu/fastpath/receive.py): datagrams drained with recvmmsg,
each handed on with the address asyncio would give, one fan-out flush per recvmmsg batch."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from sfu.fastpath import loader
from sfu.fastpath.receive import (
    FLUSH_EVERY,
    MAX_ROUNDS,
    AddressBook,
    BatchedSocket,
    decode_sockaddr,
)
from sfu.metrics import RECEIVE_TO_SEND_SECONDS
from sfu.stats import Stats


@pytest.fixture
def extension() -> ModuleType:
    module = loader.load()
    assert module is not None, f"the extension does not build here: {loader.failure()}"
    return module


def sockaddr_in(host: str, port: int) -> bytes:
    family = socket.AF_INET.to_bytes(2, sys.byteorder)
    return family + struct.pack("!H", port) + socket.inet_pton(socket.AF_INET, host) + bytes(8)


def sockaddr_in6(host: str, port: int, flowinfo: int = 0, scope_id: int = 0) -> bytes:
    family = socket.AF_INET6.to_bytes(2, sys.byteorder)
    address = socket.inet_pton(socket.AF_INET6, host)
    return family + struct.pack("!HI", port, flowinfo) + address + scope_id.to_bytes(4, "little")


# --- sans-I/O: addresses ---------------------------------------------------------------------


def test_source_addresses_decode_as_python_sockets_give_them() -> None:
    assert decode_sockaddr(sockaddr_in("127.0.0.1", 7882)) == ("127.0.0.1", 7882)
    assert decode_sockaddr(sockaddr_in("10.1.2.3", 1)) == ("10.1.2.3", 1)
    assert decode_sockaddr(sockaddr_in6("::1", 5000, 7)) == ("::1", 5000, 7, 0)
    assert decode_sockaddr(sockaddr_in6("2001:db8::5", 65535)) == ("2001:db8::5", 65535, 0, 0)
    loopback = socket.if_nametoindex("lo")
    linklocal = ("fe80::1%lo", 9, 0, loopback)
    assert decode_sockaddr(sockaddr_in6("fe80::1", 9, 0, loopback)) == linklocal
    # Another family, or a truncated address: nothing to route by.
    assert decode_sockaddr(b"\x01\x00" + bytes(14)) is None
    assert decode_sockaddr(sockaddr_in("127.0.0.1", 1)[:6]) is None


def test_the_address_book_decodes_once_and_stays_bounded() -> None:
    book = AddressBook(limit=100)
    raw = sockaddr_in("127.0.0.1", 1000)
    first = book.lookup(raw)
    assert first == ("127.0.0.1", 1000) and book.lookup(raw) is first
    assert book.lookup(b"\x01\x00" + bytes(14)) is None  # remembered as unroutable too
    for port in range(10_000):  # a flood from many addresses
        assert book.lookup(sockaddr_in("10.0.0.1", port)) == ("10.0.0.1", port)
        assert len(book) <= 100


# --- a real socket ---------------------------------------------------------------------------


class CountingBatch:
    """What BatchedSocket needs of a FanoutBatch: `depth` during delivery, `flush` after."""

    def __init__(self) -> None:
        self.depth = 0
        self.flushes = 0
        self.depths: list[int] = []

    def flush(self) -> int:
        self.flushes += 1
        return 0


@pytest.fixture
def senders() -> Iterator[list[socket.socket]]:
    socks = []
    for _ in range(3):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    yield socks
    for sock in socks:
        sock.close()


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


async def test_queued_datagrams_come_in_full_batches_with_their_sources(
    extension: ModuleType, senders: list[socket.socket]
) -> None:
    stats, batch = Stats(), CountingBatch()
    receiver = BatchedSocket(extension, bound_socket(), stats)
    port = receiver.get_extra_info("sockname")[1]
    total = 64 * MAX_ROUNDS + 44
    expected = []
    for n in range(total):
        sender = senders[n % 3]
        payload = n.to_bytes(4, "big") * (1 + n % 300)
        sender.sendto(payload, ("127.0.0.1", port))
        expected.append((payload, sender.getsockname()))
    got: list[tuple[bytes, Any]] = []
    done = asyncio.Event()

    flushes_seen: list[int] = []

    def deliver(data: bytes, addr: Any) -> None:
        batch.depths.append(batch.depth)
        flushes_seen.append(batch.flushes)
        got.append((data, addr))
        if len(got) == total:
            done.set()

    receiver.start(deliver, batch)  # type: ignore[arg-type]
    try:
        receiver.read()  # one wake-up: MAX_ROUNDS full batches, then the loop runs others
        assert len(got) == 64 * MAX_ROUNDS
        # The copies leave after every FLUSH_EVERY datagrams and at the end of each call.
        assert (stats.receive_calls, batch.flushes) == (MAX_ROUNDS, MAX_ROUNDS * 64 // FLUSH_EVERY)
        assert flushes_seen[:64] == [n // FLUSH_EVERY for n in range(64)]
        await asyncio.wait_for(done.wait(), 10)  # the reader, still registered, takes the rest
    finally:
        receiver.close()
    assert got == expected
    assert set(batch.depths) == {1} and batch.depth == 0  # delivered inside a batch
    assert stats.received_datagrams == total
    assert stats.receive_calls == MAX_ROUNDS + 1  # the last 44 in one call
    assert batch.flushes == (MAX_ROUNDS * 64 + 48) // FLUSH_EVERY  # the last 44: 6 flushes


async def test_oversized_and_failing_datagrams_cost_only_themselves(
    extension: ModuleType, senders: list[socket.socket]
) -> None:
    stats = Stats()
    receiver = BatchedSocket(extension, bound_socket(), stats)
    target = receiver.get_extra_info("sockname")
    for payload in (b"first", bytes(3000), b"boom", b"last"):
        senders[0].sendto(payload, target)
    got: list[bytes] = []
    done = asyncio.Event()

    def deliver(data: bytes, addr: Any) -> None:
        if data == b"boom":
            raise RuntimeError("a handler's bug")
        got.append(data)
        if data == b"last":
            done.set()

    receiver.start(deliver, None)
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        receiver.close()
    assert got == [b"first", b"last"]
    assert stats.dropped["too_large"] == 1
    assert receiver.is_closing()


class FullSocket(socket.socket):
    """A socket whose send buffer is full (loopback never fills one: it delivers at once)."""

    def sendto(self, *args: Any) -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")


async def test_sends_go_out_on_the_socket_and_a_full_buffer_drops(
    extension: ModuleType, senders: list[socket.socket]
) -> None:
    stats = Stats()
    receiver = BatchedSocket(extension, bound_socket(), stats)
    peer = senders[0]
    peer.settimeout(5)
    receiver.sendto(b"stun or dtls", peer.getsockname())
    assert peer.recvfrom(100) == (b"stun or dtls", receiver.get_extra_info("sockname"))
    receiver.sendto(b"to nobody", ("127.0.0.1", 9))  # refused by nobody: no error, no drop
    receiver.close()
    assert not stats.dropped
    full = BatchedSocket(extension, FullSocket(socket.AF_INET, socket.SOCK_DGRAM), stats)
    full.sendto(b"dtls", peer.getsockname())
    full.close()
    assert stats.dropped["send_failed"] == 1


def timed_count_and_sum() -> tuple[float, float]:
    samples = RECEIVE_TO_SEND_SECONDS.collect()[0].samples
    values = {
        s.name.rsplit("_", 1)[1]: s.value for s in samples if s.name.endswith(("_count", "_sum"))
    }
    return values["count"], values["sum"]


async def test_one_rtp_datagram_in_64_is_timed_from_its_kernel_receive_time(
    extension: ModuleType, senders: list[socket.socket]
) -> None:
    stats, batch = Stats(), CountingBatch()
    receiver = BatchedSocket(extension, bound_socket(), stats)
    target = receiver.get_extra_info("sockname")
    rtp, rtcp = bytes([0x80, 96]) + bytes(30), bytes([0x80, 200]) + bytes(30)
    before = time.time_ns()
    for n in range(128):  # the first sampled datagram (the 64th) is RTCP: not timed
        senders[0].sendto(rtcp if n == 63 else rtp, target)
    count, total = timed_count_and_sum()
    receiver.start(lambda data, addr: None, batch)  # type: ignore[arg-type]
    try:
        receiver.read()  # two full batches of 64
        after = time.time_ns()
        assert stats.received_datagrams == 128 and batch.flushes == 128 // FLUSH_EVERY
        # The kernel stamped each datagram when it arrived, between the sends and the read.
        stamp = receiver._stamps[63]  # the 128th datagram (slot 63 of the second batch)
        assert before <= stamp <= after
    finally:
        receiver.close()
    new_count, new_total = timed_count_and_sum()
    assert new_count == count + 1  # the 128th: RTP
    assert 0 < new_total - total <= (after - before) * 1e-9
