"""A participant's RTCP, both directions, as a state machine with `now` passed in.

Towards the publisher: Receiver Reports and a REMB once a second (the stock receiver that would
send them is disabled; without them a browser's congestion control gets no feedback), and
keyframe requests (PLI), at most one per track per `rtc.keyframe_interval`, a suppressed one sent
when its window ends. Towards the subscriber: the publishers' Sender Reports translated into each
down-track's SSRC and timestamp space once a second (aiortc's own SR loop is disabled: it would
report zero packets at NTP 0), so subscribers can synchronise audio and video.

From the subscriber: PLI and FIR ask the down-track's own up-track for a keyframe, NACKs are
answered from the down-track's packet cache, report blocks give RTT (sfu/rtt.py), loss and jitter,
REMB the subscriber's bandwidth estimate (sfu/quality.py, evaluated every two seconds).

Uplink loss: the ingress tracks gaps (sfu/uplinknack.py); `uplink_gap` arms the NACK timer, and
each firing NACKs what is due, retrying every RTT (the subscriber PC's, the same client's path).

No I/O: packets to send wait in `to_publisher` / `to_subscriber` until the owner drains them into
its transports' sinks; the owner drives `handle_timer(now)` at `next_deadline()` (sfu/clock.py).
Congestion control would live here, fed the same inputs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from sfu import clock
from sfu import quality as quality_levels
from sfu.bitratecap import BitrateCap
from sfu.clock import Deadlines, on_tick
from sfu.congestion import Congestion
from sfu.dynacast import Dynacast
from sfu.forwarder import DownTrack, PublishedTrack, Sink
from sfu.quality import ConnectionQuality
from sfu.retransmit import trace
from sfu.rtcp import (
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    RtcpMessage,
    SenderReport,
    TransportFeedback,
    build_nack,
    build_pli,
    build_remb,
    build_rr,
    parse_rtcp,
)
from sfu.rtp import MalformedPacket
from sfu.rtt import RttEstimator
from sfu.simulcast import layer_reports, on_layer_sender_report
from sfu.stats import DropReason, Stats
from sfu.twcc import TransportSequence, parse_feedback
from sfu.uplinknack import FIRST_DELAY, UplinkNacks, due_nacks
from sfu.uplinknack import next_deadline as nacks_deadline

PUBLISHER_REPORT_INTERVAL = 1.0
SENDER_REPORT_INTERVAL = 1.0
# REMB sent when the room sets no max_video_bitrate: generous, so congestion control, not
# keyroom, decides; it only has to be present for a browser to leave its start bitrate.
DEFAULT_VIDEO_BITRATE_CAP = 4_000_000
# An RR carries at most 31 report blocks.
MAX_REPORT_BLOCKS = 31

# Deadline keys: (what, track sid or "").
_REPORTS = ("reports", "")
_SENDER_REPORTS = ("sender_reports", "")
_KEYFRAME = "keyframe"
_UPLINK_NACKS = ("uplink_nacks", "")
_QUALITY = ("quality", "")
_PADDING_END = ("padding_end", "")
# Keyframe requests at DEBUG: the benchmark's timeline (loadtest/simulcastbench.py).
log = logging.getLogger(__name__)


class Feedback:
    def __init__(
        self,
        *,
        tracks: Mapping[str, PublishedTrack],
        subscriptions: Mapping[str, DownTrack],
        stats: Stats,
        max_video_bitrate: Callable[[], int],
        rtcp_ssrc: int,
        uplink: Mapping[int, UplinkNacks] | None = None,
        phase: float = 0.0,
    ) -> None:
        # Where in the tick its periodic reports fall (sfu/clock.py `Phases`).
        self.phase = phase
        # The participant's own dicts, read live.
        self._tracks = tracks
        self._subscriptions = subscriptions
        self.stats = stats
        # The room's current per-track cap (0: none), read at each report.
        self._max_video_bitrate = max_video_bitrate
        # SSRC of the feedback keyroom sends to this publisher.
        self.rtcp_ssrc = rtcp_ssrc
        self._deadlines: Deadlines[tuple[str, str]] = Deadlines()
        self._down_by_ssrc: dict[int, DownTrack] = {}
        self._previous: dict[str, tuple[float, int]] = {}
        # The ingress's uplink loss trackers by media SSRC (read live).
        self._uplink: Mapping[int, UplinkNacks] = uplink if uplink is not None else {}
        self.rtt = RttEstimator()
        self.quality = ConnectionQuality()
        # New connection-quality levels for the owner to announce.
        self.quality_changes: list[str] = []
        # (packet, is a keyframe request) for the publisher PC; packets for the subscriber PC.
        self.to_publisher: list[tuple[bytes, bool]] = []
        self.to_subscriber: list[bytes] = []
        # max_video_bitrate enforced beyond REMB: (track, action, bitrate, limit) to act on.
        self.bitrate_cap = BitrateCap()
        self.bitrate_actions: list[tuple[PublishedTrack, str, int, int]] = []
        # Congestion control towards this subscriber, dynacast for this publisher's tracks;
        # `events` are signaling messages to this participant, sent by the owner.
        self.congestion = Congestion(subscriptions)
        self.congestion.label = f"{rtcp_ssrc:08x}"
        self.dynacast = Dynacast()
        self.events: list[dict[str, object]] = []
        # The subscriber transport's transport-cc sequence numbers, once negotiated.
        self.transport_sequence: TransportSequence | None = None

    # -- clock ----------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self._deadlines.next()

    def handle_timer(self, now: float) -> None:
        for key in self._deadlines.pop_due(now):
            if key == _REPORTS:
                self._publisher_reports(now)
                self._periodic(_REPORTS, now + PUBLISHER_REPORT_INTERVAL)
            elif key == _SENDER_REPORTS:
                self._sender_reports(now)
                for down in self.congestion.tick(now):
                    down.track.request_keyframe()
                self._periodic(_SENDER_REPORTS, now + SENDER_REPORT_INTERVAL)
                padding_end = self.congestion.padding_end()
                if padding_end is not None:
                    self._deadlines.set(_PADDING_END, padding_end)
            elif key == _PADDING_END:
                self.congestion.end_padding(now)
            elif key == _UPLINK_NACKS:
                self._uplink_nacks(now)
            elif key == _QUALITY:
                self._evaluate_quality(now)
            else:
                track = self._tracks.get(key[1])
                if track is not None and track.throttle.due(now):
                    self._send_pli(track)

    def start_publisher_reports(self, now: float) -> None:
        """The publisher PC is negotiated: report once a second from now on."""
        if _REPORTS not in self._deadlines:
            self._periodic(_REPORTS, now + PUBLISHER_REPORT_INTERVAL)
        self._start_quality(now)

    def start_sender_reports(self, now: float) -> None:
        """The subscriber PC has its transport: translate Sender Reports once a second."""
        if _SENDER_REPORTS not in self._deadlines:
            self._periodic(_SENDER_REPORTS, now + SENDER_REPORT_INTERVAL)
        self._start_quality(now)

    def _start_quality(self, now: float) -> None:
        if _QUALITY not in self._deadlines:
            self._periodic(_QUALITY, now + quality_levels.INTERVAL)

    def _evaluate_quality(self, now: float) -> None:
        changed = self.quality.evaluate(self.rtt.rtt)
        if changed is not None:
            self.quality_changes.append(changed)
        self._periodic(_QUALITY, now + quality_levels.INTERVAL)

    def _periodic(self, key: tuple[str, str], when: float) -> None:
        """Set a periodic report's next deadline: on the tick grid, at this owner's phase."""
        self._deadlines.set(key, on_tick(when, self.phase))

    def stop(self) -> None:
        self._deadlines = Deadlines()

    def drain(self, publisher: Sink | None, subscriber: Sink | None) -> None:
        """Hand the queued packets to the owner's sinks; None (a transport not up yet) drops
        them, as stale feedback is worth nothing later."""
        for packet, keyframe_request in self.to_publisher:
            if publisher is not None and publisher.send(packet) and keyframe_request:
                self.stats.keyframe_requests += 1
        self.to_publisher.clear()
        if subscriber is not None:
            for packet in self.to_subscriber:
                subscriber.send(packet)
        self.to_subscriber.clear()

    # -- publisher direction --------------------------------------------------------------------

    def request_keyframe(self, track: PublishedTrack, now: float) -> None:
        """Ask the publisher for a keyframe, at most once per keyframe interval per track."""
        if track.kind != "video" or track.sid not in self._tracks:
            return
        if track.throttle.request(now):
            self._send_pli(track)
            return
        due = track.throttle.next_due()
        key = (_KEYFRAME, track.sid)
        if due is not None and key not in self._deadlines:
            self._deadlines.set(key, due)

    def forget_track(self, track: PublishedTrack) -> None:
        self.bitrate_cap.forget(track.sid)
        self._deadlines.clear((_KEYFRAME, track.sid))
        self._previous.pop(track.sid, None)
        self.quality.forget(sid=track.sid)

    def uplink_gap(self, now: float) -> None:
        """The ingress saw new uplink loss: NACK it shortly (a reordered packet may yet come)."""
        due = self._deadlines.get(_UPLINK_NACKS)
        if due is None or due > now + FIRST_DELAY:
            self._deadlines.set(_UPLINK_NACKS, now + FIRST_DELAY)

    def _uplink_nacks(self, now: float) -> None:
        for ssrc, lost in due_nacks(self._uplink, now, self.rtt.rtt):
            # A NACK message is bounded by MAX_MISSING entries' worth of sequence numbers.
            self.to_publisher.append((build_nack(self.rtcp_ssrc, ssrc, lost), False))
            self.stats.uplink_nacks += len(lost)
            if trace.isEnabledFor(logging.DEBUG):
                repair_rtt = self._uplink[ssrc].repair_rtt
                trace.debug(
                    "upnack wall=%.3f ssrc=%d rtt=%s repair_rtt=%s seqs=%s",
                    time.time(), ssrc, self.rtt.rtt, repair_rtt, lost,
                )  # fmt: skip
        due = nacks_deadline(self._uplink.values(), now)
        if due is not None:
            self._deadlines.set(_UPLINK_NACKS, due)

    def on_publisher_rtcp(self, data: bytes, now: float) -> None:
        for message in self._parse(data):
            if isinstance(message, SenderReport):
                track = next((t for t in self._tracks.values() if t.ssrc == message.ssrc), None)
                if track is not None:
                    track.on_sender_report(message.ntp, message.rtp_ts, now)
                else:
                    on_layer_sender_report(self._tracks.values(), message, now)

    def _send_pli(self, track: PublishedTrack) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("pli %s t=%.3f ssrcs=%s", track.sid, clock.now(), track.keyframe_ssrcs())
        for ssrc in track.keyframe_ssrcs():
            self.to_publisher.append((build_pli(self.rtcp_ssrc, ssrc), True))

    def _publisher_reports(self, now: float) -> None:
        """Receiver Reports for every track, and a REMB capping video bitrate. REMB carries one
        bitrate for all listed SSRCs, so the cap sent is the per-track limit times the number of
        video tracks."""
        blocks: list[ReportBlock] = []
        video_ssrcs: list[int] = []
        video_tracks = 0
        for track in self._tracks.values():
            if track.layers:
                video_tracks += 1
                bitrate = layer_reports(track.layers, now, blocks, video_ssrcs)
                self.stats.bitrate_in += bitrate - track.bitrate
                track.bitrate = bitrate
                self._cap(track, now)
                continue
            if track.ssrc is None or not track.receive.started:
                continue
            block = track.receive.report_block(track.ssrc, now)
            blocks.append(block)
            self.quality.on_up_block(track.sid, block.fraction_lost)
            then, octets = self._previous.get(track.sid, (now, track.counters.bytes_in))
            if now > then:
                bitrate = int((track.counters.bytes_in - octets) * 8 / (now - then))
                self.stats.bitrate_in += bitrate - track.bitrate
                track.bitrate = bitrate
            self._previous[track.sid] = (now, track.counters.bytes_in)
            if track.kind == "video":
                video_tracks += 1
                video_ssrcs.append(track.ssrc)
                self._cap(track, now)
        self.events += self.dynacast.update(self._tracks.values(), now)
        if not blocks:
            return
        self.to_publisher.append((build_rr(self.rtcp_ssrc, blocks[:MAX_REPORT_BLOCKS]), False))
        if video_ssrcs:
            per_track = self._max_video_bitrate() or DEFAULT_VIDEO_BITRATE_CAP
            remb = build_remb(self.rtcp_ssrc, per_track * video_tracks, video_ssrcs)
            self.to_publisher.append((remb, False))

    def _cap(self, track: PublishedTrack, now: float) -> None:
        limit = self._max_video_bitrate()
        action = self.bitrate_cap.observe(track.sid, track.bitrate, limit, now)
        if action is not None:
            self.bitrate_actions.append((track, action, track.bitrate, limit))

    # -- subscriber direction -------------------------------------------------------------------

    def watch(self, down: DownTrack) -> None:
        """A down-track is configured: its subscriber's RTCP names it by `out_ssrc`."""
        if down.out_ssrc is not None:
            self._down_by_ssrc[down.out_ssrc] = down

    def unwatch(self, down: DownTrack) -> None:
        # A recycled section keeps its sender SSRC: the SSRC may name a newer down-track now.
        if down.out_ssrc is not None and self._down_by_ssrc.get(down.out_ssrc) is down:
            del self._down_by_ssrc[down.out_ssrc]
            self.quality.forget(ssrc=down.out_ssrc)

    def on_subscriber_rtcp(self, data: bytes, now: float) -> None:
        for message in self._parse(data):
            if isinstance(message, Pli):
                self._keyframe_for(message.media_ssrc)
            elif isinstance(message, Fir):
                for ssrc, _seqnr in message.entries:
                    self._keyframe_for(ssrc)
            elif isinstance(message, Nack):
                down = self._down_by_ssrc.get(message.media_ssrc)
                if down is not None:
                    sent, refused = down.retransmit(message.lost, now, self.rtt.rtt)
                    self.stats.retransmissions += sent
                    self.stats.dropped[DropReason.NACK_LIMITED.value] += refused
            elif isinstance(message, ReceiverReport | SenderReport):
                self._report_blocks(message.reports, now)
                for block in message.reports:
                    self.congestion.on_report_block(block, now)
            elif isinstance(message, Remb):
                self.quality.on_bandwidth(message.bitrate)
                self.congestion.on_remb(message.bitrate, now)
            elif isinstance(message, TransportFeedback):
                self._transport_feedback(message, now)
        for down in self.congestion.react(now):
            down.track.request_keyframe()

    def _transport_feedback(self, message: TransportFeedback, now: float) -> None:
        sequence = self.transport_sequence
        if sequence is None:
            return  # not negotiated: nothing keyroom sent is described
        try:
            report = parse_feedback(message.fci)
        except MalformedPacket:
            self.stats.drop(DropReason.BAD_FEEDBACK)
            return
        self.stats.transport_feedback += 1
        self.congestion.on_transport_feedback(sequence.resolve(report), now)
        estimate = self.congestion.estimator.delay_based
        if estimate is not None:
            self.quality.on_bandwidth(estimate)

    def _report_blocks(self, blocks: tuple[ReportBlock, ...], now: float) -> None:
        """What the subscriber says about the streams keyroom sends it."""
        for block in blocks:
            down = self._down_by_ssrc.get(block.ssrc)
            if down is None:
                continue  # a stream this subscriber is not sent: nothing to learn
            sample = self.rtt.on_block(block.lsr, block.dlsr, now)
            if sample is not None:
                self.congestion.on_rtt(sample, now - sample - block.dlsr / 65536, now)
            codec = down.track.codec
            clock_rate = codec.clock_rate if codec else 90000
            self.quality.on_down_block(block.ssrc, block.fraction_lost, block.jitter, clock_rate)

    def _keyframe_for(self, out_ssrc: int) -> None:
        if trace.isEnabledFor(logging.DEBUG):
            trace.debug("subpli wall=%.3f ssrc=%d", time.time(), out_ssrc)
        down = self._down_by_ssrc.get(out_ssrc)
        if down is not None:
            down.track.request_keyframe()

    def _sender_reports(self, now: float) -> None:
        for down in self._subscriptions.values():
            # A fan-out worker's stream: the worker reports it (one SRTCP index per SSRC).
            report = down.sender_report() if down.remote is None else None
            if report is not None:
                self.to_subscriber.append(report)
                # The SR carries the publisher's NTP time: remember when it left, for RTT.
                self.rtt.sent(int.from_bytes(report[8:16], "big"), now)

    def _parse(self, data: bytes) -> list[RtcpMessage]:
        try:
            return parse_rtcp(data)
        except MalformedPacket:
            self.stats.drop(DropReason.MALFORMED)
            return []
