"""The recording file format, sans-I/O (docs/recording.md).

    file   = MAGIC, u32 header length, header JSON, chunk*
    chunk  = u64 sequence, u8 flags, u32 length, ciphertext (length bytes), 32-byte chain digest

The header is clear text (id, room, start time, the wrapped data key) so `verify` needs no key.
Each chunk is a batch of records sealed with AES-256-GCM under the recording's data key: the
nonce is the chunk's sequence number and the associated data the chain digest before it, its
sequence number and flags, so a chunk moved, dropped or replayed does not open. The chain digest
(SHA-256 over the previous digest and the chunk as stored) lets `verify` find a flipped byte, a
missing chunk or a truncation without the key. The last chunk of a finished recording carries
FINAL; a file without one was cut short (a crash: its complete chunks still open).

Records inside a chunk: u8 type, u8 track index, f64 arrival (unix seconds), u32 length, body.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"KEYROOM-REC\x01"
FORMAT = 1
FINAL = 0x01
HEADER_LENGTH = struct.Struct(">I")
CHUNK_HEAD = struct.Struct(">QBI")
RECORD_HEAD = struct.Struct(">BBdI")
DIGEST_BYTES = 32
TAG_BYTES = 16
MAX_HEADER_BYTES = 64 * 1024
MAX_CHUNK_BYTES = 16 * 1024 * 1024

# Record types.
TRACK = 1  # JSON: what the track is (sid, kind, codec, clock rate, publisher, encryption)
RTP = 2  # one RTP packet exactly as received
SENDER_REPORT = 3  # u64 NTP time, u32 RTP timestamp: maps the track's clock to wall time
NOTE = 4  # JSON: why the recording stopped

SENDER_REPORT_BODY = struct.Struct(">QI")


class RecordingFormatError(Exception):
    """A damaged, truncated or foreign file; `chunk` is the sequence number where it breaks."""

    def __init__(self, message: str, chunk: int | None = None) -> None:
        super().__init__(message if chunk is None else f"chunk {chunk}: {message}")
        self.chunk = chunk


def encode_header(header: dict[str, Any]) -> bytes:
    body = orjson.dumps({"format": FORMAT, **header}, option=orjson.OPT_SORT_KEYS)
    return MAGIC + HEADER_LENGTH.pack(len(body)) + body


def header_digest(prefix: bytes) -> bytes:
    """The chain's start: the digest of the whole header as stored."""
    return hashlib.sha256(prefix).digest()


def parse_header(head: bytes) -> tuple[dict[str, Any], int]:
    """The header and the prefix's length, from the first bytes of a file."""
    if len(head) < len(MAGIC) + HEADER_LENGTH.size or not head.startswith(MAGIC):
        raise RecordingFormatError("not a keyroom recording (bad magic)")
    (length,) = HEADER_LENGTH.unpack_from(head, len(MAGIC))
    start = len(MAGIC) + HEADER_LENGTH.size
    if length > MAX_HEADER_BYTES or len(head) < start + length:
        raise RecordingFormatError("the header is truncated or too large")
    try:
        header = orjson.loads(head[start : start + length])
    except orjson.JSONDecodeError:
        raise RecordingFormatError("the header is not JSON") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RecordingFormatError("unknown recording format version")
    return header, start + length


def _nonce(sequence: int) -> bytes:
    return bytes(4) + sequence.to_bytes(8, "big")


def _aad(prev: bytes, sequence: int, flags: int) -> bytes:
    return prev + sequence.to_bytes(8, "big") + bytes([flags])


def chain(prev: bytes, head: bytes, ciphertext: bytes) -> bytes:
    return hashlib.sha256(prev + head + ciphertext).digest()


def seal_chunk(
    aead: AESGCM, prev: bytes, sequence: int, flags: int, plaintext: bytes
) -> tuple[bytes, bytes]:
    """The chunk as stored, and the new chain digest."""
    ciphertext = aead.encrypt(_nonce(sequence), plaintext, _aad(prev, sequence, flags))
    head = CHUNK_HEAD.pack(sequence, flags, len(ciphertext))
    digest = chain(prev, head, ciphertext)
    return head + ciphertext + digest, digest


def open_chunk(aead: AESGCM, prev: bytes, chunk: StoredChunk) -> bytes:
    try:
        return aead.decrypt(
            _nonce(chunk.sequence), chunk.ciphertext, _aad(prev, chunk.sequence, chunk.flags)
        )
    except InvalidTag:
        raise RecordingFormatError(
            "does not decrypt (altered or out of place)", chunk.sequence
        ) from None


@dataclass(frozen=True)
class StoredChunk:
    sequence: int
    flags: int
    ciphertext: bytes
    digest: bytes
    head: bytes

    @property
    def final(self) -> bool:
        return bool(self.flags & FINAL)


def encode_record(kind: int, track: int, arrival: float, body: bytes) -> bytes:
    return RECORD_HEAD.pack(kind, track, arrival, len(body)) + body


@dataclass(frozen=True)
class Record:
    kind: int
    track: int
    arrival: float
    body: bytes


def decode_records(plaintext: bytes, sequence: int) -> list[Record]:
    records, offset, size = [], 0, len(plaintext)
    while offset < size:
        if offset + RECORD_HEAD.size > size:
            raise RecordingFormatError("a record header is cut short", sequence)
        kind, track, arrival, length = RECORD_HEAD.unpack_from(plaintext, offset)
        offset += RECORD_HEAD.size
        if offset + length > size:
            raise RecordingFormatError("a record is cut short", sequence)
        records.append(Record(kind, track, arrival, plaintext[offset : offset + length]))
        offset += length
    return records
