"""Batched receive on a shared socket: one `recvmmsg` call takes every datagram waiting (up to
`KR_RX_SLOTS`), and the RTP copies they make the forwarder send leave together, one `sendmmsg`
per FLUSH_EVERY datagrams of the batch (sfu/fastpath/batch.py).

The socket is read by one reader registered on its descriptor (`loop.add_reader`): on each
wake-up it drains the socket with `recvmmsg` until it is empty, at most `MAX_ROUNDS` calls, so a
flood cannot starve the rest of the loop (the reader stays registered and is called again). Each
datagram goes to `deliver` (the shared port's demultiplexer, unchanged) with its source address
as asyncio would give it. Counters are summed per call, not per datagram.

Receive-to-send time: the socket has SO_TIMESTAMPNS, so each datagram carries the kernel's
receive time. For 1 datagram in 64 (by the running count, at most one per call), if it is RTP,
the time from that stamp to the `sendmmsg` that sent its copies (the fan-out is flushed after
every FLUSH_EVERY datagrams and at the end of each call) goes to
`keyroom_receive_to_send_seconds`: the wait in the socket's queue plus the processing of what
was read with it, which `keyroom_forward_seconds` (from the ingress on) leaves out.

Sending stays one datagram at a time for what is not batched RTP (STUN, DTLS, RTCP): `sendto`
on the non-blocking socket, and a datagram the kernel cannot take now is dropped and counted, as
a full UDP socket buffer drops it on the wire.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from sfu import looptrace
from sfu.fastpath.batch import FanoutBatch
from sfu.metrics import FORWARD_SAMPLE_MASK, RECEIVE_TO_SEND_SECONDS
from sfu.stats import DropReason, Stats

log = logging.getLogger("keyroom.fastpath")

Address = tuple[Any, ...]
# recvmmsg calls per wake-up: 4 x 64 datagrams, then other ready callbacks run.
MAX_ROUNDS = 4
# The fan-out is flushed after every FLUSH_EVERY datagrams of a batch (and at its end): the
# first datagram's copies do not wait for all 64 to be processed (receive-to-send latency),
# and a sendmmsg still carries FLUSH_EVERY inputs' copies.
FLUSH_EVERY = 8
FLUSH_MASK = FLUSH_EVERY - 1
# Source addresses whose decoded tuple is kept: a junk flood from more addresses clears it.
MAX_ADDRESSES = 4096
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)


def decode_sockaddr(raw: bytes) -> Address | None:
    """The address tuple Python's socket module makes of a `sockaddr_in` / `sockaddr_in6`:
    (host, port) or (host, port, flowinfo, scope_id); None for another family (pure)."""
    family = int.from_bytes(raw[0:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET and len(raw) >= 8:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    if family == socket.AF_INET6 and len(raw) >= 28:
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        flowinfo = int.from_bytes(raw[4:8], "big")
        scope_id = int.from_bytes(raw[24:28], sys.byteorder)
        if scope_id:
            try:
                host = f"{host}%{socket.if_indextoname(scope_id)}"
            except OSError:
                host = f"{host}%{scope_id}"
        return (host, port, flowinfo, scope_id)
    return None


def _observe(stamp: int) -> None:
    """A sampled datagram's copies are sent: its kernel receive time (ns) to now."""
    wait = max(0, time.time_ns() - stamp)
    RECEIVE_TO_SEND_SECONDS.observe(wait * 1e-9)
    if wait > looptrace.LATE_AFTER:
        looptrace.late(wait)


class AddressBook:
    """Raw source addresses to their tuples, decoded once per address (no I/O). Bounded: when
    `limit` addresses are known the book starts again, so junk from any number of addresses
    costs no memory, only the decoding."""

    __slots__ = ("known", "_limit")

    def __init__(self, limit: int = MAX_ADDRESSES) -> None:
        # Read directly by the receive loop (one dict lookup per datagram); the same dict for
        # the book's life.
        self.known: dict[bytes, Address | None] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self.known)

    def lookup(self, raw: bytes) -> Address | None:
        address = self.known.get(raw, False)
        if address is not False:
            return address  # type: ignore[return-value]
        if len(self.known) >= self._limit:
            self.known.clear()
        decoded = self.known[raw] = decode_sockaddr(raw)
        return decoded


class BatchedSocket:
    """A shared UDP socket read in batches: the transport its connections send on."""

    def __init__(self, module: ModuleType, sock: socket.socket, stats: Stats) -> None:
        ffi, lib = module.ffi, module.lib
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._stats = stats
        self._rx = ffi.gc(lib.kr_rx_new(), lib.kr_rx_free)
        if self._rx == ffi.NULL:
            raise MemoryError("recvmmsg buffers")
        self._recv = lib.kr_recv
        # Without it (an old kernel) the stamps stay 0 and nothing is observed.
        lib.kr_rx_timestamping(self._fd)
        self._stamps = lib.kr_rx_stamps(self._rx)
        self._slots = lib.KR_RX_SLOTS
        slot, address_bytes = lib.KR_RX_BYTES, lib.KR_ADDR_BYTES
        self._data = ffi.buffer(lib.kr_rx_data(self._rx), self._slots * slot)
        self._addrs = ffi.buffer(lib.kr_rx_addrs(self._rx), self._slots * address_bytes)
        self._lengths = lib.kr_rx_lengths(self._rx)
        self._addrlens = lib.kr_rx_addrlens(self._rx)
        self._slot_bytes, self._address_bytes = slot, address_bytes
        self._book = AddressBook()
        self._deliver: Callable[[bytes, Address], None] | None = None
        self._batch: FanoutBatch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(
        self,
        deliver: Callable[[bytes, Address], None],
        batch: FanoutBatch | None,
    ) -> None:
        """Read the socket from now on: each datagram to `deliver`, inside one `batch`."""
        self._deliver, self._batch = looptrace.timed_deliver(deliver), batch
        self._recv = looptrace.traced_recv(self._recv, self._stamps)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self.read)

    def read(self) -> None:
        """Drain the socket (at most MAX_ROUNDS recvmmsg calls)."""
        deliver, batch, stats = self._deliver, self._batch, self._stats
        if deliver is None:
            return
        for _ in range(MAX_ROUNDS):
            count: int = self._recv(self._rx, self._fd)
            if count < 0:
                if -count not in _AGAIN:
                    log.debug("shared media port: %s", errno.errorcode.get(-count, -count))
                    continue
                return
            stats.receive_calls += 1
            received = stats.received_datagrams
            stats.received_datagrams = received + count
            sample = FORWARD_SAMPLE_MASK - (received & FORWARD_SAMPLE_MASK)
            stamp = self._sampled_stamp(sample) if sample < count else 0
            if batch is not None:
                batch.depth += 1
            try:
                stamp = self._deliver_all(count, deliver, sample, stamp)
            finally:
                if batch is not None:
                    batch.depth -= 1
                    batch.flush()
            if stamp:
                _observe(stamp)
            if count < self._slots:
                return

    def _sampled_stamp(self, i: int) -> int:
        """Datagram `i`'s kernel receive time (ns since the epoch) if it is RTP, else 0."""
        start = i * self._slot_bytes
        head = self._data[start : start + 2]
        if self._lengths[i] < 12 or not 127 < head[0] < 192 or 191 < head[1] < 224:
            return 0
        stamp: int = self._stamps[i]
        return stamp

    def _deliver_all(
        self, count: int, deliver: Callable[[bytes, Address], None], sample: int, stamp: int
    ) -> int:
        """Hand on `count` datagrams, flushing the fan-out after every FLUSH_EVERY of them; the
        receive stamp of datagram `sample` is observed at the flush that sent its copies, or
        returned (not observed yet) if that is the caller's final flush."""
        data, addrs, lengths, addrlens = self._data, self._addrs, self._lengths, self._addrlens
        slot, address_bytes, known = self._slot_bytes, self._address_bytes, self._book.known
        batch = self._batch
        for i in range(count):
            if i & FLUSH_MASK == 0 and i and batch is not None:
                batch.flush()
                if stamp and sample < i:
                    _observe(stamp)
                    stamp = 0
            length = lengths[i]
            start = i * address_bytes
            raw = addrs[start : start + addrlens[i]]
            address = known.get(raw)
            if address is None:
                address = self._book.lookup(raw)
            if length < 0 or address is None:
                self._stats.drop(DropReason.TOO_LARGE if length < 0 else DropReason.MALFORMED)
                continue
            start = i * slot
            try:
                deliver(data[start : start + length], address)
            except Exception:  # one bad datagram must not cost the rest of the batch
                log.exception("shared media port: a datagram's handler failed")
        return stamp

    def sendto(self, data: bytes, addr: Address) -> None:
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._stats.drop(DropReason.SEND_FAILED)
        except OSError as exc:  # e.g. unreachable: what asyncio passes to error_received
            log.debug("shared media port: %s", exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "sockname":
            return self._sock.getsockname()
        return default

    def is_closing(self) -> bool:
        return self._deliver is None and self._sock.fileno() < 0

    def close(self) -> None:
        if self._loop is not None and self._sock.fileno() >= 0:
            self._loop.remove_reader(self._fd)
        self._deliver = self._batch = None
        self._sock.close()
