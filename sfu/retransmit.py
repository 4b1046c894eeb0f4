"""How much a subscriber's NACKs may make keyroom resend: the guard against NACK amplification.

A NACK is a few bytes that asks for many packets (one 1.2 KB NACK named 4,930), so answering
every request lets one subscriber turn the server into an amplifier against its own link, the
node's CPU and every other room. Three limits, none on the forwarding path:
- a packet is resent at most once per `min_interval` (about one round trip): repeats within it
  cannot have been lost again yet;
- resent bytes are paid from a budget earned as a `share` of the media bytes forwarded to that
  subscriber (plus an initial `burst`), so repairs never exceed a fraction of the media rate;
- at most `max_per_nack` distinct packets are considered per NACK message.
What the budget refuses is dropped and counted (`nack_limited`). Pure: `now` is passed in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

# The repair trace (loadtest/freezetimeline.py reads it): one line per NACK answered, per uplink
# gap, NACK and repair, per PLI. Off (one level check per NACK) unless this logger is at DEBUG.
trace = logging.getLogger("keyroom.repair")

SHARE = 0.25
BURST = 128_000
MIN_INTERVAL = 0.1
REPEAT_FRACTION = 0.75
MIN_REPEAT = 0.01
MAX_PER_NACK = 256


class RetransmitBudget:
    __slots__ = ("share", "burst", "min_interval", "max_per_nack", "tokens", "_earned", "_sent_at")

    def __init__(
        self,
        *,
        share: float = SHARE,
        burst: int = BURST,
        min_interval: float = MIN_INTERVAL,
        max_per_nack: int = MAX_PER_NACK,
    ) -> None:
        self.share = share
        self.burst = burst
        self.min_interval = min_interval
        self.max_per_nack = max_per_nack
        self.tokens = float(burst)
        self._earned = 0
        self._sent_at: dict[int, float] = {}

    def requested(self, sequence_numbers: Iterable[int], media_octets: int) -> list[int]:
        """The distinct sequence numbers of one NACK worth considering, after earning the share
        of the `media_octets` forwarded since the last NACK."""
        self.tokens = min(self.burst, self.tokens + (media_octets - self._earned) * self.share)
        self._earned = media_octets
        return list(dict.fromkeys(sequence_numbers))[: self.max_per_nack]

    def repeat_interval(self, rtt: float | None) -> float:
        """How long after a resend a repeated NACK for the packet is answered."""
        longest = self.min_interval if rtt is None else min(self.min_interval, rtt)
        return max(MIN_REPEAT, longest * REPEAT_FRACTION)

    def allow(self, seq: int, size: int, now: float, rtt: float | None = None) -> bool:
        """Whether to resend packet `seq` of `size` bytes now, `rtt` the subscriber's round trip
        (None: unknown); charges the budget if so."""
        last = self._sent_at.get(seq)
        if (last is not None and now - last < self.repeat_interval(rtt)) or size > self.tokens:
            return False
        self.tokens -= size
        self._sent_at[seq] = now
        if len(self._sent_at) > 4 * self.max_per_nack:
            horizon = now - self.min_interval
            self._sent_at = {s: t for s, t in self._sent_at.items() if t > horizon}
        return True


class _Cache(Protocol):
    def get(self, seq: int) -> bytes | None: ...


class _Sink(Protocol):
    def send(self, data: bytes) -> bool: ...


def resend(
    budget: RetransmitBudget,
    cache: _Cache,
    sink: _Sink,
    wrap: Callable[[bytes], bytes] | None,
    sequence_numbers: Iterable[int],
    media_octets: int,
    now: float,
    rtt: float | None = None,
    ssrc: int | None = None,
) -> tuple[int, int]:
    """Answer one NACK from `cache` through `sink` (as RTX when `wrap`), within `budget`, `rtt`
    the subscriber's round trip: (packets resent, packets refused by the budget). `ssrc` names
    the stream in the trace."""
    sent = refused = 0
    outcomes: list[str] | None = [] if trace.isEnabledFor(logging.DEBUG) else None
    for seq in budget.requested(sequence_numbers, media_octets):
        packet = cache.get(seq)
        if packet is None:
            outcome = "miss"
        elif not budget.allow(seq, len(packet), now, rtt):
            refused += 1
            outcome = "refused"
        elif sink.send(packet if wrap is None else wrap(packet)):
            sent += 1
            outcome = "sent"
        else:
            outcome = "unsent"
        if outcomes is not None:
            outcomes.append(f"{seq}:{outcome}")
    if outcomes is not None:
        pacer = getattr(sink, "pacer", None)
        trace.debug(
            "nack wall=%.3f ssrc=%s queued=%s tokens=%d %s",
            time.time(), ssrc, pacer and pacer.queued, budget.tokens, " ".join(outcomes),
        )  # fmt: skip
    return sent, refused
