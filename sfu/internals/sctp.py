"""Data channels' SCTP, bounded: reassembly held within the advertised receive window, and an
association that starts only where data is allowed.

aiortc 1.16 lowers its advertised receive window for every DATA chunk it buffers but never
refuses one: a sender that ignores the window (aiortc's own sender does) makes it hold every
fragment of a message of any size. `receive_data_chunk_bounded` replaces
`RTCSctpTransport._receive_data_chunk` (process-wide, `install_server_patches`): once the
buffered bytes pass the window, the partial messages of the stream that overflowed it (then of
others, until back within it) are dropped, their later fragments discarded, and each drop is
reported to the callback `on_data_dropped` registered for that transport.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc.rtcsctptransport import (
    SCTP_DATA_UNORDERED,
    DataChunk,
    InboundStream,
    RTCSctpCapabilities,
    RTCSctpTransport,
)
from aiortc.utils import uint16_add, uint16_gt

_dropped: weakref.WeakKeyDictionary[RTCSctpTransport, Callable[[], None]] = (
    weakref.WeakKeyDictionary()
)


def on_data_dropped(transport: RTCSctpTransport, callback: Callable[[], None]) -> None:
    """Call `callback` for each stream whose partial messages `transport` drops."""
    _dropped[transport] = callback


def is_leftover(stream: InboundStream, chunk: DataChunk) -> bool:
    """A fragment of an ordered message already dropped: its sequence number is behind the one
    the stream waits for (a delivered message's fragments never come again: TSNs dedupe)."""
    ordered = not chunk.flags & SCTP_DATA_UNORDERED
    return ordered and uint16_gt(stream.sequence_number, chunk.stream_seq)


def drop_partial(stream: InboundStream) -> int:
    """Drop everything `stream` holds; its next ordered message is the one after the last
    dropped, so later fragments of the dropped ones are leftovers. Returns the bytes freed."""
    freed = sum(len(chunk.user_data) for chunk in stream.reassembly)
    for chunk in stream.reassembly:
        ordered = not chunk.flags & SCTP_DATA_UNORDERED
        if ordered and not uint16_gt(stream.sequence_number, chunk.stream_seq):
            stream.sequence_number = uint16_add(chunk.stream_seq, 1)
    stream.reassembly = []
    return freed


def _within_window(transport: RTCSctpTransport, first: int) -> int:
    """Drop partial messages, stream `first`'s first, until the buffered bytes fit the window
    again; returns how many streams were dropped."""
    streams = transport._inbound_streams
    order = [first, *(sid for sid in streams if sid != first)]
    dropped = 0
    for stream_id in order:
        if transport._advertised_rwnd >= 0:
            break
        stream = streams[stream_id]
        if stream.reassembly:
            transport._advertised_rwnd += drop_partial(stream)
            dropped += 1
    return dropped


async def receive_data_chunk_bounded(transport: RTCSctpTransport, chunk: DataChunk) -> None:
    # aiortc's _receive_data_chunk, plus the leftover check and the window bound.
    transport._sack_needed = True
    if transport._mark_received(chunk.tsn):
        return
    stream = transport._get_inbound_stream(chunk.stream_id)
    if is_leftover(stream, chunk):
        return
    stream.add_chunk(chunk)
    transport._advertised_rwnd -= len(chunk.user_data)
    for message in stream.pop_messages():
        transport._advertised_rwnd += len(message[2])
        await transport._receive(*message)
    if transport._advertised_rwnd < 0:
        callback = _dropped.get(transport)
        for _ in range(_within_window(transport, chunk.stream_id)):
            if callback is not None:
                callback()
    await transport._reset_deferred_streams()


StartSctp = Callable[[RTCSctpCapabilities | None, int], Coroutine[Any, Any, None]]


def gate_association(transport: RTCSctpTransport, allowed: Callable[[], bool]) -> None:
    """Start `transport`'s association only while `allowed()`: the peer connection calls
    `start` after each negotiation, so a refusal now is not one for good."""
    start: StartSctp = transport.start

    async def start_if_allowed(remote_caps: RTCSctpCapabilities | None, port: int) -> None:
        if allowed():
            await start(remote_caps, port)

    transport.start = start_if_allowed  # type: ignore[method-assign, assignment]
