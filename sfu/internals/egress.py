"""Egress: rewritten RTP and RTCP protected and sent on a DTLS transport, synchronously."""

from __future__ import annotations

import asyncio
from typing import Any

import aioice.ice
import pylibsrtp
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from pylibsrtp._binding import ffi as srtp_ffi
from pylibsrtp._binding import lib as srtp_lib

from sfu.fastpath.batch import Destination, FanoutBatch
from sfu.twcc import TransportSequence

_CONNECTED = State.CONNECTED


class SrtpProtector:
    """pylibsrtp's `protect` without its per-call allocation and Python-level checks.

    pylibsrtp 1.0.0 (pinned) allocates an int, type-checks and copies through a buffer slice on
    every call; reusing the session's own buffer and one length cell saves ~0.6 µs per output
    packet (about a third of the SRTP cost). Single-threaded use only, like the session itself.
    """

    __slots__ = ("_session", "_srtp", "_cdata", "_buffer", "_length", "_limit", "_capacity")

    def __init__(self, session: pylibsrtp.Session) -> None:
        self._session = session  # its libsrtp context lives as long as this
        self._srtp = session._srtp[0]
        self._cdata = session._cdata
        self._buffer = session._buffer
        self._length = srtp_ffi.new("int *")
        self._limit = len(session._cdata) - pylibsrtp.SRTP_MAX_TRAILER_LEN
        self._capacity = len(session._cdata)

    def protect(self, data: bytes) -> bytes | None:
        size = len(data)
        if size > self._limit:
            return None
        srtp_ffi.memmove(self._cdata, data, size)
        self._length[0] = size
        if srtp_lib.srtp_protect(self._srtp, self._cdata, self._length):
            return None  # e.g. a replayed sequence number: drop this packet, keep the stream
        protected: bytes = self._buffer[0 : self._length[0]]  # a cffi buffer slice is a copy
        return protected

    def unprotect(self, data: bytes) -> bytes | None:
        """The plaintext of SRTP `data`, the same way; None for a packet libsrtp refuses (a
        replay, a forgery, a stale key) instead of pylibsrtp's raised error."""
        size = len(data)
        if size > self._capacity:
            return None
        srtp_ffi.memmove(self._cdata, data, size)
        self._length[0] = size
        if srtp_lib.srtp_unprotect(self._srtp, self._cdata, self._length):
            return None
        plain: bytes = self._buffer[0 : self._length[0]]
        return plain


class RtpSink:
    """Protects and sends raw RTP/RTCP on a connected DTLS transport, synchronously.

    aiortc's `_send_rtp` costs four coroutine frames per packet; the nominated pair's socket can
    take the datagram directly. A pair on a relay candidate of the server's own (it gathers
    none) would keep aioice's own coroutine path; a client's TURN relay is a host pair here.
    """

    __slots__ = (
        "_dtls",
        "_protector",
        "_nominated",
        "_pair",
        "_remote",
        "_batch",
        "_destination",
        "sent_packets",
        "sent_bytes",
        "send_errors",
        "transport_sequence",
    )

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self._dtls = dtls
        self._protector: SrtpProtector | None = None
        # The ICE connection's nominated pairs (one dict for the connection's life).
        self._nominated: dict[int, Any] | None = None
        # aioice's CandidatePair.remote_addr builds a tuple on every read: cached per pair.
        self._pair: Any = None
        self._remote: tuple[str, int] = ("", 0)
        # On a shared port with the compiled fan-out (sfu/fastpath): RTP goes out batched.
        self._batch: FanoutBatch | None = None
        self._destination: Destination | None = None
        self.sent_packets = 0
        self.sent_bytes = 0
        self.send_errors = 0
        # Transport-wide congestion control, once the subscriber accepted it: every RTP packet
        # gets the next sequence number in the slot the rewriter reserved (sfu/twcc.py).
        self.transport_sequence: TransportSequence | None = None

    def send(self, data: bytes) -> bool:
        # Once per copy of every forwarded packet: attribute reads kept to a minimum.
        dtls = self._dtls
        if dtls._state is not _CONNECTED:
            return False
        nominated = self._nominated
        if nominated is None:
            nominated = self._nominated = dtls.transport._connection._nominated
        pair = nominated.get(1)
        if pair is None:
            return False
        if pair is not self._pair:
            self._pair, self._remote = pair, pair.remote_addr
            # Only a shared port's transport has one.
            self._batch = getattr(getattr(pair.protocol, "transport", None), "batch", None)
            self._destination = None
        batch = self._batch
        size = len(data)
        if size >= 2 and 191 < data[1] < 224:  # RTCP (sfu.rtcp.is_rtcp)
            sent = self._send_rtcp(data, pair.protocol)
        else:
            sequence = self.transport_sequence
            if sequence is not None:
                data = sequence.stamp(data)
            if batch is not None:
                destination = self._destination
                if destination is None:
                    # The SRTP session exists once DTLS is connected, and lives as long as it.
                    destination = self._destination = batch.destination(dtls._tx_srtp, self._remote)
                sent = batch.add(destination, data)
            else:
                sent = self._send_rtp(data, pair.protocol)
        if not sent:
            self.send_errors += 1
            return False
        self.sent_packets += 1
        self.sent_bytes += size
        return True

    def steady(self) -> tuple[FanoutBatch, Destination, RtpSink] | None:
        """(batch, destination, self) while `send` would queue RTP in a shared socket's batch
        (DTLS connected, the same nominated pair): then compiled code may queue this sink's
        copies itself, stamping `transport_sequence` as `send` does (sfu/fastpath/steady.py)."""
        nominated, destination = self._nominated, self._destination
        if (
            self._dtls._state is not _CONNECTED
            or nominated is None
            or nominated.get(1) is not self._pair
            or destination is None
            or self._batch is None
        ):
            return None
        return self._batch, destination, self

    def _send_rtp(self, data: bytes, protocol: Any) -> bool:
        protector = self._protector
        if protector is None:
            protector = self._protector = SrtpProtector(self._dtls._tx_srtp)
        protected = protector.protect(data)
        if protected is None:
            return False
        self._transmit(protected, protocol)
        return True

    def _send_rtcp(self, data: bytes, protocol: Any) -> bool:
        try:
            protected = self._dtls._tx_srtp.protect_rtcp(data)
        except pylibsrtp.Error:
            return False
        self._transmit(protected, protocol)
        return True

    def _transmit(self, protected: bytes, protocol: Any) -> None:
        if type(protocol) is aioice.ice.StunProtocol:
            protocol.transport.sendto(protected, self._remote)
        else:
            asyncio.ensure_future(protocol.send_data(protected, self._remote))
