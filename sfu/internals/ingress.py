"""Ingress: a DTLS transport's plaintext RTP and RTCP taken before aiortc's router sees it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from aiortc.rtcdtlstransport import RTCDtlsTransport, State

from sfu.internals.egress import SrtpProtector
from sfu.internals.sockets import wrap_host_sockets
from sfu.stats import DropReason

RtpHandler = Callable[[bytes, int], Coroutine[Any, Any, None]]
RtcpHandler = Callable[[bytes], Coroutine[Any, Any, None]]
SyncRtpHandler = Callable[[bytes], None]


_CONNECTED = State.CONNECTED


def _refuse(data: bytes) -> bytes | None:
    return None


def hook_transport(dtls: RTCDtlsTransport, on_rtp: RtpHandler, on_rtcp: RtcpHandler) -> None:
    """Receive this transport's plaintext RTP and RTCP instead of aiortc's router."""
    dtls._handle_rtp_data = on_rtp  # type: ignore[method-assign, assignment]
    dtls._handle_rtcp_data = on_rtcp  # type: ignore[method-assign, assignment]


class FastPath:
    """Plaintext RTP straight from aioice's datagram callback (notes 2(a) "Fastest").

    Stock aiortc hands each datagram through a STUN parse attempt, an unbounded queue and a task
    that unprotects it and awaits the RTP handler: 4-5 µs and two coroutine frames per packet.
    Here SRTP datagrams from the nominated pair's remote address are unprotected and handed to
    `on_rtp` inside the callback itself; STUN, DTLS and SRTCP keep aiortc's path. SRTP from any
    other address is dropped and counted (media-source hygiene: aioice itself passes on every
    non-STUN datagram without checking where it came from).
    """

    __slots__ = (
        "_dtls",
        "_on_rtp",
        "_drops",
        "_nominated",
        "_pair",
        "_remote",
        "_session",
        "_unprotect",
        "fast_packets",
    )

    def __init__(self, dtls: RTCDtlsTransport, on_rtp: SyncRtpHandler, drops: Counter[str]):
        self._dtls = dtls
        self._on_rtp = on_rtp
        self._drops = drops
        # Per input packet, only what can change is read: the nominated pair (its remote
        # address cached, aioice builds a tuple per read) and the receive SRTP session.
        self._nominated: dict[int, Any] | None = None
        self._pair: Any = None
        self._remote: tuple[Any, ...] = ()
        self._session: Any = None
        self._unprotect: Callable[[bytes], bytes | None] = _refuse
        self.fast_packets = 0

    def install(self) -> int:
        """Wrap the callback of every host-socket protocol gathered so far; returns how many.

        Relayed (TURN) protocols are left alone: their media keeps aiortc's queued path.
        """
        return wrap_host_sockets(
            self._dtls.transport._connection,
            FastPath,
            lambda protocol, stock: partial(self._datagram_received, stock),
        )

    def _datagram_received(
        self, stock: Callable[[bytes, tuple[Any, ...]], None], data: bytes, addr: tuple[Any, ...]
    ) -> None:
        # SRTP: first byte 128-191 (RTP version 2), second byte outside the RTCP types 192-223.
        if len(data) < 12 or not 127 < data[0] < 192 or 191 < data[1] < 224:
            stock(data, addr)
            return
        dtls = self._dtls
        if dtls._state is not _CONNECTED:
            stock(data, addr)
            return
        nominated = self._nominated
        if nominated is None:
            nominated = self._nominated = dtls.transport._connection._nominated
        pair = nominated.get(1)
        if pair is not self._pair:
            self._pair = pair
            self._remote = () if pair is None else pair.remote_addr[:2]
        if addr[:2] != self._remote:
            self._drops[DropReason.FOREIGN_SOURCE.value] += 1
            return
        if dtls._rx_srtp is not self._session:
            self._session = dtls._rx_srtp
            self._unprotect = SrtpProtector(self._session).unprotect
        plain = self._unprotect(data)
        if plain is None:
            # Replays, forgeries and packets of a stale key all land here.
            self._drops["srtp_failure"] += 1
            return
        self.fast_packets += 1
        self._on_rtp(plain)


def hook_transport_fast(
    dtls: RTCDtlsTransport,
    on_rtp: SyncRtpHandler,
    on_rtcp: RtcpHandler,
    drops: Counter[str],
) -> FastPath:
    """Like `hook_transport`, with `on_rtp` called synchronously from the datagram callback.

    The queued path stays hooked to the same handler: datagrams already queued before the
    install, and relayed pairs, still arrive there.
    """

    async def queued_rtp(data: bytes, arrival_time_ms: int = 0) -> None:
        on_rtp(data)

    hook_transport(dtls, queued_rtp, on_rtcp)
    fast = FastPath(dtls, on_rtp, drops)
    fast.install()
    return fast
