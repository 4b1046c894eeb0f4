"""loadtest.lossbench's parsing and summary, without browsers: a window's row from the pages'
stats, and the capped-subscriber condition measured side by side with Janus (issue 12)."""

from __future__ import annotations

from typing import Any

from loadtest import lossbench
from loadtest.impair import Impairment

CAPPED = "sub1 downlink 300 kbit/s"


def _sub(**values: Any) -> dict[str, Any]:
    stats = {"frames": 0, "freezes": 0, "freeze_s": 0.0, "lost": 0, "nacks": 0, "plis": 0,
             "width": 0, "audio_lost": 0}  # fmt: skip
    return {**stats, **values}


def test_a_window_row_is_the_difference_of_its_ends() -> None:
    window = lossbench.Window(
        tree="after", condition=CAPPED, subscriber="sub1", elapsed=30.0,
        pub0={"frames": 100, "nacks": 1, "rtx": 2},
        pub1={"frames": 700, "nacks": 5, "rtx": 9, "widths": [320, 160]},
        start=_sub(frames=50, freezes=1, freeze_s=0.5, lost=3, width=640, audio_lost=2),
        end=_sub(frames=590, freezes=3, freeze_s=1.7, lost=10, nacks=4, plis=2, width=320,
                 audio_lost=7),
    )  # fmt: skip
    row = lossbench.summarize(window, longest=0.9, max_freeze=0.8, widths=[640, 160, 320])
    assert (row.pub_fps, row.fps) == (20.0, 18.0)
    assert row.freezes_per_min == 4.0
    assert round(row.freeze_s, 6) == 1.2
    assert (row.lost, row.sub_nacks, row.plis) == (7, 4, 2)
    assert (row.pub_nacks, row.pub_rtx) == (4, 7)
    assert (row.width, row.min_width, row.audio_lost) == (320, 160, 5)
    cells = row.cells()
    assert len(cells) == len(lossbench.HEADER)
    assert row.pub_widths == (160, 320)
    assert cells[-3:] == ["320 (160)", "5", "160/320"]
    assert cells[lossbench.HEADER.index("freeze s")] == "1.20"


def test_a_subscriber_that_decoded_nothing_has_no_width() -> None:
    window = lossbench.Window(
        "janus", CAPPED, "sub1", 10.0, {"frames": 0, "nacks": 0, "rtx": 0},
        {"frames": 200, "nacks": 0, "rtx": 0}, _sub(frames=5), _sub(frames=5),
    )  # fmt: skip
    row = lossbench.summarize(window, longest=10.0, max_freeze=0.0, widths=[])
    assert (row.fps, row.pub_fps, row.width, row.min_width) == (0.0, 20.0, 0, 0)


def test_the_capped_condition_caps_one_downlink_with_a_simulcast_publisher() -> None:
    assert lossbench.CONDITIONS[CAPPED] == {"sub1": (None, Impairment(rate_kbit=300))}
    assert lossbench.limits_for(CAPPED) == "simulcast = true"
    for name in lossbench.CONDITIONS.keys() - {CAPPED}:  # loss recovery alone: one layer
        assert lossbench.limits_for(name) == "simulcast = false"
