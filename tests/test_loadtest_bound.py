"""`keyroom loadtest --scenario auth-storm --bound-share` (issue 15), CI-sized: bound and bearer
joins in the same run, each reported; the full run's figures are in docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadtest.run import bound_key


def test_bound_keys_spread_evenly() -> None:
    assert [bound_key(n, 0.5) is not None for n in range(6)] == [False, True] * 3
    assert not any(bound_key(n, 0.0) for n in range(6))
    assert all(bound_key(n, 1.0) for n in range(6))


@pytest.mark.timeout(120)
def test_auth_storm_with_bound_tokens_ci_sized() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sfu",
            "loadtest",
            "--scenario",
            "auth-storm",
            "--subscribers",
            "4",
            "--bound-share",
            "0.5",
            "--duration",
            "3",
            "--json",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.stdout, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["errors"] == {}
    # One publisher and two bearer subscribers; two bound subscribers, each proving its key.
    assert report["join_ms"]["count"] == 3 and report["join_ms_bound"]["count"] == 2
    assert report["tracks"]["missing"] == 0
    assert report["auth"]["attempts"] == 4  # the bad-token half of the storm, all refused
    assert sum(v for k, v in report["auth"].items() if k.startswith("refused:")) == 4
