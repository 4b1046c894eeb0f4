"""The host sockets of an aioice connection, each of whose datagram callbacks a guard wraps."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import aioice.ice

DatagramCallback = Callable[[bytes, tuple[Any, ...]], None]


def wrap_host_sockets(
    connection: aioice.ice.Connection,
    kind: type,
    wrap: Callable[[aioice.ice.StunProtocol, DatagramCallback], DatagramCallback],
) -> int:
    """Replace the callback of every host socket gathered so far with `wrap(protocol, stock)`,
    unless a `kind` already wraps it; returns how many were wrapped. Relayed (TURN) protocols
    are not host sockets: they are left alone.
    """
    installed = 0
    for protocol in connection._protocols:
        if type(protocol) is not aioice.ice.StunProtocol or _wrapped_by(
            protocol.datagram_received, kind
        ):
            continue
        protocol.datagram_received = wrap(protocol, protocol.datagram_received)  # type: ignore[method-assign, assignment]
        installed += 1
    return installed


def _wrapped_by(callback: object, kind: type) -> bool:
    """Whether a `partial(<kind instance>.method, ...)` wraps `callback`, at any depth."""
    while isinstance(callback, partial):
        if isinstance(getattr(callback.func, "__self__", None), kind):
            return True
        callback = callback.args[-1] if callback.args else None  # the callback it wraps
    return False
