"""Subscribers whose media the kernel drops: the server sends them every copy, the load
generator spends nothing on them.

At half a server core the server sends ~80,000 copies a second, and a generator that reads,
decrypts and times each one needs about a core of its own (~11 µs a packet): its backlog, not
the server's, would make the latency. So all but a few subscribers of each room are deaf: a
classic BPF socket filter on their sockets drops RTP (first byte 128-191, second byte outside
the RTCP types 192-223, RFC 5761) before it is queued, while STUN (consent), DTLS and RTCP still
reach aioice and aiortc, so the session stays up. The server's work is the same: it protects
and sends each copy, and the loopback delivers it to the socket. The listening subscribers
measure loss and latency as before.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

from aiortc import RTCPeerConnection

from sfu import internals

SO_ATTACH_FILTER = 26  # linux/asm-generic/socket.h
# For a UDP socket the filter sees the datagram from its UDP header: the payload is at 8.
_PAYLOAD = 8
_LD_B_ABS, _JGE_K, _RET_K = 0x30, 0x35, 0x06
_ACCEPT, _DROP = 0xFFFFFFFF, 0
# (code, jump if true, jump if false, k): jumps count the instructions skipped.
DROP_RTP = (
    (_LD_B_ABS, 0, 0, _PAYLOAD),  # 0: A = first byte
    (_JGE_K, 0, 4, 128),  # 1: below 128 (STUN, DTLS): accept
    (_JGE_K, 3, 0, 192),  # 2: 192 and above: accept
    (_LD_B_ABS, 0, 0, _PAYLOAD + 1),  # 3: A = second byte
    (_JGE_K, 0, 2, 192),  # 4: below 192: RTP, drop
    (_JGE_K, 1, 0, 224),  # 5: 224 and above: RTP, drop; else RTCP, accept
    (_RET_K, 0, 0, _ACCEPT),  # 6
    (_RET_K, 0, 0, _DROP),  # 7
)


def drop_rtp(fd: int) -> None:
    """Attach DROP_RTP to the UDP socket `fd` (the kernel keeps its own copy)."""
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in DROP_RTP))
    fprog = struct.pack("HL", len(DROP_RTP), ctypes.addressof(program))
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    finally:
        sock.close()


def deafen(pc: RTCPeerConnection) -> int:
    """Filter every host socket of `pc`'s transport; returns how many."""
    dtls = internals.bundle_transport(pc)
    if dtls is None:
        return 0
    filtered = 0
    for protocol in dtls.transport._connection._protocols:
        transport = getattr(protocol, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and sock.type == socket.SOCK_DGRAM:
            drop_rtp(sock.fileno())
            filtered += 1
    return filtered
