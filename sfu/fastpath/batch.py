"""Batched fan-out on a shared socket: RTP copies queued as the forwarder produces them, then
SRTP-protected and sent in one `sendmmsg` call (the compiled extension, sfu/fastpath/_build.py).

The shared socket's reader (sfu/fastpath/receive.py) opens a batch around each `recvmmsg`
batch of incoming datagrams and flushes it after: the copies of every input packet of the batch
to every subscriber leave in one system call (more when they exceed the batch's slots). A copy
queued outside that window (a NACK answered from a coroutine, a sender report) is sent at
once. Counters are summed per flush, off the per-packet path.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pylibsrtp
from pylibsrtp._binding import ffi as srtp_ffi
from pylibsrtp._binding import lib as srtp_lib

from sfu.stats import DropReason, Stats

# A subscriber's destination: (its SRTP session, the session's context pointer, sockaddr bytes,
# their length).
Destination = tuple[pylibsrtp.Session, Any, bytes, int]


def _address(pointer: Any) -> int:
    return int(srtp_ffi.cast("uintptr_t", pointer))


class FanoutBatch:
    __slots__ = (
        "_ffi",
        "_lib",
        "_batch",
        "_add",
        "_flush",
        "_count",
        "_fd",
        "_protect",
        "_failures",
        "_held",
        "depth",
        "_stats",
        "copies",
        "layers",
    )

    def __init__(self, module: ModuleType, fd: int, stats: Stats) -> None:
        ffi, lib = module.ffi, module.lib
        self._ffi, self._lib = ffi, lib
        self._batch = ffi.gc(lib.kr_batch_new(), lib.kr_batch_free)
        self._add = lib.kr_add
        self._flush = lib.kr_flush
        self._count = lib.kr_batch_count
        self._fd = fd
        # The srtp_protect of the libsrtp inside pylibsrtp: the copy that made the sessions.
        protect = srtp_ffi.addressof(srtp_lib, "srtp_protect")
        self._protect = ffi.cast("kr_protect_fn", _address(protect))
        self._failures = ffi.new("int *")
        # The sessions of queued copies (a destination, or a tuple of those of the compiled
        # copies, sfu/fastpath/steady.py), alive until they are protected.
        self._held: list[object] = []
        self.depth = 0  # > 0 while the shared socket's reader handles a datagram
        self._stats = stats
        # Whether steady down-tracks are forwarded by the compiled per-copy loop
        # (sfu/fastpath/steady.py); False: one `add` per copy (`keyroom bench --path recvmmsg`).
        self.copies = True
        # Whether simulcast down-tracks settled on a layer join it too (False: `keyroom bench
        # --simulcast --path compiled` measures their Python path beside the compiled one).
        self.layers = True

    def destination(self, session: pylibsrtp.Session, remote: tuple[str, int]) -> Destination:
        out = self._ffi.new("char[28]")
        size = self._lib.kr_sockaddr(remote[0].encode(), remote[1], out)
        if not size:
            raise ValueError(f"not an address: {remote[0]!r}")
        context = self._ffi.cast("void *", _address(session._srtp[0]))
        return (session, context, bytes(self._ffi.buffer(out, size)), size)

    def add(self, destination: Destination, data: bytes) -> bool:
        """Queue plaintext RTP `data` for `destination`; False if it cannot be (too large)."""
        _, context, address, address_size = destination
        size = len(data)
        result = self._add(self._batch, context, data, size, address, address_size)
        if result == -1:  # full: send what is there, then queue this one
            self.flush()
            result = self._add(self._batch, context, data, size, address, address_size)
        if result:
            return False
        self._held.append(destination)
        if not self.depth:
            self.flush()
        return True

    def hold(self, sessions: object) -> None:
        """Keep `sessions` (of copies queued by kr_fanout) alive until the next flush."""
        self._held.append(sessions)

    def flush(self) -> int:
        queued: int = self._count(self._batch)
        if not queued:
            self._held.clear()
            return 0
        sent: int = self._flush(self._batch, self._fd, self._protect, self._failures)
        self._held.clear()
        stats = self._stats
        stats.fanout_calls += 1
        stats.fanout_packets += sent
        if sent != queued:
            stats.dropped[DropReason.SEND_FAILED.value] += queued - sent
        return sent
