"""What moves a down-track between the main process and a fan-out worker: the subscriber's
SRTP sending keys and address, the worker process itself, and the take-back of a dead worker's
streams (sfu/fanout/pool.py uses these)."""

from __future__ import annotations

import socket
import subprocess
import sys

from aiortc.rtcdtlstransport import RTCDtlsTransport

from sfu.fanout import wire
from sfu.fanout.remote import changed
from sfu.fanout.worker import warm, warm_rtcp
from sfu.forwarder import DownTrack
from sfu.internals.egress import RtpSink
from sfu.internals.sharedport import SharedTransport
from sfu.workers import _die_with_parent

# Sequence numbers a taken-back stream skips: more than a worker sends on one down-track
# between two reports, far less than half the sequence space. Likewise Sender Reports (one a
# second per down-track, reports four a second).
TAKEOVER_SKIP = 4096
TAKEOVER_RTCP_SKIP = 8
CHANNEL_BUFFER = 8 * 1024 * 1024


def srtp_keys(dtls: RTCDtlsTransport) -> tuple[bytes, int] | None:
    """The sending key and salt, and the libsrtp profile, of a connected DTLS transport (what
    aiortc's `_setup_srtp` derived: the exporter may be asked again)."""
    ssl = dtls._ssl
    if ssl is None:
        return None
    selected = ssl.get_selected_srtp_profile()
    for profile in dtls._srtp_profiles:
        if profile.openssl_profile == selected:
            break
    else:
        return None
    view = ssl.export_keying_material(
        b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length)
    )
    tx: bytes = profile.get_key_and_salt(view, 1 if dtls._role == "server" else 0)
    return tx, profile.libsrtp_profile


def spawn_worker(udp: dict[str, int], fanout: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """A worker process sending on the UDP sockets `udp` (local host -> fd), and main's end of
    its socket pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (ours, theirs):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL_BUFFER)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CHANNEL_BUFFER)
    command = [sys.executable, "-m", "sfu.fanout.worker", "--channel", str(theirs.fileno())]
    command += [f"--udp={host}={fd}" for host, fd in udp.items()]
    command += ["--fanout", fanout]
    process = subprocess.Popen(
        command, pass_fds=(theirs.fileno(), *udp.values()), preexec_fn=_die_with_parent
    )
    theirs.close()
    return process, ours


def media_address(sink: RtpSink) -> tuple[str, tuple[str, int]] | None:
    """The subscriber's shared socket (by local address) and its address; None if its
    nominated pair is not on the shared port (a client's TURN relay is: its pair is the
    server's host candidate and the relay's address)."""
    pair = sink._dtls.transport._connection._nominated.get(1)
    transport = getattr(getattr(pair, "protocol", None), "transport", None)
    if pair is None or not isinstance(transport, SharedTransport):
        return None
    host: str = transport.get_extra_info("sockname")[0]
    return host, tuple(pair.remote_addr)  # type: ignore[return-value]


def take_back(down: DownTrack, state: wire.DownState, sink: RtpSink | None) -> None:
    """Main continues a dead worker's stream: past whatever it may have sent since its last
    report, at a keyframe, with main's SRTP stream at the index the subscriber expects."""
    rewriter, rtx = state.rewriter, state.rtx
    session = sink._dtls._tx_srtp if sink is not None else None
    if rewriter.started:
        rewriter.skip(TAKEOVER_SKIP)
        if session is not None and state.extended_seq:
            warm(session, state.out_ssrc, state.extended_seq + TAKEOVER_SKIP + 1)
    if session is not None:
        warm_rtcp(session, state.out_ssrc, state.sender_reports + TAKEOVER_RTCP_SKIP)
    if rtx is not None and state.rtx_extended_seq:
        rtx.skip(TAKEOVER_SKIP)
        if session is not None:
            warm(session, rtx.ssrc, state.rtx_extended_seq + TAKEOVER_SKIP + 1)
    down.rewriter, down.rtx = rewriter, rtx
    down.paused = state.paused
    down.waiting_for_keyframe = down.track.kind == "video" or state.waiting_for_keyframe
    down.remote = None
    changed(down)
    down.track.request_keyframe()
