"""The freeze timeline: Chromium's freezes from 100 ms samples, explained by the repair trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.freezetimeline import analyse, report

T0 = 1_800_000_000.0


def _sample(at: float, sub: str, freezes: int, freeze_s: float, ssrc: int) -> dict[str, object]:
    return {
        "wall": T0 + at, "tree": "after", "condition": "c", "sub": sub, "frames": int(at * 20),
        "freezes": freezes, "freeze_s": freeze_s, "ssrc": ssrc,
    }  # fmt: skip


def _line(at: float, text: str) -> str:
    return f"2026-12-06 15:00:00,000 DEBUG keyroom.repair: {text.replace('@', f'{T0 + at:.3f}')}"


# split: the tree's simulcast conditions had their own server (lossbench), whose log joins it.
@pytest.mark.parametrize("split", [False, True])
def test_each_freeze_is_explained_by_the_events_in_its_stretch(tmp_path: Path, split: bool) -> None:
    samples = [
        _sample(0.0, "sub1", 0, 0.0, 11),
        _sample(1.0, "sub1", 1, 0.3, 11),  # a 0.3 s freeze ending at 1.0: began at ~0.6
        _sample(2.0, "sub1", 1, 0.3, 11),
        _sample(3.0, "sub1", 2, 0.5, 11),  # 0.2 s, ending at 3.0
        _sample(0.0, "sub2", 0, 0.0, 22),
        _sample(5.0, "sub2", 1, 0.25, 22),  # nothing in the trace around it
    ]
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    log = [
        _line(0.55, "uplink 1 wall=@ ssrc=99 seq=8"),
        _line(0.56, "upnack wall=@ ssrc=99 rtt=None repair_rtt=None seqs=[7]"),
        _line(0.7, "nack wall=@ ssrc=11 queued=0 tokens=128000 107:miss"),
        _line(0.76, "uplink 2 wall=@ ssrc=99 seq=7"),
        _line(0.8, "nack wall=@ ssrc=22 queued=0 tokens=128000 5:sent"),  # another stream
        _line(2.8, "nack wall=@ ssrc=11 queued=0 tokens=128000 150:sent 151:sent"),
        _line(2.9, "nack wall=@ ssrc=11 queued=0 tokens=128000 151:refused"),
        _line(2.95, "subpli wall=@ ssrc=11"),
        "2026-12-06 15:00:00,000 INFO keyroom.room: not a trace line",
    ]
    first, second = (log[:5], log[5:]) if split else (log, [])
    (tmp_path / "server-after.log").write_text("\n".join(first) + "\n")
    if split:
        (tmp_path / "server-after-simulcast.log").write_text("\n".join(second) + "\n")
    found = analyse(tmp_path)
    assert [(f.sub, round(f.duration, 2)) for f in found] == [
        ("sub1", 0.3), ("sub1", 0.2), ("sub2", 0.25),
    ]  # fmt: skip
    assert found[0].causes == ["cache miss", "uplink repair"]
    assert not any("ssrc=22" in line for line in found[0].lines)
    assert found[1].causes == ["downlink repair", "keyframe", "repeat refused"]
    assert found[2].causes == ["no loss seen"]
    text = report(found)
    assert "after | c | uplink repair: 1" in text and "after | c | no loss seen: 1" in text
    main = text.split("by main cause")[1]
    assert "after | c | keyframe: 1" in main and "after | c | uplink repair: 1" in main
    assert "cache miss" not in main
