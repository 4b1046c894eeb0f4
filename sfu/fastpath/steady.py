"""Down-tracks in their steady state forwarded by compiled code: one call per input packet.

A down-track is steady when it only rewrites and sends: its rewriter started and has the
one-byte fast path, it waits for no keyframe, is not paused, pads nothing, is sent by this
process, and its sink sends RTP through a shared socket's `FanoutBatch` (with nothing waiting
in its pacer, if paced). Then its per-copy work (RtpRewriter.rewrite, the retransmission cache,
RtpSink.send with its transport-cc stamp, the send budget's `take`, FanoutBatch.add) is a
`kr_copy` struct in its track's C array, and `kr_fanout`
(sfu/fastpath/_build.py) writes every steady copy of an input packet into the batch in one
call. The rest keep the Python path.

While a down-track is attached, the C struct holds its rewriter's offsets and counters: reading
`down.rewriter` copies them back first (`Copies.sync`), and anything that leaves the steady
state (a keyframe wait, a pause, padding, a new rewriter, a fan-out worker) detaches it first
(`SteadyDownTrack`'s setters). What the sink checks per packet (DTLS state, the nominated
pair) is checked every `REFRESH` inputs, when Python-path down-tracks that became steady are
attached too.

A simulcast down-track is steady on its layer when it is settled there (forwarding the layer it
aims at, no switch pending): each layer then has its own `Copies`, and the compiled loop also
does what `LayerSwitch.admit` and `Vp8Munger.patch` do per packet of the current layer (the
switch point's floor, the VP8 PictureID/TL0PICIDX renumbering). Any new target takes it out
first (`SteadyDownTrack.rerouted`); the switch itself, at a keyframe, is Python's.

Transport-cc: the compiled loop stamps the subscriber's TransportSequence and writes the send
time and size into its history arrays (through pointers), which the feedback reads when it
comes. A send budget (sfu/sendbudget.py): the loop takes its tokens from the budget's cell as
`SendBudget.take` does; a copy that does not fit leaves the loop for that packet and the next
ones (`_over`): the pacer's Python path queues it, and the down-track comes back at a check
that finds the pacer empty.

Retransmissions: sfu/fastpath/replay.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sfu import twcc
from sfu.fastpath.replay import RING, InputRing, Replay
from sfu.fastpath.state import SteadyDownTrack
from sfu.rtp import ONE_BYTE_PROFILE, RtpInfo

if TYPE_CHECKING:
    from sfu.fastpath.batch import Destination, FanoutBatch

REFRESH = 32  # input packets between checks of who is steady
_SEQ = 0xFFFF
# A synthetic header in front of a layered copy's last payload bytes (LayerSwitch.last_sent):
# where a later switch reads the PictureID/TL0PICIDX numbering from.
_HEADER = bytes((0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))


# What a sink that can be bypassed answers (`steady()`): the batch, the destination, and the
# sink that counts the packets sent (an RtpSink, sfu/internals/egress.py; None: nobody counts,
# a fan-out worker's subscriber, sfu/fanout/worker.py).
Steady = tuple["FanoutBatch", "Destination", Any]


def _settled(down: SteadyDownTrack, layer: int) -> bool:
    """Whether `down` is single-layer (`layer` -1), or forwards simulcast `layer` and aims at
    no other."""
    layers = down.layers
    if layers is None:
        return layer < 0
    return layer >= 0 and layers.current == layer and layers.target == layer


def _steady(down: SteadyDownTrack, layer: int = -1) -> Steady | None:
    """What `down`'s sink answers if `down` can be forwarded by the compiled loop of `layer`
    (-1: of a single-layer track) now."""
    rewriter = down._rewriter
    if (
        rewriter is None
        or (down._waiting and layer < 0)  # a layered one waits in its LayerSwitch
        or down._paused
        or down._padding
        or down._remote is not None
        or not _settled(down, layer)
        or rewriter.compiled_form() is None
    ):
        return None
    steady = getattr(down.sink, "steady", None)
    found: Steady | None = steady() if steady is not None else None
    if found is None or not found[0].copies:
        return None
    return found


def adopt(
    downs: Sequence[SteadyDownTrack],
    layer: int = -1,
    make: Callable[[FanoutBatch], Copies] | None = None,
) -> Copies | None:
    """A compiled loop for a track (or its simulcast `layer`) whose down-tracks include a
    steady one (`make`: a Copies of another kind for its batch), else None."""
    for down in downs:
        found = _steady(down, layer)
        if found is not None and (layer < 0 or found[0].layers):
            if make is not None:
                return make(found[0])
            return Copies(found[0], video=down.cache is not None, layer=layer)
    return None


class Copies:
    """The steady down-tracks of one published track, as a C array forwarded in one call."""

    __slots__ = (
        "batch",
        "_ffi",
        "_fanout",
        "_array",
        "_capacity",
        "members",
        "_destinations",
        "_sinks",
        "_bound",
        "_held",
        "_python",
        "_version",
        "_call",
        "_clocked",
        "_hold",
        "_tick",
        "ring",
        "fallbacks",
        "paced",
        "layer",
    )

    def __init__(self, batch: FanoutBatch, *, video: bool, layer: int = -1) -> None:
        self.batch = batch
        self.layer = layer  # the simulcast layer forwarded, -1: a single-layer track
        self._ffi = batch._ffi
        self._fanout = batch._lib.kr_fanout
        self._capacity = 8
        self._array = self._ffi.new("kr_copy[]", self._capacity)
        self.members: list[SteadyDownTrack] = []
        self._destinations: list[Destination] = []
        self._sinks: list[Any] = []  # each member's RtpSink (its counters), or None
        # Each member's (TransportSequence or None, SendBudget or None, buffers C points into).
        self._bound: list[tuple[Any, Any, tuple[Any, ...]]] = []
        self._held: tuple[Destination, ...] = ()
        self._python: list[Any] = []  # DownTracks: their Python path
        self._version = -1
        # kr_fanout's arguments: the batch, the array and its length, the send time.
        self._call = self._ffi.new("kr_call *")
        self._call.batch, self._call.copies = batch._batch, self._array
        self._clocked = False  # whether a member stamps transport-cc or has a budget
        self._hold = batch._held.append  # FanoutBatch.hold without a Python call
        self._tick = 0
        self.ring = InputRing() if video else None
        self.fallbacks = 0  # input packets the compiled loop could not take (another profile)
        self.paced = 0  # copies over their send budget, handed to the pacer (Python path)

    def forward(self, data: bytes, info: RtpInfo, downs: Sequence[Any], version: int) -> int:
        """Forward one input packet to every down-track of `downs` (SteadyDownTracks); the
        number sent. Once per input packet: the compiled call is made here, inline."""
        self._tick -= 1
        if self._tick <= 0:
            self._maintain(downs, version)
        if version != self._version:
            self._refresh(downs, version)
        sent = 0
        if self.members:
            ring = self.ring
            if ring is not None:
                slot = info[1] & (RING - 1)
                ring.seqs[slot] = info[1]
                ring.packets[slot] = data
            profile = info[6]
            if profile is not None and profile != ONE_BYTE_PROFILE:
                sent = self._fallback(data, info)
            else:
                call, batch = self._call, self.batch
                if self._clocked:  # the send time of every copy, and the budget's refill
                    call.now = twcc.send_clock()
                self._hold(self._held)
                sent = self._fanout(call, data, len(data))
                if sent >= 0:
                    batch._stats.fanout_compiled_copies += sent
                else:
                    sent = self._rest(data, info, sent)
                if not batch.depth:
                    batch.flush()
        if self._python:
            sent += self._forward_python(data, info)
        return sent

    def _forward_python(self, data: bytes, info: RtpInfo) -> int:
        """The down-tracks not in the loop: their Python path."""
        if self.layer >= 0:
            return self._forward_layer(data, info, self._python)
        sent = 0
        for down in self._python:
            if self._each(down, data, info):
                sent += 1
        return sent

    def _each(self, down: Any, data: bytes, info: RtpInfo) -> bool:
        """One down-track's Python path (a RED stream's: sfu/fastpath/redcopies.py)."""
        return bool(down.forward(data, info))

    def _rest(self, data: bytes, info: RtpInfo, result: int) -> int:
        """What kr_fanout did not finish (`result` < 0): a full batch is sent and the rest
        queued; copies over their budget go to the pacer. The copies made."""
        call, batch = self._call, self.batch
        while result == -2:
            batch.flush()
            self._hold(self._held)
            result = self._fanout(call, data, len(data))
        if result == -1:
            return 0
        made: int = call.queued
        batch._stats.fanout_compiled_copies += made
        return made + (self._paced(data, info) if result == -3 else 0)

    def _forward_layer(self, data: bytes, info: RtpInfo, downs: Sequence[Any]) -> int:
        """Layer.forward's loop over its route (sfu/simulcast.py), for `downs`."""
        sent, layer = 0, self.layer
        renumbered: dict[int, tuple[bytes, int]] = {}  # shared by the route (sfu/vp8.py)
        for down in downs:
            if down.forward_layer(layer, data, info, renumbered):
                sent += 1
        return sent

    def _paced(self, data: bytes, info: RtpInfo) -> int:
        """The copies over their send budget: each down-track leaves for its Python path,
        whose pacer queues this packet (and the next ones while it holds any)."""
        array, members = self._array, self.members
        over = [down for i, down in enumerate(members) if array[i].over]
        self.paced += len(over)
        for down in over:
            array[members.index(down)].over = 0
            self.detach(down)
        if self.layer >= 0:
            return self._forward_layer(data, info, over)
        return sum(1 for down in over if self._each(down, data, info))

    def _fallback(self, data: bytes, info: RtpInfo) -> int:
        """An extension block the compiled loop does not rewrite: each member's Python path,
        its state taken out of C and put back."""
        self.fallbacks += 1
        sent = 0
        for i, down in enumerate(self.members):
            self._pull(i, down)
            if self.layer >= 0:
                sent += self._forward_layer(data, info, (down,))
            elif self._each(down, data, info):
                sent += 1
            self._push(i, down)
        return sent

    def _refresh(self, downs: Sequence[SteadyDownTrack], version: int) -> None:
        present = set(map(id, downs))
        layer = self.layer
        for down in [d for d in self.members if id(d) not in present or not _settled(d, layer)]:
            self.detach(down)
        self._version = version
        self._python = [d for d in downs if d._copies is not self]

    def _maintain(self, downs: Sequence[SteadyDownTrack], version: int) -> None:
        """Members whose sink no longer sends steadily leave; steady Python ones join."""
        self._tick = REFRESH
        if version != self._version:
            self._refresh(downs, version)
        for i in range(len(self.members) - 1, -1, -1):
            down = self.members[i]
            found = _steady(down, self.layer)
            if (
                found is None
                or found[0] is not self.batch
                or found[1] is not self._destinations[i]
                or getattr(found[2], "transport_sequence", None) is not self._bound[i][0]
            ):
                self.detach(down)
        for down in list(self._python):
            if down._copies is None:
                found = _steady(down, self.layer)
                if found is not None and found[0] is self.batch:
                    self.attach(down, found)

    def attach(self, down: SteadyDownTrack, found: Steady) -> None:
        rewriter = down._rewriter
        form = rewriter.compiled_form() if rewriter is not None else None
        if rewriter is None or form is None:
            return
        i = len(self.members)
        if i == self._capacity:
            grown = self._ffi.new("kr_copy[]", 2 * self._capacity)
            self._ffi.memmove(grown, self._array, self._ffi.sizeof("kr_copy") * i)
            self._array, self._capacity = grown, 2 * self._capacity
            self._call.copies = grown
        ssrc, pt_map, one_map, slot, mid = form
        _, destination, sink = found
        copy = self._array[i]
        copy.session = destination[1]
        copy.ssrc = ssrc
        copy.pt_map = [pt_map.get(pt, 0xFF) for pt in range(128)]
        copy.one_map = one_map
        copy.slot, copy.slot_len = slot.ljust(3, b"\0"), len(slot)
        copy.mid, copy.mid_len = mid.ljust(17, b"\0"), len(mid)
        copy.addr, copy.addrlen = destination[2].ljust(28, b"\0"), destination[3]
        copy.sent_packets = copy.sent_bytes = copy.send_errors = copy.last_head_len = 0
        copy.first_seq = (rewriter.last_out_seq + 1) & _SEQ
        copy.over = copy.budget_packets = copy.budget_bytes = 0
        self._bound.append(self._bind(copy, slot, sink, getattr(down.sink, "budget", None)))
        self.members.append(down)
        self._destinations.append(destination)
        self._sinks.append(sink)
        self._push(i, down)
        down._copies = self
        self._changed()
        if down.cache is not None and self.ring is not None:
            replay = down.cache.replay
            if replay is None:
                replay = down.cache.replay = Replay(rewriter)
            munger = down.layers.munger if down.layers is not None else None
            if munger is not None and munger.key:
                replay.open(rewriter, self.ring, munger.pid_offset, munger.tl0_offset)
            else:
                replay.open(rewriter, self.ring)

    def _bind(
        self, copy: Any, slot: bytes, sink: Any, budget: Any
    ) -> tuple[Any, Any, tuple[Any, ...]]:
        """Point `copy` at its transport's TransportSequence (where its slot is that one's
        element: else `stamp` leaves the packet as it is) and its send budget's cell."""
        ffi, kept = self._ffi, []
        sequence = getattr(sink, "transport_sequence", None)
        if sequence is not None and slot[:1] == bytes((sequence.one,)):
            kept += [
                ffi.from_buffer("int64_t[]", sequence.next),
                ffi.from_buffer("double[]", sequence.times),
                ffi.from_buffer("uint32_t[]", sequence.sizes),
            ]
            copy.tw_next, copy.tw_times, copy.tw_sizes = kept
        else:
            copy.tw_next = copy.tw_times = copy.tw_sizes = ffi.NULL
        if budget is not None:
            kept.append(ffi.from_buffer("double[]", budget.cell))
            copy.budget = kept[-1]
        else:
            copy.budget = ffi.NULL
        return sequence, budget, tuple(kept)

    def detach(self, down: SteadyDownTrack) -> None:
        """Back to the Python path, its state taken out of C."""
        i = self.members.index(down)
        self._pull(i, down)
        last = len(self.members) - 1
        if i != last:  # the last member takes the hole
            size = self._ffi.sizeof("kr_copy")
            self._ffi.memmove(self._ffi.addressof(self._array, i), self._array + last, size)
            self.members[i] = self.members[last]
            self._destinations[i] = self._destinations[last]
            self._sinks[i] = self._sinks[last]
            self._bound[i] = self._bound[last]
        self.members.pop()
        self._destinations.pop()
        self._sinks.pop()
        self._bound.pop()
        down._copies = None
        self._changed()
        if down.cache is not None and down.cache.replay is not None:
            down.cache.replay.close()

    def sync(self, down: SteadyDownTrack) -> None:
        """Bring `down`'s rewriter and sink counters up to date from C."""
        self._pull(self.members.index(down), down)

    def sync_all(self) -> None:
        for i, down in enumerate(self.members):
            self._pull(i, down)

    def _changed(self) -> None:
        self._held = tuple(self._destinations)
        self._call.n = len(self.members)
        self._clocked = any(s is not None or b is not None for s, b, _ in self._bound)
        self._version = -1  # the Python list is made again at the next packet

    def _pull(self, i: int, down: SteadyDownTrack) -> None:
        copy, rewriter = self._array[i], down._rewriter
        assert rewriter is not None
        rewriter.restore(
            (
                copy.seq_offset,
                copy.ts_offset,
                copy.last_out_seq,
                copy.last_out_ts,
                copy.packets,
                copy.octets,
            )
        )
        cache = down.cache
        if cache is not None and cache.replay is not None and cache.replay.spans:
            cache.replay.spans[-1][5] = copy.first_seq
        sink = self._sinks[i]
        if sink is not None:
            sink.sent_packets += copy.sent_packets
            sink.sent_bytes += copy.sent_bytes
            sink.send_errors += copy.send_errors
        copy.sent_packets = copy.sent_bytes = copy.send_errors = 0
        budget = self._bound[i][1]
        if budget is not None:
            budget.offered += copy.budget_packets
            budget.passed += copy.budget_bytes
            copy.budget_packets = copy.budget_bytes = 0
        layers = down.layers
        if layers is not None:
            layers.floor = copy.floor
            if copy.last_head_len:
                head = bytes(self._ffi.buffer(copy.last_head, copy.last_head_len - 1))
                layers.last_sent = _HEADER + head
                copy.last_head_len = 0

    def _push(self, i: int, down: SteadyDownTrack) -> None:
        copy, rewriter = self._array[i], down._rewriter
        assert rewriter is not None
        seq_offset, ts_offset, last_seq, last_ts, packets, octets = rewriter.state()
        copy.seq_offset, copy.ts_offset = seq_offset, ts_offset
        copy.last_out_seq, copy.last_out_ts = last_seq, last_ts
        copy.packets, copy.octets = packets, octets
        layers = down.layers
        copy.layered = layers is not None
        if layers is not None:
            copy.floor = layers.floor
            munger = layers.munger
            copy.munge = munger is not None and munger.key != 0
            if munger is not None:
                copy.pid_offset, copy.tl0_offset = munger.pid_offset, munger.tl0_offset
