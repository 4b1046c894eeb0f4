"""Every use of aiortc/aioice private internals lives here.

keyroom forwards RTP below aiortc's track API: it takes plaintext RTP/RTCP from a peer connection's
DTLS transport and sends rewritten packets through another one. That needs private attributes of
aiortc 1.16.0 / aioice 0.13.0 (pinned in setup.cfg). `verify_internals()` runs at server start-up
and in a test, so an upgrade that moves one of them fails loudly instead of silently forwarding
nothing. Notes: ../shared/notes/aiortc-internals.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections import Counter
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import aioice.ice
import aioice.turn
import aiortc
import aiortc.codecs
import aiortc.rtcicetransport
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import pylibsrtp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpTransceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters
from pylibsrtp._binding import ffi as srtp_ffi
from pylibsrtp._binding import lib as srtp_lib

from sfu.candidates import RemoteCandidateGuard
from sfu.rtcp import is_rtcp
from sfu.stats import DropReason

log = logging.getLogger("keyroom.internals")

PINNED_AIORTC = "1.16.0"
PINNED_AIOICE = "0.13.0"

RtpHandler = Callable[[bytes, int], Coroutine[Any, Any, None]]
RtcpHandler = Callable[[bytes], Coroutine[Any, Any, None]]


class InternalsMoved(RuntimeError):
    """An aiortc/aioice internal keyroom relies on is missing: the pinned version changed."""


def verify_internals() -> None:
    """Fail loudly if an internal used by this module is gone (see module docstring)."""
    missing = []
    checks: list[tuple[object, str]] = [
        (RTCDtlsTransport, "_handle_rtp_data"),
        (RTCDtlsTransport, "_handle_rtcp_data"),
        (RTCDtlsTransport, "_recv_next"),
        (RTCDtlsTransport, "_state"),
        (aioice.ice.Connection, "_nominated"),
        (aioice.ice.Connection, "_closing"),
        (aioice.ice.Connection, "query_consent"),
        (aioice.ice.StunProtocol, "send_data"),
        (aioice.ice, "get_host_addresses"),
        (aiortc.rtcrtpreceiver.RTCRtpReceiver, "receive"),
        (aiortc.rtcrtpsender.RTCRtpSender, "send"),
        (aiortc.rtcrtpreceiver, "get_decoder"),
        (aiortc.rtcrtpsender, "get_encoder"),
        (RTCRtpTransceiver, "_codecs"),
        (RTCRtpTransceiver, "_headerExtensions"),
        # guard_remote_candidates, guard_media_sources (sfu/iceguard.py) and FastPath.
        (RTCPeerConnection, "_RTCPeerConnection__createDtlsTransport"),
        (aioice.ice.Connection, "add_remote_candidate"),
        (aioice.ice.Connection, "request_received"),
        (aioice.ice.Connection, "gather_candidates"),
        (aioice.ice.Connection, "_protocols"),
        (aioice.ice.Connection, "_check_list"),
        (aioice.ice.CandidatePair, "protocol"),
        (aioice.ice.CandidatePair, "remote_addr"),
        (aioice.ice.CandidatePair, "state"),
        (aioice.ice.CandidatePair.State, "SUCCEEDED"),
        (aioice.ice.StunProtocol, "datagram_received"),
        # bind_media_ports replaces get_component_candidates for host-only gathering.
        (aioice.ice.Connection, "get_component_candidates"),
        (aioice.ice.Connection, "stun_server"),
        (aioice.ice.Connection, "turn_server"),
        (aioice.ice, "candidate_foundation"),
        (aioice.ice, "candidate_priority"),
        (aioice.turn, "UDP_SOCKET_BUFFER_SIZE"),
    ]
    for owner, name in checks:
        if not _has(owner, name):
            missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
    for name in ("_srtp", "_cdata", "_buffer"):
        if name not in pylibsrtp.Session.__init__.__code__.co_names:
            missing.append(f"pylibsrtp.Session.{name}")
    source = RTCDtlsTransport._recv_next.__code__.co_names
    for name in ("_handle_rtp_data", "_handle_rtcp_data", "_rx_srtp"):
        if name not in source:
            missing.append(f"RTCDtlsTransport._recv_next no longer calls {name}")
    # The guards replace these per instance: they only see what goes through them.
    calls = [
        (aioice.ice.StunProtocol.datagram_received, ("data_received", "request_received")),
        (aiortc.rtcicetransport.RTCIceGatherer.gather, ("gather_candidates",)),
        (aiortc.rtcicetransport.RTCIceTransport.addRemoteCandidate, ("add_remote_candidate",)),
    ]
    for function, names in calls:
        for name in names:
            if name not in function.__code__.co_names:
                missing.append(f"{function.__qualname__} no longer calls {name}")
    setup = RTCDtlsTransport._setup_srtp.__code__.co_names
    for name in ("_rx_srtp", "_tx_srtp"):
        if name not in setup:
            missing.append(f"RTCDtlsTransport._setup_srtp no longer sets {name}")
    if aiortc.__version__ != PINNED_AIORTC:
        missing.append(f"aiortc {aiortc.__version__} != pinned {PINNED_AIORTC}")
    if getattr(aioice, "__version__", PINNED_AIOICE) != PINNED_AIOICE:
        missing.append(f"aioice {aioice.__version__} != pinned {PINNED_AIOICE}")
    if missing:
        raise InternalsMoved("aiortc/aioice internals moved: " + "; ".join(missing))


def _has(owner: object, name: str) -> bool:
    if hasattr(owner, name):
        return True
    # Instance attributes assigned in __init__ show up as names in its code object.
    init = getattr(owner, "__init__", None)
    code = getattr(init, "__code__", None)
    return code is not None and name in code.co_names


class CodecCreated(RuntimeError):
    """Raised if anything in the server tries to create a decoder or encoder."""


def _refuse_codec(*args: object, **kwargs: object) -> None:
    raise CodecCreated("keyroom forwards packets: no decoder or encoder may be created")


async def _receive_without_decoder(self: object, parameters: object) -> None:
    # Stock receive() starts a decoder thread and an RTCP task per transceiver; keyroom takes
    # plaintext RTP at the transport instead, so the receiver stays idle.
    return None


async def _send_without_encoder(self: object, parameters: object) -> None:
    # Stock send() starts an encoder loop polling its track 50 times a second and an RTCP task
    # sending zeroed Sender Reports; keyroom writes RTP and SRs for each down-track itself.
    return None


_stock_query_consent = aioice.ice.Connection.query_consent


async def _query_consent_unless_closed(self: aioice.ice.Connection) -> None:
    # aioice starts consent checks when connect() resumes, which can be after close() already
    # ran: that task would then sleep forever, one leaked task per such connection.
    if self._closing:
        return
    await _stock_query_consent(self)


def install_server_patches() -> None:
    """Turn aiortc into transport plumbing for this process: no codec, no media tasks."""
    verify_internals()
    aiortc.rtcrtpreceiver.RTCRtpReceiver.receive = _receive_without_decoder  # type: ignore[method-assign]
    aiortc.rtcrtpsender.RTCRtpSender.send = _send_without_encoder  # type: ignore[method-assign]
    aioice.ice.Connection.query_consent = _query_consent_unless_closed  # type: ignore[method-assign]
    aiortc.rtcrtpreceiver.get_decoder = _refuse_codec  # type: ignore[assignment]
    aiortc.rtcrtpsender.get_encoder = _refuse_codec  # type: ignore[assignment]
    aiortc.codecs.get_decoder = _refuse_codec  # type: ignore[assignment]
    aiortc.codecs.get_encoder = _refuse_codec  # type: ignore[assignment]


def new_peer_connection() -> RTCPeerConnection:
    # iceServers=[]: otherwise aiortc adds a public STUN server and advertises a reflexive address.
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=aiortc.RTCBundlePolicy.MAX_BUNDLE)
    )


def bundle_transport(pc: RTCPeerConnection) -> RTCDtlsTransport | None:
    """The single DTLS transport every m-line of a max-bundle connection shares."""
    transceivers = pc.getTransceivers()
    if transceivers:
        return transceivers[0].receiver.transport
    if pc.sctp is not None:
        return pc.sctp.transport
    return None


def hook_transport(dtls: RTCDtlsTransport, on_rtp: RtpHandler, on_rtcp: RtcpHandler) -> None:
    """Receive this transport's plaintext RTP and RTCP instead of aiortc's router."""
    dtls._handle_rtp_data = on_rtp  # type: ignore[method-assign, assignment]
    dtls._handle_rtcp_data = on_rtcp  # type: ignore[method-assign, assignment]


class SrtpProtector:
    """pylibsrtp's `protect` without its per-call allocation and Python-level checks.

    pylibsrtp 1.0.0 (pinned) allocates an int, type-checks and copies through a buffer slice on
    every call; reusing the session's own buffer and one length cell saves ~0.6 µs per output
    packet (about a third of the SRTP cost). Single-threaded use only, like the session itself.
    """

    __slots__ = ("_srtp", "_cdata", "_buffer", "_length", "_limit")

    def __init__(self, session: pylibsrtp.Session) -> None:
        self._srtp = session._srtp[0]
        self._cdata = session._cdata
        self._buffer = session._buffer
        self._length = srtp_ffi.new("int *")
        self._limit = len(session._cdata) - pylibsrtp.SRTP_MAX_TRAILER_LEN

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


class RtpSink:
    """Protects and sends raw RTP/RTCP on a connected DTLS transport, synchronously.

    aiortc's `_send_rtp` costs four coroutine frames per packet; the nominated pair's socket can
    take the datagram directly. Relayed (TURN) pairs keep aioice's own coroutine path.
    """

    __slots__ = (
        "_dtls",
        "_protector",
        "_pair",
        "_remote",
        "sent_packets",
        "sent_bytes",
        "send_errors",
    )

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self._dtls = dtls
        self._protector: SrtpProtector | None = None
        # aioice's CandidatePair.remote_addr builds a tuple on every read: cached per pair.
        self._pair: Any = None
        self._remote: tuple[str, int] = ("", 0)
        self.sent_packets = 0
        self.sent_bytes = 0
        self.send_errors = 0

    def send(self, data: bytes) -> bool:
        dtls = self._dtls
        if dtls._state != State.CONNECTED:
            return False
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            return False
        protected: bytes | None
        if is_rtcp(data):
            try:
                protected = dtls._tx_srtp.protect_rtcp(data)
            except pylibsrtp.Error:
                protected = None
        else:
            protector = self._protector
            if protector is None:
                # The SRTP session exists once DTLS is connected, and lives as long as it.
                protector = self._protector = SrtpProtector(dtls._tx_srtp)
            protected = protector.protect(data)
        if protected is None:
            self.send_errors += 1
            return False
        if pair is not self._pair:
            self._pair, self._remote = pair, pair.remote_addr
        protocol = pair.protocol
        if type(protocol) is aioice.ice.StunProtocol:
            protocol.transport.sendto(protected, self._remote)
        else:
            asyncio.ensure_future(protocol.send_data(protected, self._remote))
        self.sent_packets += 1
        self.sent_bytes += len(protected)
        return True


def set_sender_msid(transceiver: RTCRtpTransceiver, stream_id: str, track_id: str) -> None:
    """What the offer says in `a=msid:<stream> <track>` for this sender (PROTOCOL 2.4)."""
    transceiver.sender._stream_id = stream_id
    transceiver.sender._track_id = track_id


def sender_ssrc(transceiver: RTCRtpTransceiver) -> int:
    return int(transceiver.sender._ssrc)


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    return list(transceiver._codecs)


def restrict_codecs(transceiver: RTCRtpTransceiver, codecs: list[RTCRtpCodecParameters]) -> None:
    """Answer with exactly these codecs, so the publisher's codec is known before it sends."""
    transceiver._codecs = codecs


def negotiated_extensions(
    transceiver: RTCRtpTransceiver,
) -> list[RTCRtpHeaderExtensionParameters]:
    return list(transceiver._headerExtensions)


SyncRtpHandler = Callable[[bytes], None]


class FastPath:
    """Plaintext RTP straight from aioice's datagram callback (notes 2(a) "Fastest").

    Stock aiortc hands each datagram through a STUN parse attempt, an unbounded queue and a task
    that unprotects it and awaits the RTP handler: 4-5 µs and two coroutine frames per packet.
    Here SRTP datagrams from the nominated pair's remote address are unprotected and handed to
    `on_rtp` inside the callback itself; STUN, DTLS and SRTCP keep aiortc's path. SRTP from any
    other address is dropped and counted (media-source hygiene: aioice itself passes on every
    non-STUN datagram without checking where it came from).
    """

    __slots__ = ("_dtls", "_on_rtp", "_drops", "fast_packets")

    def __init__(self, dtls: RTCDtlsTransport, on_rtp: SyncRtpHandler, drops: Counter[str]):
        self._dtls = dtls
        self._on_rtp = on_rtp
        self._drops = drops
        self.fast_packets = 0

    def install(self) -> int:
        """Wrap the callback of every host-socket protocol gathered so far; returns how many.

        Relayed (TURN) protocols are left alone: their media keeps aiortc's queued path.
        """
        installed = 0
        for protocol in self._dtls.transport._connection._protocols:
            if type(protocol) is not aioice.ice.StunProtocol or _wrapped_by(
                protocol.datagram_received, FastPath
            ):
                continue
            protocol.datagram_received = partial(  # type: ignore[method-assign]
                self._datagram_received, protocol.datagram_received
            )
            installed += 1
        return installed

    def _datagram_received(
        self, stock: Callable[[bytes, tuple[Any, ...]], None], data: bytes, addr: tuple[Any, ...]
    ) -> None:
        # SRTP: first byte 128-191 (RTP version 2), second byte outside the RTCP types 192-223.
        if len(data) < 12 or not 127 < data[0] < 192 or 191 < data[1] < 224:
            stock(data, addr)
            return
        dtls = self._dtls
        if dtls._state != State.CONNECTED:
            stock(data, addr)
            return
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None or addr[:2] != pair.remote_addr[:2]:
            self._drops[DropReason.FOREIGN_SOURCE.value] += 1
            return
        try:
            plain = dtls._rx_srtp.unprotect(data)
        except Exception:
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


def guard_remote_candidates(pc: RTCPeerConnection, guard: RemoteCandidateGuard) -> None:
    """Let `guard` decide which remote candidates and incoming checks each ICE agent of `pc` takes.

    aiortc creates the aioice Connection when a description is applied, so the filter is put on
    every DTLS transport as it is created. Signalled candidates (SDP and trickle alike) pass
    through `Connection.add_remote_candidate`, before any mDNS lookup, and every incoming check
    through `request_received`, before aioice answers or learns a peer-reflexive candidate.
    """
    create = pc._RTCPeerConnection__createDtlsTransport  # type: ignore[attr-defined]

    def create_guarded() -> RTCDtlsTransport:
        dtls = create()
        _guard_connection(dtls.transport._connection, guard)
        return dtls

    pc._RTCPeerConnection__createDtlsTransport = create_guarded  # type: ignore[attr-defined]


def _guard_connection(connection: aioice.ice.Connection, guard: RemoteCandidateGuard) -> None:
    add = connection.add_remote_candidate
    received = connection.request_received

    async def add_remote_candidate(candidate: aioice.Candidate | None) -> None:
        if candidate is None or guard.admit_candidate(candidate.host):
            await add(candidate)

    def request_received(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        if guard.admit_check(addr[0]):
            received(message, addr, protocol)

    connection.add_remote_candidate = add_remote_candidate  # type: ignore[method-assign, assignment]
    connection.request_received = request_received  # type: ignore[method-assign]


def _wrapped_by(callback: object, kind: type) -> bool:
    """Whether a `partial(<kind instance>.method, ...)` wraps `callback`, at any depth."""
    while isinstance(callback, partial):
        if isinstance(getattr(callback.func, "__self__", None), kind):
            return True
        callback = callback.args[-1] if callback.args else None  # the callback it wraps
    return False


class MediaSourceGuard:
    """Drops datagrams that are not STUN from addresses that have not completed ICE here.

    aioice hands every datagram it cannot parse as STUN to the DTLS transport's queue, whatever
    its source: a stranger's forged ClientHellos during the handshake fail the connection
    (../shared/notes/test-environment.md), and its junk reaches OpenSSL and SRTP. STUN itself
    passes (aioice authenticates checks; they are how an address gets verified). An address is
    verified on a socket once a connectivity check between them succeeded in either direction as
    aioice sees it: a nominated pair, or a pair of the check list in state SUCCEEDED. The peer's
    first DTLS flight only follows ICE success on its side, which needs our answer to its check
    and, for the nominated pair, our own check's success (RFC 8445 7.3.1.5), so it is not lost.
    """

    __slots__ = ("_connection", "_drops")

    def __init__(self, connection: aioice.ice.Connection, drops: Counter[str]) -> None:
        self._connection = connection
        self._drops = drops

    def install(self) -> int:
        """Wrap every host socket's callback gathered so far; returns how many.

        The server gathers host candidates only (no STUN or TURN server), so these are all its
        sockets; a TURN client's own protocol is left alone (its relay filters peers itself).
        """
        installed = 0
        for protocol in self._connection._protocols:
            if type(protocol) is not aioice.ice.StunProtocol or _wrapped_by(
                protocol.datagram_received, MediaSourceGuard
            ):
                continue
            protocol.datagram_received = partial(  # type: ignore[method-assign]
                self._datagram_received, protocol, protocol.datagram_received
            )
            installed += 1
        return installed

    def verified(self, protocol: aioice.ice.StunProtocol, addr: tuple[Any, ...]) -> bool:
        source = addr[:2]
        connection = self._connection
        for pair in connection._nominated.values():
            if pair.protocol is protocol and pair.remote_addr[:2] == source:
                return True
        succeeded = aioice.ice.CandidatePair.State.SUCCEEDED
        return any(
            pair.state == succeeded and pair.protocol is protocol and pair.remote_addr == source
            for pair in connection._check_list
        )

    def _datagram_received(
        self,
        protocol: aioice.ice.StunProtocol,
        stock: Callable[[bytes, tuple[Any, ...]], None],
        data: bytes,
        addr: tuple[Any, ...],
    ) -> None:
        # RFC 7983 demultiplexing: a first byte of 0-3 is STUN.
        if (data and data[0] < 4) or self.verified(protocol, addr):
            stock(data, addr)
        else:
            self._drops[DropReason.FOREIGN_SOURCE.value] += 1


def guard_media_sources(pc: RTCPeerConnection, drops: Counter[str]) -> None:
    """Put a `MediaSourceGuard` on every ICE connection of `pc`, counting drops in `drops`.

    aiortc creates the aioice Connection with each DTLS transport and gathers (binds the sockets)
    in `setLocalDescription`: the guard goes on the sockets as soon as gathering returns, before
    the description carrying their ports is sent to anyone.
    """
    create = pc._RTCPeerConnection__createDtlsTransport  # type: ignore[attr-defined]

    def create_guarded() -> RTCDtlsTransport:
        dtls = create()
        connection = dtls.transport._connection
        guard = MediaSourceGuard(connection, drops)
        gather = connection.gather_candidates

        async def gather_then_guard() -> None:
            await gather()
            guard.install()

        connection.gather_candidates = gather_then_guard  # type: ignore[method-assign]
        return dtls

    pc._RTCPeerConnection__createDtlsTransport = create_guarded  # type: ignore[attr-defined]


def port_order(port_min: int, port_max: int, start: int) -> list[int]:
    """The ports of `port_min..port_max` to try, from `start` on and around (pure).

    A random start spreads connections over the range, so a port just released (its old peer
    may still send to it) is not the first one taken again."""
    span = port_max - port_min + 1
    return [port_min + (start - port_min + i) % span for i in range(span)]


def _bind_in_range(address: str, port_min: int, port_max: int) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for port in port_order(port_min, port_max, random.randint(port_min, port_max)):
        try:
            sock.bind((address, port))
            return sock
        except OSError:
            continue
    sock.close()
    raise OSError(f"no free UDP port in {port_min}..{port_max}")


def bind_media_ports(port_min: int, port_max: int) -> None:
    """Make every ICE agent of this process bind its host sockets in `port_min..port_max`.

    aioice binds port 0 (aiortc#487: no range option). The server gathers host candidates only
    (no STUN or TURN server: `new_peer_connection`), which this replaces with the same steps
    on a socket bound in the range; an agent with a STUN or TURN server keeps aioice's gathering.
    Like `sfu.iceaddr`, process-wide.
    """
    stock = aioice.ice.Connection.get_component_candidates

    async def get_component_candidates(
        self: aioice.ice.Connection, component: int, addresses: list[str], timeout: int = 5
    ) -> list[aioice.Candidate]:
        if self.stun_server or self.turn_server:
            return await stock(self, component, addresses, timeout)
        loop = asyncio.get_running_loop()
        candidates = []
        for address in addresses:
            try:
                sock = _bind_in_range(address, port_min, port_max)
            except OSError as exc:
                # As aioice does for an address it cannot bind: gather on the others.
                log.warning("media port range: %s on %s", exc, address)
                continue
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
            _, protocol = await loop.create_datagram_endpoint(
                lambda: aioice.ice.StunProtocol(self), sock=sock
            )
            host, port = sock.getsockname()[:2]
            protocol.local_candidate = aioice.Candidate(
                foundation=aioice.ice.candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=aioice.ice.candidate_priority(component, "host"),
                host=host,
                port=port,
                type="host",
            )
            self._protocols.append(protocol)
            candidates.append(protocol.local_candidate)
        return candidates

    aioice.ice.Connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
