"""The server's forwarding-time histogram as scraped from its `/metrics`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

FORWARD_METRIC = "keyroom_forward_seconds"
# Kernel receive timestamp to the send of the copies (shared port, compiled receive).
RECEIVE_TO_SEND_METRIC = "keyroom_receive_to_send_seconds"
# Each garbage collection's pause in the server, by generation (sfu/gcpolicy.py).
GC_PAUSE_METRIC = "keyroom_gc_pause_seconds"
GENERATIONS = ("0", "1", "2")


@dataclass(frozen=True)
class ForwardHistogram:
    """The server's `keyroom_forward_seconds` (cumulative Prometheus buckets) at one scrape:
    time from a publisher packet entering the server's handler to the end of its fan-out to
    every subscriber, for 1 input packet in 64."""

    buckets: tuple[tuple[float, float], ...]  # (upper bound `le` in s, cumulative count)
    count: float
    sum: float

    @classmethod
    def parse(
        cls, text: str, metric: str = FORWARD_METRIC, labels: dict[str, str] | None = None
    ) -> ForwardHistogram | None:
        """`metric` from a `/metrics` exposition (its samples with `labels`, if given); None
        when it has no such histogram (a server without it; one that never observed any has
        count 0)."""
        buckets: dict[float, float] = {}
        count = total = None
        for family in text_string_to_metric_families(text):
            if family.name != metric:
                continue
            for sample in family.samples:
                if labels and any(sample.labels.get(k) != v for k, v in labels.items()):
                    continue
                if sample.name == metric + "_bucket":
                    buckets[float(sample.labels["le"])] = sample.value
                elif sample.name == metric + "_count":
                    count = sample.value
                elif sample.name == metric + "_sum":
                    total = sample.value
        if not buckets or count is None or total is None:
            return None
        return cls(tuple(sorted(buckets.items())), count, total)

    def minus(self, earlier: ForwardHistogram) -> ForwardHistogram | None:
        """What was observed between two scrapes of the same server (None if the buckets
        differ, e.g. the server restarted with other buckets)."""
        if [le for le, _ in self.buckets] != [le for le, _ in earlier.buckets]:
            return None
        return ForwardHistogram(
            tuple(
                (le, n - m) for (le, n), (_, m) in zip(self.buckets, earlier.buckets, strict=True)
            ),
            self.count - earlier.count,
            self.sum - earlier.sum,
        )

    def quantile(self, q: float) -> float | None:
        """Seconds, interpolated linearly inside the bucket holding rank q (as Prometheus's
        `histogram_quantile`: the first bucket starts at 0; a rank in the +Inf bucket gives the
        highest finite bound, a lower bound of the truth)."""
        if self.count <= 0:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower
                inside = cumulative - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = le, cumulative
        return lower

    def summary(self) -> dict[str, Any]:
        """ms per input packet: p50/p95/p99 at bucket resolution, the exact mean, the samples."""

        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(1000 * seconds, 4)

        finite = [le for le, _ in self.buckets if not math.isinf(le)]
        top = next((n for le, n in self.buckets if math.isinf(le)), self.count)
        return {
            "count": int(self.count),  # timed packets (1 input packet in 64)
            "p50": ms(self.quantile(0.50)),
            "p95": ms(self.quantile(0.95)),
            "p99": ms(self.quantile(0.99)),
            "mean": ms(self.sum / self.count) if self.count > 0 else None,
            "resolution": "bucket",  # quantiles interpolated inside Prometheus buckets
            "bucket_bounds_ms": [round(1000 * le, 4) for le in finite],
            # Timed packets above the highest finite bound (their quantile is that bound).
            "over_top_bucket": int(top - dict(self.buckets).get(finite[-1], 0)) if finite else 0,
        }


def gc_pauses(text: str) -> dict[str, ForwardHistogram]:
    """The server's garbage-collection pauses by generation, from one `/metrics` exposition
    (empty for a server without the histogram)."""
    found = {
        g: ForwardHistogram.parse(text, GC_PAUSE_METRIC, {"generation": g}) for g in GENERATIONS
    }
    return {g: h for g, h in found.items() if h is not None}


def gc_pause_summary(
    before: dict[str, ForwardHistogram], after: dict[str, ForwardHistogram]
) -> dict[str, dict[str, Any]] | None:
    """Per generation, the collections between two scrapes: how many, their total pause and
    the longest at bucket resolution (the lowest bound that holds them all), ms. None when
    the server has no such histogram."""
    summary: dict[str, dict[str, Any]] = {}
    for generation, later in after.items():
        earlier = before.get(generation)
        window = later.minus(earlier) if earlier is not None else None
        if window is None:
            continue
        longest = (
            next((le for le, n in window.buckets if n >= window.count), math.inf)
            if window.count
            else 0.0
        )
        summary[generation] = {
            "count": int(window.count),
            "total_ms": round(1000 * window.sum, 3),
            # None: above the top bucket (0.5 s).
            "longest_ms_at_most": round(1000 * longest, 3) if math.isfinite(longest) else None,
        }
    return summary or None
