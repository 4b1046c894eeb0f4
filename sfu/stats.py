"""Process-wide forwarding counters (the metrics issue exports them to Prometheus)."""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum


class DropReason(StrEnum):
    MALFORMED = "malformed"
    UNKNOWN_SSRC = "unknown_ssrc"
    NOT_GRANTED = "no_right"
    TOO_LARGE = "too_large"
    SRTP_FAILURE = "srtp_failure"
    # A datagram from an address that has not completed ICE with that connection.
    FOREIGN_SOURCE = "foreign_source"
    # STUN at the shared media port (sfu/internals/sharedport.py) for no connection of ours:
    # a request naming an unknown ufrag, a response to no request sent, or no STUN at all.
    UNKNOWN_UFRAG = "unknown_ufrag"
    UNKNOWN_TRANSACTION = "unknown_transaction"
    MALFORMED_STUN = "malformed_stun"
    # A copy the batched fan-out could not send: libsrtp refused it, or the socket buffer was full.
    SEND_FAILED = "send_failed"
    # A NACKed packet the subscriber's retransmission budget refused (sfu/retransmit.py).
    NACK_LIMITED = "nack_limited"
    # A data channel message in reassembly past the SCTP receive window (sfu/internals/sctp.py).
    DATA_OVERFLOW = "data_overflow"
    # A simulcast packet whose RID the offer did not declare, or that names a layer already
    # carried by another SSRC (sfu/simulcast.py).
    BAD_LAYER = "bad_layer"
    # A packet received twice (e.g. a publisher's retransmission of one that arrived after all).
    DUPLICATE = "duplicate"
    # A publisher's padding-only RTX packet (a bandwidth probe): nothing to forward.
    RTX_PROBE = "rtx_probe"
    # A packet for a fan-out worker whose socket buffer was full (it is behind: sfu/fanout/).
    FANOUT_QUEUE_FULL = "fanout_queue_full"
    # A relayed data message the receiver's protocol cannot carry (a LiveKit RPC or stream
    # packet for a keyroom JSON client, sfu/datarelay.py).
    UNREPRESENTABLE = "unrepresentable"
    # A subscriber's transport-wide congestion control feedback that is malformed or absurd
    # (sfu/twcc.py): ignored, the RTCP beside it still read.
    BAD_FEEDBACK = "bad_feedback"
    # A publisher's RED packet (RFC 2198) with truncated block headers, blocks longer than the
    # packet, too many blocks, or a primary block that is not the track's codec (sfu/red.py).
    MALFORMED_RED = "malformed_red"


@dataclass
class Stats:
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0  # forwarded copies counted at their input size
    keyframe_requests: int = 0
    retransmissions: int = 0
    # Uplink loss recovery (sfu/uplinknack.py): sequence numbers NACKed to publishers, and
    # publisher RTX packets unwrapped and forwarded.
    uplink_nacks: int = 0
    rtx_received: int = 0
    # Publishers' RED audio packets (RFC 2198), each unwrapped once for plain subscribers.
    red_received: int = 0
    # Subscribers' transport-wide congestion control feedback messages used (sfu/twcc.py).
    transport_feedback: int = 0
    # Subscriber sections that carried a track before and were given to a new one.
    sections_reused: int = 0
    # The batched fan-out (sfu/fastpath): sendmmsg calls and the packets they sent.
    fanout_calls: int = 0
    fanout_packets: int = 0
    # Of those, the copies the compiled per-copy loop made (sfu/fastpath/steady.py).
    fanout_compiled_copies: int = 0
    # Of those, RED audio to subscribers that negotiated RED (sfu/fastpath/redcopies.py).
    fanout_compiled_red_copies: int = 0
    # Fan-out workers (sfu/fanout/): packets they sent, and workers that died.
    fanout_worker_packets: int = 0
    fanout_worker_red_packets: int = 0  # of those, to RED subscribers (sfu/redtrack.py)
    fanout_worker_failures: int = 0
    fanout_worker_down_tracks: int = 0  # a gauge: down-tracks workers send now
    # The batched receive on the shared port (sfu/fastpath/receive.py): recvmmsg calls that
    # returned datagrams, and those datagrams (summed per call).
    receive_calls: int = 0
    received_datagrams: int = 0
    # The shared port's sockets, read at each scrape for their kernel-side receive-buffer
    # overflows (sfu/sockbuf.py).
    udp_sockets: list[socket.socket] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    # Published tracks and their summed bitrate, node-wide, kept up to date on publish,
    # unpublish and each bitrate measurement: `[node]` limits read them in O(1).
    tracks: int = 0
    bitrate_in: int = 0

    def drop(self, reason: DropReason) -> None:
        self.dropped[reason.value] += 1

    def snapshot(self) -> dict[str, object]:
        return {
            "packets_in": self.packets_in,
            "bytes_in": self.bytes_in,
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
            "keyframe_requests": self.keyframe_requests,
            "retransmissions": self.retransmissions,
            "sections_reused": self.sections_reused,
            "dropped": dict(self.dropped),
        }
