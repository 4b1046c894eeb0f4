"""Every use of aiortc/aioice private internals lives in this package, grouped by purpose.

keyroom forwards RTP below aiortc's track API: it takes plaintext RTP/RTCP from a peer connection's
DTLS transport and sends rewritten packets through another one. That needs private attributes of
aiortc 1.16.0 / aioice 0.13.0 (pinned in setup.cfg), all named in `verify.py`'s single list:
`verify_internals()` runs at server start-up and in a test, so an upgrade that moves one of them
fails loudly instead of silently forwarding nothing.

- `ingress`: plaintext RTP/RTCP taken from a DTLS transport (`hook_transport`, `FastPath`).
- `egress`: RTP/RTCP protected and sent synchronously (`SrtpProtector`, `RtpSink`).
- `icepolicy`: which remote candidates, checks and media sources an ICE connection takes.
- `ports`: host sockets bound in the configured media port range.
- `patches`: process-wide patches that keep aiortc from decoding, encoding or leaking tasks.
- `sctp`: data channels' SCTP: reassembly bounded by the receive window, association gated.
- `peerconnection`: peer connections as the server makes them, transceiver state.
- `sharedport`: one UDP port for every connection (`[rtc] udp_port`), demultiplexed.
- `icerestart`: ICE restart on a live connection (new credentials, same DTLS).
- `sockets`: wrapping the datagram callback of a connection's host sockets.
- `verify`: the list of internals, checked.
"""

from sfu.internals.egress import RtpSink, SrtpProtector
from sfu.internals.icepolicy import MediaSourceGuard, guard_media_sources, guard_remote_candidates
from sfu.internals.icerestart import (
    adopt_remote_credentials,
    ice_credentials,
    renew_local_credentials,
)
from sfu.internals.ingress import (
    FastPath,
    RtcpHandler,
    RtpHandler,
    SyncRtpHandler,
    hook_transport,
    hook_transport_fast,
)
from sfu.internals.patches import CodecCreated, install_server_patches
from sfu.internals.peerconnection import (
    bundle_transport,
    negotiated_codecs,
    negotiated_extensions,
    new_peer_connection,
    offered_extension_ids,
    restrict_codecs,
    sender_rtx_ssrc,
    sender_ssrc,
    set_sender_msid,
)
from sfu.internals.ports import bind_media_ports, port_order
from sfu.internals.sctp import gate_association, on_data_dropped
from sfu.internals.sharedport import SharedPort, open_shared_port
from sfu.internals.verify import PINNED_AIOICE, PINNED_AIORTC, InternalsMoved, verify_internals

__all__ = [
    "PINNED_AIOICE",
    "PINNED_AIORTC",
    "CodecCreated",
    "FastPath",
    "InternalsMoved",
    "MediaSourceGuard",
    "RtcpHandler",
    "RtpHandler",
    "RtpSink",
    "SharedPort",
    "SrtpProtector",
    "SyncRtpHandler",
    "adopt_remote_credentials",
    "bind_media_ports",
    "bundle_transport",
    "gate_association",
    "guard_media_sources",
    "guard_remote_candidates",
    "hook_transport",
    "hook_transport_fast",
    "ice_credentials",
    "install_server_patches",
    "negotiated_codecs",
    "negotiated_extensions",
    "new_peer_connection",
    "offered_extension_ids",
    "on_data_dropped",
    "open_shared_port",
    "port_order",
    "renew_local_credentials",
    "restrict_codecs",
    "sender_rtx_ssrc",
    "sender_ssrc",
    "set_sender_msid",
    "verify_internals",
]
