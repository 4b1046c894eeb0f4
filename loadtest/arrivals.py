"""What the latency benchmark's publishers offer the server, modelled without a server: the
arrival time of every RTP packet of N paced publishers replaying the load tester's clip
(loadtest/clients.py), and the wait each would have in a FIFO server that spends `cost` µs per
packet (a single queue, as the shared port's reader is). Deterministic (seeded phases), so it
separates the load's shape from the server's noise (docs/benchmarks.md, "What held the loop").

    python -m loadtest.arrivals ROOMS [--cost-us 30] [--seeds 3]

prints, for keyframes looping with the clip (every publisher in step, as after the joins'
keyframe requests) and for keyframes on request only, the peak packets per ms and the modelled
wait's p50/p99/max.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Sequence

PUBLISHERS_PER_ROOM = 4  # loadtest/latency-taskset: 4 video publishers per room
PACE_MS = 10.0
SECONDS = 6.0


def arrivals(
    sizes: Sequence[int],
    frame_interval: float,
    publishers: int,
    seed: int,
    keyframes_on_request: bool,
    seconds: float = SECONDS,
    pace_ms: float = PACE_MS,
) -> list[float]:
    """Every packet's send time (s), sorted: each publisher on a random phase of the frame
    interval, all at clip position 0 at time 0 (the joins' keyframe requests reset them
    together), each frame paced as `Publisher.run` paces it (ceil(size / pace_ms) packets per
    1 ms step)."""
    rnd = random.Random(seed)
    times: list[float] = []
    frames = int(seconds / frame_interval)
    for _ in range(publishers):
        phase = rnd.uniform(0, frame_interval)
        position = 0
        for k in range(frames):
            size = sizes[position]
            per_step = math.ceil(size / pace_ms)
            start = phase + k * frame_interval
            times.extend(start + (n // per_step) * 0.001 for n in range(size))
            position = (position + 1) % len(sizes)
            if position == 0 and keyframes_on_request and len(sizes) > 1:
                position = 1
    times.sort()
    return times


def waits(times: Sequence[float], cost: float) -> list[float]:
    """Each packet's time from arrival to the end of its processing in a FIFO server."""
    free = 0.0
    out = []
    for t in times:
        free = max(t, free) + cost
        out.append(free - t)
    return out


def peak_per_ms(times: Sequence[float]) -> int:
    """The most packets sent in one ms, after the first pass of the clip."""
    counts: dict[int, int] = {}
    for t in times[len(times) // 3 :]:
        slot = int(t * 1000)
        counts[slot] = counts.get(slot, 0) + 1
    return max(counts.values(), default=0)


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    """p50, p99, max in ms of the last two thirds (the first pass of the clip left out)."""
    kept = sorted(values[len(values) // 3 :])
    return (
        1000 * kept[len(kept) // 2],
        1000 * kept[int(len(kept) * 0.99)],
        1000 * kept[-1],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.arrivals", description=__doc__)
    parser.add_argument("rooms", type=int)
    parser.add_argument("--cost-us", type=float, default=30.0, help="server µs per packet")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--video-bitrate", type=int, default=1_500_000)
    args = parser.parse_args(argv)
    from loadtest.clip import encode_video_clip

    clip = encode_video_clip("vp8", bitrate=args.video_bitrate)
    sizes = [len(frame.payloads) for frame in clip.frames]
    publishers = args.rooms * PUBLISHERS_PER_ROOM
    print(f"clip: {len(sizes)} frames, keyframe {sizes[0]} packets, others ~{sorted(sizes)[15]}")
    for on_request in (False, True):
        label = "keyframes on request" if on_request else "keyframes looping"
        for seed in range(args.seeds):
            times = arrivals(sizes, clip.frame_interval, publishers, seed, on_request)
            p50, p99, top = summary(waits(times, args.cost_us * 1e-6))
            rate = len(times) / SECONDS
            print(
                f"{label:<21} seed {seed}: {rate:,.0f} pps (load {rate * args.cost_us / 1e6:.0%}),"
                f" peak {peak_per_ms(times)}/ms, wait p50 {p50:.2f} p99 {p99:.2f} max {top:.1f} ms"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
