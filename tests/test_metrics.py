"""`/metrics`: Prometheus text that parses, counts what clients sent, and can require a token."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiortc import RTCRtpReceiver, RTCRtpSender
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sfu import metrics
from sfu.config import ConfigError, load_config
from sfu.room import RoomRegistry
from sfu.stats import DropReason, Stats
from signaling.client import KeyroomClient
from signaling.media import SyntheticAudioTrack
from tests.conftest import ServerProcess, eventually, start_server, stop_server

TOKEN = "metrics-bearer-token-0123456789"
DEV = {"server": {"dev": True}}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(server: ServerProcess, token: str | None = None) -> Samples:
    request = urllib.request.Request(server.http_url + "/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(response.read().decode())


def collect(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


def forward_count() -> float:
    registry = CollectorRegistry()
    registry.register(metrics.FORWARD_SECONDS)
    return collect(registry)[("keyroom_forward_seconds_count", ())]


async def outbound_packets(sender: RTCRtpSender) -> int:
    report = await sender.getStats()
    return sum(s.packetsSent for s in report.values() if s.type == "outbound-rtp")


async def inbound_packets(receiver: RTCRtpReceiver) -> int:
    report = await receiver.getStats()
    return sum(s.packetsReceived for s in report.values() if s.type == "inbound-rtp")


async def test_counters_match_what_clients_sent_and_received(server: ServerProcess) -> None:
    publisher = KeyroomClient(server.ws_url, server.token("pub"))
    viewers = [KeyroomClient(server.ws_url, server.token(f"viewer{i}")) for i in range(2)]
    for client in (publisher, *viewers):
        await client.connect()
    try:
        track = SyntheticAudioTrack()
        await publisher.publish(track, source="microphone")
        for viewer in viewers:
            await viewer.next_track(timeout=10)
        # 3 s of audio (150 packets) taken in and forwarded to both viewers.
        await eventually(
            lambda: scrape(server)[("keyroom_rtp_packets_out_total", ())] >= 2 * 150, timeout=10
        )

        live = scrape(server)
        assert live[("keyroom_rooms", ())] == 1
        assert live[("keyroom_participants", ())] == 3
        assert live[("keyroom_published_tracks", (("kind", "audio"),))] == 1
        assert live[("keyroom_published_tracks", (("kind", "video"),))] == 0
        assert live[("keyroom_subscribed_tracks", ())] == 2
        assert live[("keyroom_subscriber_media_sections", ())] == 2

        # Stop the source so every counter stops moving, then compare both ends.
        track.stop()
        await asyncio.sleep(1)  # nothing announces the last packet's arrival at each end
        assert publisher.publisher_pc is not None
        sent = sum([await outbound_packets(s) for s in publisher.publisher_pc.getSenders()])
        received = 0
        for viewer in viewers:
            assert viewer.subscriber_pc is not None
            for receiver in viewer.subscriber_pc.getReceivers():
                received += await inbound_packets(receiver)
        final = scrape(server)
    finally:
        for client in (publisher, *viewers):
            await client.leave()

    packets_in = final[("keyroom_rtp_packets_in_total", ())]
    packets_out = final[("keyroom_rtp_packets_out_total", ())]
    assert sent > 100
    assert packets_in == pytest.approx(sent, rel=0.01)
    assert packets_out == pytest.approx(received, rel=0.01)
    assert packets_out > 1.5 * packets_in  # two subscribers: two copies of nearly every packet
    assert final[("keyroom_rtp_bytes_in_total", ())] > 20 * packets_in
    assert final[("keyroom_rtp_bytes_out_total", ())] > 20 * packets_out
    for reason in DropReason:
        assert (("keyroom_rtp_packets_dropped_total", (("reason", reason.value),))) in final
    # 1 packet in 64 is timed.
    timed = final[("keyroom_forward_seconds_count", ())]
    assert timed == packets_in // (metrics.FORWARD_SAMPLE_MASK + 1)
    assert final[("keyroom_event_loop_lag_seconds_count", ())] > 0
    # The debug counters and the metrics are the same numbers.
    stats = server.runtime()["stats"]
    assert (stats["packets_in"], stats["packets_out"]) == (packets_in, packets_out)
    assert scrape(server)[("keyroom_participants", ())] == 0


async def test_bearer_token_is_required_when_configured(tmp_path: Path) -> None:
    config = tmp_path / "keyroom.toml"
    config.write_text(f'[metrics]\nbearer_token = "{TOKEN}"\n')
    server = start_server(tmp_path, "--config", str(config))
    try:
        for token in (None, "wrong-token-0123456789", TOKEN + "x"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                scrape(server, token)
            assert refused.value.code == 401
            assert refused.value.headers["WWW-Authenticate"] == "Bearer"
        assert scrape(server, TOKEN)[("keyroom_rooms", ())] == 0
    finally:
        stop_server(server)


def test_open_without_a_token(server: ServerProcess) -> None:
    assert scrape(server)[("keyroom_rooms", ())] == 0


def test_joins_are_counted_by_result_and_known_reason() -> None:
    registry = metrics.build_registry(RoomRegistry(load_config(None, DEV, {}).limits), Stats())

    def joins() -> Samples:
        return {k: v for k, v in collect(registry).items() if k[0].startswith("keyroom_join")}

    before = joins()
    metrics.record_join(True, "join", 0.02)
    metrics.record_join(False, "room_full", 0.001)
    metrics.record_join(False, "some identity or typo", 0.001)
    after = joins()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert delta("keyroom_joins_total", result="accepted", reason="join") == 1
    assert delta("keyroom_joins_total", result="refused", reason="room_full") == 1
    assert delta("keyroom_joins_total", result="refused", reason="other") == 1
    assert delta("keyroom_join_seconds_count", result="accepted") == 1
    assert delta("keyroom_join_seconds_bucket", result="accepted", le="0.025") == 1
    assert delta("keyroom_join_seconds_bucket", result="accepted", le="0.01") == 0
    assert delta("keyroom_join_seconds_count", result="refused") == 2


def test_state_collector_reads_live_counters() -> None:
    stats = Stats()
    registry = metrics.build_registry(RoomRegistry(load_config(None, DEV, {}).limits), stats)
    stats.packets_in, stats.bytes_in, stats.packets_out, stats.bytes_out = 10, 1000, 20, 2000
    stats.keyframe_requests = 3
    stats.drop(DropReason.NOT_GRANTED)
    samples = collect(registry)
    assert samples[("keyroom_rtp_packets_in_total", ())] == 10
    assert samples[("keyroom_rtp_bytes_out_total", ())] == 2000
    assert samples[("keyroom_keyframe_requests_total", ())] == 3
    assert samples[("keyroom_rtp_packets_dropped_total", (("reason", "no_right"),))] == 1
    assert samples[("keyroom_rtp_packets_dropped_total", (("reason", "malformed"),))] == 0


def test_forward_timer_samples_one_packet_in_64() -> None:
    before = forward_count()
    for count in range(1, 129):
        metrics.forward_timer_stop(metrics.forward_timer_start(count))
    assert forward_count() - before == 2


def test_forward_timer_costs_little_when_not_sampling() -> None:
    # The hot path pays two calls per packet; keep them far below a packet's forwarding cost.
    start = time.perf_counter()
    for count in range(1, 100_001):
        metrics.forward_timer_stop(metrics.forward_timer_start(count | 1))
    per_packet = (time.perf_counter() - start) / 100_000
    assert per_packet < 2e-6


def test_bearer_token_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"^metrics\.bearer_token: expected a printable") as e:
        load_config(None, {**DEV, "metrics": {"bearer_token": "short"}}, {})
    assert "short" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^metrics\.token: unknown key"):
        load_config(None, {**DEV, "metrics": {"token": TOKEN}}, {})
