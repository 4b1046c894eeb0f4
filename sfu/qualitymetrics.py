"""Connection quality in /metrics: distributions over participants, never per identity.

Read at scrape time from each participant's `connection_quality()` (sfu/quality.py): how many
are excellent/good/poor, and histograms of RTT, downlink loss, jitter and estimated bandwidth
(participants without a measurement yet are left out of that histogram).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from sfu.quality import LEVELS

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

# (metric, field of the snapshot, scale to base units, buckets, help)
_HISTOGRAMS = (
    ("keyroom_connection_rtt_seconds", "rtt_ms", 1e-3,
     (0.025, 0.05, 0.1, 0.2, 0.4, 0.8), "Round-trip time to each subscriber (RR LSR/DLSR)"),
    ("keyroom_connection_loss_ratio", "loss_down", 1.0,
     (0.0, 0.01, 0.02, 0.05, 0.1, 0.2), "Loss each subscriber reports (worst received stream)"),
    ("keyroom_connection_jitter_seconds", "jitter_ms", 1e-3,
     (0.005, 0.01, 0.03, 0.1), "Interarrival jitter each subscriber reports (worst stream)"),
    ("keyroom_connection_bandwidth_bps", "bandwidth_bps", 1.0,
     (1e5, 3e5, 1e6, 3e6, 1e7), "Each subscriber's receive bandwidth estimate (REMB)"),
)  # fmt: skip


def _histogram(name: str, doc: str, bounds: tuple[float, ...], values: list[float]) -> Metric:
    buckets = [(str(b), sum(1 for v in values if v <= b)) for b in bounds]
    buckets.append(("+Inf", len(values)))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=sum(values))


def quality_metrics(snapshots: Iterable[Mapping[str, object]]) -> Iterator[Metric]:
    shots = list(snapshots)
    levels = GaugeMetricFamily(
        "keyroom_connection_quality", "Participants by connection quality", labels=["quality"]
    )
    for level in LEVELS:
        levels.add_metric([level], sum(1 for s in shots if s["quality"] == level))
    yield levels
    for name, key, scale, bounds, doc in _HISTOGRAMS:
        values = [float(v) * scale for s in shots if isinstance(v := s[key], int | float)]
        yield _histogram(name, doc, bounds, values)
