"""Junk at a shared media port from many source addresses: what `tests/test_shared_port.py`
sends (CI-sized), and, by hand, the full flood of the issue:

    KEYROOM_FLOOD=long scripts/test tests/test_shared_port.py -k flood

Each source is its own socket (its own address and port) on 127.0.0.0/8, and every kind of
datagram the port's demultiplexer refuses goes out in turn: SRTP- and DTLS-shaped junk, STUN
requests for unknown ufrags, STUN responses to no request, malformed STUN. Bounded in count;
paced so the loop it runs on (a live call's client) keeps running.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct

COOKIE = b"\x21\x12\xa4\x42"
# Sockets open at once (each source address is one socket; fd limits are often 1024).
SOCKETS_AT_ONCE = 100
BURST = 200


def stun_request(ufrag: bytes) -> bytes:
    username = ufrag + b":peer"
    attribute = struct.pack("!HH", 0x0006, len(username)) + username
    attribute += b"\x00" * (-len(username) % 4)
    return struct.pack("!HH", 0x0001, len(attribute)) + COOKIE + os.urandom(12) + attribute


def junk(index: int) -> bytes:
    """The `index`-th datagram of the flood: each kind in turn."""
    kind = index % 5
    if kind == 0:  # SRTP-shaped
        return bytes([0x80, 96]) + index.to_bytes(4, "big")[2:] + os.urandom(108)
    if kind == 1:  # a DTLS handshake record header and junk
        return bytes([22, 0xFE, 0xFD]) + os.urandom(60)
    if kind == 2:
        return stun_request(os.urandom(4).hex().encode())
    if kind == 3:  # a success response to no request
        return struct.pack("!HH", 0x0101, 0) + COOKIE + os.urandom(12)
    return struct.pack("!HH", 0x0001, 40) + COOKIE + os.urandom(12)  # length lies


def source_address(index: int) -> str:
    """Distinct loopback addresses: 127.1.x.y."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


async def flood(port: int, datagrams: int, addresses: int, host: str = "127.0.0.1") -> int:
    """Send `datagrams` junk datagrams to `host:port`, spread over `addresses` sources; returns
    how many went out."""
    per_source = max(1, datagrams // addresses)
    sent = 0
    for first in range(0, addresses, SOCKETS_AT_ONCE):
        sources = []
        for index in range(first, min(first + SOCKETS_AT_ONCE, addresses)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((source_address(index), 0))
            sources.append(sock)
        try:
            for _ in range(per_source):
                for sock in sources:
                    sock.sendto(junk(sent), (host, port))
                    sent += 1
                    if sent % BURST == 0:
                        # Paced: the receiving socket's buffer would drop the rest uncounted.
                        await asyncio.sleep(0.001)
        finally:
            for sock in sources:
                sock.close()
    return sent
