"""The fan-out workers' messages, their share assignment and SRTP index warming (no I/O).

Main process and worker talk over a private `SOCK_SEQPACKET` socket pair (inherited, never
named in the filesystem), so a message is one datagram and a peer's exit reads as end of file:

- a media packet: `P` + the track's 32-bit key + the decrypted RTP packet, exactly as the
  publisher's ingress passed it to the forwarder; one per input packet and worker;
- a control message: `C` + a pickled tuple whose first item names it (`CONTROL_KINDS`,
  `REPLY_KINDS`). Both ends are this program, forked by it: pickle carries the rewriter's and
  RTX stream's state as they are. Anything else is refused as `WireError`.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PACKET = ord("P")
CONTROL = ord("C")
HEADER = 5  # kind byte + 32-bit track key

# main -> worker
SESSION = "session"  # sid, key_and_salt, srtp profile, local host, remote address
ADDRESS = "address"  # sid, local host, remote address: the subscriber's media moved
UNSESSION = "unsession"  # sid: the subscriber left; its SRTP session goes
TRACK = "track"  # track key, kind, mime type
CODEC = "codec"  # track key, the publisher's CodecInfo (RED's payload types: the worker splits)
UNTRACK = "untrack"  # track key
DOWN = "down"  # down key, sid, track key, DownState, the subscriber's Opus in RED or None
UNDOWN = "undown"  # down key
NACK = "nack"  # down key, sequence numbers
PAUSE = "pause"  # down key, paused, waiting for a keyframe
PADDING = "padding"  # down key, padding packets after each media packet (a congestion probe)
RESTART = "restart"  # track key: every down-track waits for a keyframe (unmute)
SENDER_REPORT = "sr"  # track key, ntp, rtp timestamp
CONTROL_KINDS = frozenset(
    (
        SESSION,
        ADDRESS,
        UNSESSION,
        TRACK,
        CODEC,
        UNTRACK,
        DOWN,
        UNDOWN,
        NACK,
        PAUSE,
        PADDING,
        RESTART,
        SENDER_REPORT,
    )
)
# worker -> main
KEYFRAME = "keyframe"  # track key
REPORT = "report"  # {down key: DownState}, WorkerCounters
REPLY_KINDS = frozenset((KEYFRAME, REPORT))


class WireError(ValueError):
    """A datagram that is no message of this protocol."""


@dataclass
class DownState:
    """What a down-track's sending side is, as handed to a worker and reported back: enough for
    the other side to continue the stream where it stopped."""

    rewriter: Any  # sfu.rtprewrite.RtpRewriter
    rtx: Any  # sfu.rtx.RtxStream | None
    waiting_for_keyframe: bool
    paused: bool
    out_ssrc: int
    # Extended (32-bit, with rollover counts) last sequence numbers sent on the media and RTX
    # SSRCs: SRTP's index, which a new sending session must be warmed up to (warm_sequences).
    extended_seq: int = 0
    rtx_extended_seq: int = 0
    # Sender Reports sent for it: SRTCP's index on that SSRC, which a new sender must pass.
    sender_reports: int = 0
    padding_sent: int = 0  # bytes of probe padding sent (congestion control measures them)


@dataclass
class WorkerCounters:
    """A worker's totals since it started (reports carry them; main adds the differences)."""

    packets_out: int = 0
    red_packets: int = 0  # of packets_out, to subscribers that negotiated RED
    bytes_out: int = 0  # copies counted at their input size, like `Stats.bytes_out`
    retransmissions: int = 0
    nack_limited: int = 0
    send_failed: int = 0
    sender_reports: int = 0
    at: float = 0.0  # time.monotonic() of the report (one clock for every process of the host)


def packet_header(track_key: int) -> bytes:
    return bytes((PACKET,)) + track_key.to_bytes(4, "big")


def encode_control(kind: str, *args: object) -> bytes:
    if kind not in CONTROL_KINDS and kind not in REPLY_KINDS:
        raise WireError(f"unknown control message {kind!r}")
    return bytes((CONTROL,)) + pickle.dumps((kind, *args), protocol=pickle.HIGHEST_PROTOCOL)


def decode(datagram: bytes, kinds: frozenset[str]) -> tuple[int, bytes] | tuple[Any, ...]:
    """(track key, RTP packet) for a media packet; the control tuple for one of `kinds`."""
    if len(datagram) > HEADER and datagram[0] == PACKET:
        return int.from_bytes(datagram[1:HEADER], "big"), datagram[HEADER:]
    if len(datagram) > 1 and datagram[0] == CONTROL:
        try:
            message = pickle.loads(datagram[1:])
        except Exception as exc:
            raise WireError(f"undecodable control message: {exc}") from exc
        if not isinstance(message, tuple) or not message or message[0] not in kinds:
            raise WireError("unknown control message")
        return message
    raise WireError("neither a media packet nor a control message")


def unwrap(extended: int, seq: int) -> int:
    """The extended sequence number of 16-bit `seq` sent after `extended` (forward within half
    the space; a packet older than that is taken as late and leaves the index where it is)."""
    delta = (seq - extended) & 0xFFFF
    return extended + delta if delta < 0x8000 else extended


def warm_sequences(target: int) -> list[int]:
    """16-bit sequence numbers that, protected in order by a fresh libsrtp sending stream,
    leave its packet index at `target` - 1, so that `target` goes out with the rollover count
    the receiver expects: libsrtp takes a new stream's first index as is (below 2^16) and
    estimates each later one within half the sequence space of the last."""
    if target <= 0:
        return []
    return [p & 0xFFFF for p in range((target - 1) % 0x4000, target, 0x4000)]


@dataclass
class Shares:
    """Which worker forwards to which subscriber: a new subscriber goes to the live worker with
    the fewest; all of one subscriber's down-tracks go to one worker (one SRTP session)."""

    workers: int
    dead: set[int] = field(default_factory=set)
    # Started but not heard from yet (a worker takes seconds to import on a busy host).
    starting: set[int] = field(default_factory=set)
    owner: dict[str, int] = field(default_factory=dict)

    def assign(self, subscriber: str) -> int | None:
        """The subscriber's worker (chosen now if it has none); None: no worker is alive."""
        current = self.owner.get(subscriber)
        if current is not None:
            return current
        load = self.loads()
        live = [w for w in range(self.workers) if w not in self.dead and w not in self.starting]
        if not live:
            return None
        chosen = min(live, key=lambda w: (load[w], w))
        self.owner[subscriber] = chosen
        return chosen

    def started(self, worker: int) -> None:
        self.starting.discard(worker)

    def release(self, subscriber: str) -> int | None:
        return self.owner.pop(subscriber, None)

    def fail(self, worker: int) -> list[str]:
        """The worker is gone: its subscribers, now owned by nobody."""
        self.dead.add(worker)
        self.starting.discard(worker)
        lost = [s for s, w in self.owner.items() if w == worker]
        for subscriber in lost:
            del self.owner[subscriber]
        return lost

    def loads(self) -> list[int]:
        load = [0] * self.workers
        for worker in self.owner.values():
            load[worker] += 1
        return load


def split(items: Iterable[Any], parts: int) -> list[list[Any]]:
    """Round-robin `items` into `parts` lists (the benchmark's subscribers over its workers)."""
    out: list[list[Any]] = [[] for _ in range(parts)]
    for i, item in enumerate(items):
        out[i % parts].append(item)
    return out
