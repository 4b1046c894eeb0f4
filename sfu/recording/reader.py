"""Reading recordings: `verify` without any key, `decrypt` with the operator's private key.

Both walk the file chunk by chunk from a binary stream; every failure is a RecordingFormatError
that names the chunk where the file breaks. A file without its FINAL chunk (a crash, a copy cut
short) fails too unless the caller accepts a partial recording: then its complete chunks open.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sfu.recording import keys
from sfu.recording.container import (
    CHUNK_HEAD,
    DIGEST_BYTES,
    FINAL,
    HEADER_LENGTH,
    MAGIC,
    MAX_CHUNK_BYTES,
    MAX_HEADER_BYTES,
    TAG_BYTES,
    Record,
    RecordingFormatError,
    StoredChunk,
    chain,
    decode_records,
    header_digest,
    open_chunk,
    parse_header,
)


class RecordingTruncated(RecordingFormatError):
    """The file ends early: after a complete chunk (a crash) or inside one."""


@dataclass
class Verification:
    header: dict[str, Any]
    chunks: int
    complete: bool


def read_header(stream: IO[bytes]) -> tuple[dict[str, Any], bytes]:
    """The header and the digest the chain starts from."""
    head = stream.read(len(MAGIC) + HEADER_LENGTH.size)
    if len(head) == len(MAGIC) + HEADER_LENGTH.size and head.startswith(MAGIC):
        (length,) = HEADER_LENGTH.unpack_from(head, len(MAGIC))
        head += stream.read(min(length, MAX_HEADER_BYTES + 1))
    header, _ = parse_header(head)
    return header, header_digest(head)


def _chunks(stream: IO[bytes], digest: bytes) -> Iterator[tuple[StoredChunk, bytes]]:
    """Each stored chunk with the chain digest before it; stops at FINAL or raises."""
    expected = 0
    while True:
        head = stream.read(CHUNK_HEAD.size)
        if not head:
            raise RecordingTruncated(
                "the file ends without its final chunk (truncated, or the server stopped"
                " before finishing it)",
                expected,
            )
        if len(head) < CHUNK_HEAD.size:
            raise RecordingTruncated("truncated in the chunk header", expected)
        sequence, flags, length = CHUNK_HEAD.unpack(head)
        if sequence != expected:
            raise RecordingFormatError(
                f"found chunk {sequence} where chunk {expected} belongs (removed or reordered)",
                expected,
            )
        if length < TAG_BYTES or length > MAX_CHUNK_BYTES:
            raise RecordingFormatError("implausible chunk length (damaged)", expected)
        body = stream.read(length + DIGEST_BYTES)
        if len(body) < length + DIGEST_BYTES:
            raise RecordingTruncated("truncated inside the chunk", expected)
        ciphertext, stored = body[:length], body[length:]
        if chain(digest, head, ciphertext) != stored:
            raise RecordingFormatError(
                "digest mismatch (altered, or a chunk before it removed)", expected
            )
        yield StoredChunk(sequence, flags, ciphertext, stored, head), digest
        digest = stored
        expected += 1
        if flags & FINAL:
            if stream.read(1):
                raise RecordingFormatError("data after the final chunk", expected)
            return


def verify(stream: IO[bytes], *, allow_partial: bool = False) -> Verification:
    header, digest = read_header(stream)
    count = 0
    try:
        for _chunk, _prev in _chunks(stream, digest):
            count += 1
    except RecordingTruncated:
        if not allow_partial:
            raise
        return Verification(header, count, complete=False)
    return Verification(header, count, complete=True)


def decrypt(
    stream: IO[bytes], private: X25519PrivateKey, *, allow_partial: bool = False
) -> tuple[dict[str, Any], Iterator[Record]]:
    """The header and the records; the data key is unwrapped before anything is yielded."""
    header, digest = read_header(stream)
    aead = AESGCM(keys.unwrap(header.get("key"), private))

    def records() -> Iterator[Record]:
        try:
            for chunk, prev in _chunks(stream, digest):
                yield from decode_records(open_chunk(aead, prev, chunk), chunk.sequence)
        except RecordingTruncated:
            if not allow_partial:
                raise

    return header, records()
