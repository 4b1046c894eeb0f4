"""Keyframe detection from RTP payloads (no decoding) and PLI rate limiting."""

from __future__ import annotations

from collections.abc import Callable


def _vp8_is_keyframe(payload: bytes) -> bool:
    """RFC 7741: first packet of partition 0 (S=1, PID=0) whose VP8 header has P=0."""
    size = len(payload)
    if size < 2:
        return False
    first = payload[0]
    if first & 0x17 != 0x10:  # S bit set, 3-bit partition index 0
        return False
    pos = 1
    if first & 0x80:  # X: an extension byte with I/L/T/K follows
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: PictureID, 15 bits when its M bit is set
            if pos >= size:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T and/or K share one TID/Y/KEYIDX byte
            pos += 1
    return pos < size and payload[pos] & 0x01 == 0


_IDR = 5
_SPS = 7
_STAP_A = 24
_FU_A = 28


def _h264_is_keyframe(payload: bytes) -> bool:
    """RFC 6184: an IDR slice or SPS alone, inside a STAP-A, or starting an FU-A."""
    size = len(payload)
    if size < 1:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type == _IDR or nal_type == _SPS:
        return True
    if nal_type == _STAP_A:
        pos = 1
        # Each aggregated NAL unit: 16-bit size, then the unit; stop at one that overruns.
        while pos + 2 < size:
            nal_size = payload[pos] << 8 | payload[pos + 1]
            if nal_size == 0 or pos + 2 + nal_size > size:
                return False
            if payload[pos + 2] & 0x1F in (_IDR, _SPS):
                return True
            pos += 2 + nal_size
        return False
    if nal_type == _FU_A:
        return size >= 2 and payload[1] & 0x80 != 0 and payload[1] & 0x1F in (_IDR, _SPS)
    return False


_DETECTORS: dict[str, Callable[[bytes], bool]] = {
    "video/vp8": _vp8_is_keyframe,
    "video/h264": _h264_is_keyframe,
}


def is_keyframe(mime: str, payload: bytes) -> bool:
    """Whether this RTP payload starts a keyframe; False for other codecs and malformed data."""
    detector = _DETECTORS.get(mime.lower())
    return detector is not None and detector(payload)


class KeyframeThrottle:
    """Rate-limits keyframe requests (PLI) towards one publisher track.

    At most one request goes out per `min_interval` seconds; a request suppressed inside the
    interval stays pending and goes out via due() once the interval has passed, so it is never
    lost. The caller passes the time in (loop.time()), which keeps this testable.
    """

    __slots__ = ("min_interval", "_last_sent", "_pending")

    def __init__(self, min_interval: float = 0.5) -> None:
        if min_interval < 0:
            raise ValueError("min_interval must not be negative")
        self.min_interval = min_interval
        self._last_sent: float | None = None
        self._pending = False

    def request(self, now: float) -> bool:
        """A keyframe is wanted: True means send a PLI now, False that it is pending."""
        # Compared as `now >= last + interval`, the very sum next_due() returns, so a timer armed
        # for next_due() finds the request due despite float rounding.
        if self._last_sent is None or now >= self._last_sent + self.min_interval:
            self._last_sent = now
            self._pending = False
            return True
        self._pending = True
        return False

    def due(self, now: float) -> bool:
        """True (once) when a pending request may now be sent; the caller sends it then."""
        if self._pending and self._last_sent is not None:
            if now >= self._last_sent + self.min_interval:
                self._last_sent = now
                self._pending = False
                return True
        return False

    def next_due(self) -> float | None:
        """When the pending request may go (for arming a timer), or None if nothing is pending."""
        if self._pending and self._last_sent is not None:
            return self._last_sent + self.min_interval
        return None
