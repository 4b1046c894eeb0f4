"""The state of a down-track that decides whether the compiled loop forwards it
(sfu/fastpath/steady.py), behind setters that take it out of that loop first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sfu.fanout.links import Remote
    from sfu.rtprewrite import RtpRewriter


class _Loop(Protocol):
    """The compiled loop a down-track is in (steady.py's Copies)."""

    def detach(self, down: SteadyDownTrack) -> None: ...

    def sync(self, down: SteadyDownTrack) -> None: ...


class SteadyDownTrack:
    """The state of a down-track that decides whether it is steady, behind setters that take it
    out of the compiled loop first. The Python hot path reads the slots directly."""

    __slots__ = ("_rewriter", "_waiting", "_paused", "_padding", "_remote", "_copies")
    # DownTrack's (sfu/forwarder.py), read here.
    layers: Any
    sink: Any
    cache: Any
    track: Any

    def __init__(self) -> None:
        self._rewriter: RtpRewriter | None = None
        # Video starts at a keyframe: earlier delta frames would only make the decoder ask again
        # (DownTrack sets it).
        self._waiting = False
        # Paused by congestion control: forwards nothing until resumed at a keyframe.
        self._paused = False
        # Padding packets sent after each media packet while congestion control probes.
        self._padding = 0
        self._remote: Remote | None = None  # a fan-out worker sends it (sfu/fanout/)
        self._copies: _Loop | None = None

    def _leave(self) -> None:
        if self._copies is not None:
            self._copies.detach(self)

    def rerouted(self, target: int) -> None:
        """A simulcast down-track is given `target`: out of its layer's loop first if that is
        a new one, and the layers' routes are made again."""
        if target != self.layers.target:
            self._leave()
        self.track.down_tracks.changed()

    @property
    def rewriter(self) -> RtpRewriter | None:
        if self._copies is not None:
            self._copies.sync(self)
        return self._rewriter

    @rewriter.setter
    def rewriter(self, rewriter: RtpRewriter | None) -> None:
        self._leave()
        self._rewriter = rewriter

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._waiting

    @waiting_for_keyframe.setter
    def waiting_for_keyframe(self, waiting: bool) -> None:
        if waiting:
            self._leave()
        self._waiting = waiting

    @property
    def paused(self) -> bool:
        return self._paused

    @paused.setter
    def paused(self, paused: bool) -> None:
        if paused:
            self._leave()
        self._paused = paused

    @property
    def padding(self) -> int:
        return self._padding

    @padding.setter
    def padding(self, padding: int) -> None:
        if padding:
            self._leave()
        self._padding = padding

    @property
    def remote(self) -> Remote | None:
        return self._remote

    @remote.setter
    def remote(self, remote: Remote | None) -> None:
        if remote is not None:
            self._leave()
        self._remote = remote
