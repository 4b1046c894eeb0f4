"""The load generator's deaf subscribers (loadtest/deaf.py): the kernel drops their RTP and
lets STUN, DTLS and RTCP through, so their sessions stay up at no cost to the generator."""

from __future__ import annotations

import socket

from loadtest.deaf import drop_rtp

DATAGRAMS = {
    "rtp": b"\x80\x60" + bytes(30),  # PT 96
    "rtp with marker": b"\x80\xe0" + bytes(30),  # PT 96, marker bit: second byte 224
    "rtp, low payload type": b"\x80\x00" + bytes(30),  # PCMU
    "rtcp sender report": b"\x80\xc8" + bytes(30),  # 200
    "rtcp feedback": b"\x81\xcd" + bytes(30),  # 205 (NACK)
    "stun": b"\x00\x01" + bytes(30),
    "dtls": b"\x16\xfe\xfd" + bytes(30),
}


def test_rtp_is_dropped_and_everything_else_passes() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        drop_rtp(receiver.fileno())
        for data in DATAGRAMS.values():
            sender.sendto(data, receiver.getsockname())
        sender.sendto(b"\x00\x01end", receiver.getsockname())  # loopback keeps the order
        arrived = []
        while (data := receiver.recv(2048)) != b"\x00\x01end":
            arrived.append(data)
    finally:
        sender.close()
        receiver.close()
    names = {v: k for k, v in DATAGRAMS.items()}
    assert sorted(names[d] for d in arrived) == [
        "dtls", "rtcp feedback", "rtcp sender report", "stun"
    ]  # fmt: skip
