"""loadtest.memory's arithmetic: MiB per subscribed track from RSS at two or more counts."""

from __future__ import annotations

import pytest

from loadtest.memory import main, median, slope


def test_slope_uses_the_medians_of_the_extreme_counts() -> None:
    rss = {10: [100.0, 104.0, 101.0], 40: [120.0], 100: [130.0, 127.0, 400.0]}
    assert median([3.0, 1.0]) == 2.0
    assert slope(rss) == pytest.approx((130.0 - 101.0) / 90)


def test_one_subscriber_count_is_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--subscribers", "10"])
