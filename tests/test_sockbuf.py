"""The shared port's receive buffer: sized by `[rtc] udp_receive_buffer`, its overflows counted
(sfu/sockbuf.py, `keyroom_shared_port_receive_overflows_total`)."""

from __future__ import annotations

import socket
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sfu.internals.sharedport import SharedPort
from sfu.metrics import build_registry
from sfu.sockbuf import SO_RCVBUFFORCE, parse_meminfo, set_receive_buffer
from sfu.stats import Stats


def test_meminfo_is_read_by_index_and_a_short_answer_is_none() -> None:
    values = [100, 8192, 0, 0, 0, 0, 0, 0, 42]
    assert parse_meminfo(struct.pack("=9I", *values)) == (100, 8192, 42)
    assert parse_meminfo(struct.pack("=11I", *values, 7, 7)) == (100, 8192, 42)
    assert parse_meminfo(struct.pack("=8I", *values[:8])) is None
    assert parse_meminfo(b"") is None


class _Socket:
    """What set_receive_buffer uses of a socket; FORCE refused like an unprivileged process."""

    def __init__(self, privileged: bool) -> None:
        self.privileged = privileged
        self.size = 0

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if option == SO_RCVBUFFORCE and not self.privileged:
            raise PermissionError("EPERM")
        self.size = 2 * (value if option == SO_RCVBUFFORCE else min(value, 212992))

    def getsockopt(self, level: int, option: int) -> int:
        return self.size


@pytest.mark.parametrize(("privileged", "obtained"), [(True, 1 << 25), (False, 2 * 212992)])
def test_the_buffer_is_forced_where_allowed_else_capped(privileged: bool, obtained: int) -> None:
    sock: Any = _Socket(privileged)
    assert set_receive_buffer(sock, 1 << 24) == obtained


def _overflows(stats: Stats) -> dict[str, float]:
    registry = build_registry(SimpleNamespace(rooms={}), stats)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("keyroom_shared_port_receive")
    }


async def test_a_full_receive_buffer_of_the_shared_port_is_counted_on_metrics() -> None:
    # A tiny buffer and nothing reading it (the loop never runs between the sends): the
    # kernel drops what does not fit, and the next scrape says how many.
    stats = Stats()
    shared = SharedPort(0, stats, None, receive_buffer=4096)
    await shared.open(["127.0.0.1"])
    try:
        (sock,) = stats.udp_sockets
        port = sock.getsockname()[1]
        before = _overflows(stats)
        assert before["keyroom_shared_port_receive_overflows_total"] == 0
        assert 0 < before["keyroom_shared_port_receive_buffer_bytes"] < 64 * 1024
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(200):
                sender.sendto(b"\x80" * 1000, ("127.0.0.1", port))
        after = _overflows(stats)
        assert 150 < after["keyroom_shared_port_receive_overflows_total"] <= 200
        assert after["keyroom_shared_port_receive_queued_bytes"] > 0
    finally:
        shared.close()
    assert stats.udp_sockets == []
