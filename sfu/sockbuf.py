"""The shared media port's receive buffer: sized by the operator, its overflows counted.

A datagram that arrives while the socket's receive buffer is full is dropped by the kernel
before the server sees it. The kernel counts those drops per socket (`sk_drops`, the last column
of /proc/net/udp); `SO_MEMINFO` returns that count with the buffer's size and fill, so the server
reads it at each `/metrics` scrape (`keyroom_shared_port_receive_overflows_total`), exactly and
with nothing added to the receive path.

A larger buffer (`[rtc] udp_receive_buffer`) lowers the loss when the reader falls behind for a
moment (a burst of joins, the machine preempting the server); it lowers no latency: what it
holds still waits its turn.
"""

from __future__ import annotations

import socket
import struct

SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)  # Linux >= 4.6
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
# sk_meminfo indexes (include/uapi/linux/sock_diag.h).
_RMEM_ALLOC, _RCVBUF, _DROPS = 0, 1, 8
_U32 = 4
# Asked for when the option is 0 (the kernel doubles it and caps it at net.core.rmem_max
# unless the process may force it). One socket takes every participant's input, so it gets what
# many per-connection sockets had together: 32 MiB rode out the join ramps of the latency
# benchmark that overflowed the 8 MiB a 4 MiB ask got (docs/benchmarks.md, "third stop").
DEFAULT_RECEIVE_BUFFER = 32 * 1024 * 1024


def parse_meminfo(raw: bytes) -> tuple[int, int, int] | None:
    """(bytes queued, buffer size, drops) from an SO_MEMINFO answer; None if the kernel's is too
    short to hold the drop count (before Linux 4.6 there is no such option)."""
    if len(raw) < (_DROPS + 1) * _U32:
        return None
    values = struct.unpack_from(f"={_DROPS + 1}I", raw)
    return values[_RMEM_ALLOC], values[_RCVBUF], values[_DROPS]


def meminfo(sock: socket.socket) -> tuple[int, int, int] | None:
    """`parse_meminfo` of `sock` now; None when the kernel cannot say (or it is closed)."""
    try:
        return parse_meminfo(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 16 * _U32))
    except OSError:
        return None


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a `size`-byte receive buffer: forced past net.core.rmem_max where the process
    may (CAP_NET_ADMIN), else as much as the limit allows. Returns what the kernel gave (it
    doubles the request for its bookkeeping)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    obtained: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return obtained
