"""Active speakers from the audio-level header extension (RFC 6464): no decoding, time-free.

Each round the room hands in every visible participant's mean audio level in dBov; those louder
than the threshold are speakers, loudest first, with a 0..1 level (linear amplitude).
"""

from __future__ import annotations

from collections.abc import Iterable

SPEAKING_DBOV = -50.0


def active_speakers(
    levels: Iterable[tuple[str, float]], threshold: float = SPEAKING_DBOV
) -> list[dict[str, object]]:
    loud = sorted(((dbov, sid) for sid, dbov in levels if dbov > threshold), reverse=True)
    return [{"sid": sid, "level": round(10 ** (dbov / 20), 3)} for dbov, sid in loud]
