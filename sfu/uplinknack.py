"""NACKs towards a publisher: which packets of its stream were lost on the uplink, and when to ask.

One `UplinkNacks` per received video SSRC. `on_packet(seq)` runs on the hot path: an in-order
packet costs one subtraction; a forward jump records the skipped sequence numbers as missing; an
older packet that was missing is a repair (a retransmission, or reordering); any other older one
is a duplicate, which the ingress drops so subscribers never see it twice.

Asking is timed by `due(now, rtt)`: a missing packet is NACKed first `FIRST_DELAY` after its gap
was seen (a reordered packet usually arrives within it), then again a little more than a round
trip later (`repeat_interval`, at least `MIN_INTERVAL`), at most `MAX_RETRIES` times: libwebrtc
ignores a NACK for a packet it resent less than its RTT ago, so a repeat exactly one round trip
after the last was ignored about half the time, and a lost repair then cost two more round trips
(a 0.58 s freeze at 100 ms + 1 % loss both ways). The round trip is the participant's measured one
when there is one; a publisher that subscribes to nothing has none (keyroom sends it no Sender
Reports), so then it is the repair round trip: from a packet's first NACK to its repair
(`on_repair`), smoothed; DEFAULT_RTT before the first. A packet NACKed more than once may have
been repaired on a later NACK, so its sample is an upper bound, taken only below the estimate
(the first samples on a path longer than DEFAULT_RTT are all such: its repeat comes first).
With a fixed 100 ms on a 200 ms path every loss was NACKed two or three times, and Chromium
resent it as often. After the retries a packet is given up (the subscribers' own NACKs and
PLIs take over). Bounded: at most `MAX_MISSING` entries (the oldest are given up first), and a
jump of more than `MAX_GAP` packets is a restart, not loss (no NACKs; the caller asks for a
keyframe). Pure: `now` and the RTT are passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

FIRST_DELAY = 0.005
MIN_INTERVAL = 0.02
REPEAT_FACTOR = 1.15
REPEAT_MARGIN = 0.01
DEFAULT_RTT = 0.1
MAX_REPAIR_RTT = 2.0
GAIN = 0.125
MAX_RETRIES = 8
MAX_MISSING = 256
MAX_GAP = 256
SEQ_MASK = 0xFFFF
HALF = 0x8000

# What `on_packet` saw.
IN_ORDER = 0
GAP = 1
REPAIR = 2
DUPLICATE = 3
RESTART = 4


class UplinkNacks:
    __slots__ = (
        "_max", "_started", "_missing", "_repair", "repair_rtt", "requested", "repaired",
        "gave_up", "restarts",
    )  # fmt: skip

    def __init__(self) -> None:
        self._max = 0
        self._started = False
        # seq -> [NACKs sent, when the next is due (0: at the first due() call), when the first
        # was sent]; insertion order is ascending sequence order, which build_nack packs tightest.
        self._missing: dict[int, list[float]] = {}
        self._repair: list[float] | None = None  # the entry of the last repair, for on_repair
        self.repair_rtt: float | None = None
        self.requested = 0  # sequence numbers put in NACKs, repeats included
        self.repaired = 0  # missing packets that arrived after all
        self.gave_up = 0  # missing packets given up (retries exhausted, or bounds)
        self.restarts = 0

    @property
    def missing(self) -> int:
        return len(self._missing)

    def on_packet(self, seq: int) -> int:
        if not self._started:
            self._started = True
            self._max = seq
            return IN_ORDER
        distance = (seq - self._max) & SEQ_MASK
        if distance == 1:
            self._max = seq
            return IN_ORDER
        if distance == 0:
            return DUPLICATE
        if distance < HALF:
            return self._jump(seq, distance)
        repair = self._missing.pop(seq, None)
        if repair is not None:
            self.repaired += 1
            self._repair = repair
            return REPAIR
        return DUPLICATE

    def _jump(self, seq: int, distance: int) -> int:
        first = self._max + 1
        self._max = seq
        if distance > MAX_GAP:
            self.gave_up += len(self._missing)
            self._missing.clear()
            self.restarts += 1
            return RESTART
        missing = self._missing
        for lost in range(first, first + distance - 1):
            missing[lost & SEQ_MASK] = [0, 0.0, 0.0]
        excess = len(missing) - MAX_MISSING
        if excess > 0:
            for old in list(missing)[:excess]:
                del missing[old]
            self.gave_up += excess
        return GAP

    def on_repair(self, now: float) -> None:
        """The packet `on_packet` just called a REPAIR arrived `now` (off the hot path)."""
        entry, self._repair = self._repair, None
        if entry is None or entry[0] == 0:
            return  # never NACKed: reordering
        sample = now - entry[2]
        smoothed = self.repair_rtt
        if not 0 < sample <= MAX_REPAIR_RTT:
            return
        if entry[0] == 1:
            self.repair_rtt = sample if smoothed is None else smoothed + GAIN * (sample - smoothed)
        elif smoothed is None or sample < smoothed:
            self.repair_rtt = sample  # an upper bound, below the estimate

    def due(self, now: float, rtt: float | None) -> list[int]:
        """The sequence numbers to NACK now, oldest first; charges their retries. `rtt`: the
        participant's measured round trip (None: the repair round trip, or DEFAULT_RTT)."""
        if rtt is None:
            rtt = DEFAULT_RTT if self.repair_rtt is None else self.repair_rtt
        interval = repeat_interval(rtt)
        out = []
        for seq, entry in list(self._missing.items()):
            if entry[1] > now:
                continue
            if entry[0] >= MAX_RETRIES:
                del self._missing[seq]
                self.gave_up += 1
                continue
            if not entry[0]:
                entry[2] = now
            entry[0] += 1
            entry[1] = now + interval
            out.append(seq)
        self.requested += len(out)
        return out

    def next_deadline(self, now: float) -> float | None:
        """When `due` next has something to do; a fresh gap is due `FIRST_DELAY` from now."""
        if not self._missing:
            return None
        return min(now + FIRST_DELAY if e[1] == 0 else e[1] for e in self._missing.values())


def repeat_interval(rtt: float) -> float:
    """How long after a NACK its packet is NACKed again, for a round trip of `rtt`."""
    return max(MIN_INTERVAL, rtt * REPEAT_FACTOR + REPEAT_MARGIN)


def next_deadline(trackers: Iterable[UplinkNacks], now: float) -> float | None:
    deadlines = [d for t in trackers if (d := t.next_deadline(now)) is not None]
    return min(deadlines) if deadlines else None


def due_nacks(
    trackers: Mapping[int, UplinkNacks], now: float, rtt: float | None
) -> list[tuple[int, list[int]]]:
    """(media SSRC, sequence numbers) for every stream with NACKs due now."""
    return [(ssrc, seqs) for ssrc, t in trackers.items() if (seqs := t.due(now, rtt))]
