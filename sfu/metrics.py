"""Prometheus metrics (`GET /metrics`): live state read at scrape time, plus event histograms.

Room, participant and track counts and the forwarding counters are read from the `RoomRegistry`
and `Stats` when Prometheus scrapes, so the hot path keeps its plain integer counters. Joins,
join latency, event-loop lag and sampled forwarding time are process-wide instruments fed as
things happen. No label ever carries an identity, an address or a room name: room-level numbers
come from the admin API.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator, Mapping, Sized
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sfu import looptrace, sockbuf
from sfu.clock import on_tick
from sfu.qualitymetrics import quality_metrics
from sfu.stats import DropReason, Stats
from sfu.tracemetrics import TraceCollector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

# Join reasons kept as label values; anything else becomes "other", so a caller's typo or a new
# code can never grow the series count. Accepted joins are "join" or "resume"; refusals use the
# protocol error code (PROTOCOL 2.8), "timeout" for no join in time.
JOIN_REASONS = frozenset(
    {
        "join",
        "resume",
        "redirect",  # a cluster node sent the join to the room's node (docs/cluster.md)
        "unauthorized",
        "forbidden",
        "room_full",
        "limit_exceeded",
        "invalid_message",
        "not_found",
        "conflict",
        "rate_limited",
        "server_full",
        "internal",
        "timeout",
    }
)
WEBHOOK_RESULTS = ("delivered", "failed", "dropped")

# One input packet in FORWARD_SAMPLE_MASK + 1 has its forwarding timed.
FORWARD_SAMPLE_MASK = 63
LOOP_LAG_INTERVAL = 0.25

# Created unregistered: each server's registry (build_registry) adds them next to its own state
# collector, so several servers in one test process never clash on the default registry.
JOINS = Counter(
    "keyroom_joins",
    "Join attempts by result (accepted, refused) and reason",
    ["result", "reason"],
    registry=None,
)
JOIN_SECONDS = Histogram(
    "keyroom_join_seconds",
    "Time from the join frame to the joined reply or the refusal",
    ["result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=None,
)
LOOP_LAG_SECONDS = Histogram(
    "keyroom_event_loop_lag_seconds",
    f"How late a {LOOP_LAG_INTERVAL:g} s asyncio sleep wakes up",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=None,
)
FORWARD_SECONDS = Histogram(
    "keyroom_forward_seconds",
    f"Time to forward one input RTP packet to every subscriber"
    f" (1 packet in {FORWARD_SAMPLE_MASK + 1} is timed)",
    buckets=(1e-5, 2e-5, 3e-5, 5e-5, 7e-5, 1e-4, 1.4e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.02),
    registry=None,
)
RECEIVE_TO_SEND_SECONDS = Histogram(
    "keyroom_receive_to_send_seconds",
    "From the kernel's receive timestamp of an input RTP datagram to the sendmmsg of its"
    f" copies (shared port, compiled receive; 1 datagram in {FORWARD_SAMPLE_MASK + 1})",
    buckets=(
        *(1e-5, 2e-5, 3e-5, 5e-5, 7e-5, 1e-4, 1.4e-4, 2e-4, 3e-4, 5e-4, 7e-4, 1e-3, 1.4e-3),
        *(2e-3, 3e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1),
    ),
    registry=None,
)
GC_PAUSE_SECONDS = Histogram(
    "keyroom_gc_pause_seconds",
    "How long each garbage collection stopped the event loop, by generation (2: full)",
    ["generation"],
    buckets=(1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5),
    registry=None,
)
WEBHOOKS = Counter(
    "keyroom_webhooks",
    "Webhook POSTs: delivered, failed after every retry, or dropped from a full queue",
    ["result"],
    registry=None,
)
CONNECTIONS_REFUSED = Counter(
    "keyroom_connections_refused",
    "WebSocket upgrades refused before any state: too many sockets not yet joined from the"
    " client's address (per_ip) or in all (total)",
    ["reason"],
    registry=None,
)
SECURITY_ALERTS = Counter(
    "keyroom_security_alerts",
    "Security alerts raised (signaling/monitor.py), by kind and severity; a summary of a window"
    " counts once",
    ["kind", "severity"],
    registry=None,
)
CONNECTION_REFUSAL_REASONS = ("per_ip", "total")
for _reason in CONNECTION_REFUSAL_REASONS:
    CONNECTIONS_REFUSED.labels(_reason)
for _result in ("accepted", "refused"):
    JOIN_SECONDS.labels(_result)
for _result in WEBHOOK_RESULTS:
    WEBHOOKS.labels(_result)


class _Track(Protocol):
    @property
    def bound(self) -> bool: ...

    @property
    def kind(self) -> str: ...


class _Participant(Protocol):
    @property
    def tracks(self) -> Mapping[str, _Track]: ...

    @property
    def subscriptions(self) -> Mapping[str, object]: ...

    @property
    def subscriber_sections(self) -> int: ...

    def connection_quality(self) -> Mapping[str, object]: ...


class _Room(Protocol):
    @property
    def participants(self) -> Mapping[str, _Participant]: ...


class Rooms(Protocol):
    """What the collector reads of the room registry (sfu/room.py sits above this module: the
    forwarding path records its timings here)."""

    @property
    def rooms(self) -> Mapping[str, _Room]: ...


def record_join(accepted: bool, reason: str, seconds: float) -> None:
    """Count one join attempt and its latency (called by the signaling session)."""
    result = "accepted" if accepted else "refused"
    JOINS.labels(result, reason if reason in JOIN_REASONS else "other").inc()
    JOIN_SECONDS.labels(result).observe(seconds)


def record_connection_refused(reason: str) -> None:
    CONNECTIONS_REFUSED.labels(reason).inc()


def record_security_alert(kind: str, severity: str) -> None:
    SECURITY_ALERTS.labels(kind, severity).inc()


def record_webhook(result: str) -> None:
    WEBHOOKS.labels(result).inc()


def forward_timer_start(packet_count: int) -> int:
    """A start time for 1 packet in 64 (by the caller's running count), else 0: no clock read."""
    return 0 if packet_count & FORWARD_SAMPLE_MASK else time.perf_counter_ns()


def forward_timer_stop(started: int) -> None:
    if started:
        FORWARD_SECONDS.observe((time.perf_counter_ns() - started) * 1e-9)


async def sample_loop_lag(interval: float = LOOP_LAG_INTERVAL) -> None:
    """Run until cancelled: a busy loop shows up as a late wake-up. Wakes on the periodic
    timers' grid (sfu/clock.py), in the same loop pass as theirs."""
    loop = asyncio.get_running_loop()
    while True:
        due = on_tick(loop.time() + interval)
        await asyncio.sleep(due - loop.time())
        LOOP_LAG_SECONDS.observe(max(loop.time() - due, 0.0))


class StateCollector(Collector):
    """Reads rooms and forwarding counters at scrape time (on the event loop, so consistently)."""

    def __init__(self, rooms: Rooms, stats: Stats, pending: Sized | None = None) -> None:
        self.rooms = rooms
        self.stats = stats
        self.pending = pending

    def collect(self) -> Iterator[Metric]:
        yield from self._rooms()
        if self.pending is not None:
            yield GaugeMetricFamily(
                "keyroom_pending_connections",
                "WebSocket connections open but not yet joined (server.max_pending caps them)",
                len(self.pending),
            )
        yield from self._forwarding()
        yield from self._media_port()
        yield from quality_metrics(
            p.connection_quality()
            for room in self.rooms.rooms.values()
            for p in room.participants.values()
        )

    def _rooms(self) -> Iterator[Metric]:
        participants = published_audio = published_video = subscribed = sections = 0
        for room in self.rooms.rooms.values():
            for participant in room.participants.values():
                participants += 1
                subscribed += len(participant.subscriptions)
                sections += participant.subscriber_sections
                for track in participant.tracks.values():
                    if not track.bound:
                        continue
                    if track.kind == "video":
                        published_video += 1
                    else:
                        published_audio += 1
        yield GaugeMetricFamily("keyroom_rooms", "Open rooms", value=len(self.rooms.rooms))
        yield GaugeMetricFamily(
            "keyroom_participants", "Participants in all rooms, hidden ones included", participants
        )
        published = GaugeMetricFamily(
            "keyroom_published_tracks", "Negotiated published tracks", labels=["kind"]
        )
        published.add_metric(["audio"], published_audio)
        published.add_metric(["video"], published_video)
        yield published
        yield GaugeMetricFamily(
            "keyroom_subscribed_tracks", "Subscriptions (one per track a participant receives)",
            subscribed,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "keyroom_subscriber_media_sections",
            "Media sections of all subscriber connections (free ones for reuse included)",
            sections,
        )

    def _forwarding(self) -> Iterator[Metric]:
        stats = self.stats
        for name, doc, value in (
            ("keyroom_rtp_packets_in", "RTP packets received from publishers and accepted",
             stats.packets_in),
            ("keyroom_rtp_bytes_in", "Bytes of the accepted RTP packets (after SRTP)",
             stats.bytes_in),
            ("keyroom_rtp_packets_out", "RTP packets forwarded to subscribers (one per copy)",
             stats.packets_out),
            ("keyroom_rtp_bytes_out", "Bytes of the forwarded RTP packets, as received",
             stats.bytes_out),
            ("keyroom_keyframe_requests", "Keyframe requests (PLI) sent to publishers",
             stats.keyframe_requests),
            ("keyroom_rtp_retransmissions", "Packets resent from the cache on a NACK",
             stats.retransmissions),
            ("keyroom_rtp_uplink_nacks", "Sequence numbers NACKed to publishers (repeats too)",
             stats.uplink_nacks),
            ("keyroom_rtp_rtx_received", "Publisher RTX packets unwrapped and forwarded once",
             stats.rtx_received),
            ("keyroom_rtp_red_received",
             "Publisher RED audio packets (as-is to RED subscribers, unwrapped for others)",
             stats.red_received),
            ("keyroom_rtcp_transport_feedback",
             "Subscribers' transport-wide congestion control feedback messages used",
             stats.transport_feedback),
            ("keyroom_subscriber_sections_reused",
             "Subscriber media sections given to a new track after their old one went away",
             stats.sections_reused),
        ):  # fmt: skip
            yield CounterMetricFamily(name, doc, value=value)
        dropped = CounterMetricFamily(
            "keyroom_rtp_packets_dropped", "Packets dropped, by reason", labels=["reason"]
        )
        for reason in DropReason:
            dropped.add_metric([reason.value], stats.dropped[reason.value])
        yield dropped

    def _media_port(self) -> Iterator[Metric]:
        """The shared port's batched receive and fan-out, and the fan-out workers."""
        stats = self.stats
        for name, doc, value in (
            ("keyroom_fanout_sendmmsg_calls",
             "sendmmsg calls of the batched fan-out (rtc.udp_port with the compiled path)",
             stats.fanout_calls),
            ("keyroom_fanout_batched_packets", "RTP packets the batched fan-out sent",
             stats.fanout_packets),
            ("keyroom_fanout_compiled_copies",
             "RTP copies the compiled per-copy loop rewrote and queued (steady down-tracks)",
             stats.fanout_compiled_copies),
            ("keyroom_fanout_compiled_red_copies",
             "Of those, RED audio copies to subscribers that negotiated RED",
             stats.fanout_compiled_red_copies),
            ("keyroom_fanout_worker_packets", "RTP packets the fan-out workers sent",
             stats.fanout_worker_packets),
            ("keyroom_fanout_worker_red_packets",
             "Of those, copies to subscribers that negotiated RED audio",
             stats.fanout_worker_red_packets),
            ("keyroom_fanout_worker_failures", "Fan-out workers that exited while in use",
             stats.fanout_worker_failures),
            ("keyroom_shared_port_recvmmsg_calls",
             "recvmmsg calls of the shared port's batched receive that returned datagrams",
             stats.receive_calls),
            ("keyroom_shared_port_received_datagrams", "Datagrams those recvmmsg calls returned",
             stats.received_datagrams),
        ):  # fmt: skip
            yield CounterMetricFamily(name, doc, value=value)
        yield from _socket_buffers(stats.udp_sockets)
        yield GaugeMetricFamily(
            "keyroom_fanout_worker_down_tracks",
            "Down-tracks the fan-out workers send now (rtc.fanout_workers)",
            value=stats.fanout_worker_down_tracks,
        )


def _socket_buffers(sockets: list[socket.socket]) -> Iterator[Metric]:
    """The shared port's receive buffers as the kernel reports them now (SO_MEMINFO)."""
    queued = size = drops = 0
    for sock in sockets:
        info = sockbuf.meminfo(sock)
        if info is not None:
            queued, size, drops = queued + info[0], size + info[1], drops + info[2]
    yield CounterMetricFamily(
        "keyroom_shared_port_receive_overflows",
        "Datagrams the kernel dropped at the shared port because its receive buffer was full",
        value=drops,
    )
    yield GaugeMetricFamily(
        "keyroom_shared_port_receive_buffer_bytes",
        "The shared port's receive buffer as the kernel sized it (rtc.udp_receive_buffer)",
        value=size,
    )
    yield GaugeMetricFamily(
        "keyroom_shared_port_receive_queued_bytes",
        "Bytes waiting in the shared port's receive buffer at the scrape",
        value=queued,
    )


def build_registry(rooms: Rooms, stats: Stats, pending: Sized | None = None) -> CollectorRegistry:
    """One server's registry: its live state plus the process-wide instruments."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StateCollector(rooms, stats, pending))
    instruments = (
        JOINS, JOIN_SECONDS, LOOP_LAG_SECONDS, FORWARD_SECONDS, RECEIVE_TO_SEND_SECONDS,
        GC_PAUSE_SECONDS, WEBHOOKS, SECURITY_ALERTS,
    )  # fmt: skip
    for metric in (*instruments, CONNECTIONS_REFUSED):
        registry.register(metric)
    if looptrace.active is not None:
        registry.register(TraceCollector(looptrace.active))
    return registry
