"""What a node tells the registry about itself at each heartbeat: pure, times passed in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoadMeter:
    """Forwarded packets per second and CPU share over the last heartbeat interval."""

    capacity: int
    _last: tuple[float, int, float] | None = None  # (wall, packets_out, cpu seconds)

    def sample(
        self, *, now: float, packets_out: int, cpu: float, participants: int, rooms: int,
        tracks: int,
    ) -> dict[str, str]:  # fmt: skip
        pps = cpu_share = 0.0
        if self._last is not None and now > self._last[0]:
            elapsed = now - self._last[0]
            pps = (packets_out - self._last[1]) / elapsed
            cpu_share = (cpu - self._last[2]) / elapsed
        self._last = (now, packets_out, cpu)
        return {
            "participants": str(participants),
            "rooms": str(rooms),
            "tracks": str(tracks),
            "pps": f"{pps:.0f}",
            "cpu": f"{cpu_share:.2f}",
            "load": f"{self.load(participants, cpu_share):.4f}",
        }

    def load(self, participants: int, cpu_share: float) -> float:
        """The placement score: the larger of the share of capacity taken and the CPU share
        (one core = 1.0), so a node busy forwarding is not chosen for its few participants."""
        return max(participants / self.capacity, cpu_share)
