"""Chunk sealing for one recording, sans-I/O: records in, sealed bytes out.

`RecordingWriter` batches records and hands back the bytes to append whenever a chunk is full
(or the caller flushes); the caller owns the file. Each recording gets a fresh data key, wrapped
in the header for the operator's public key; the writer keeps it only in memory.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sfu.recording import keys
from sfu.recording.container import (
    FINAL,
    NOTE,
    RECORD_HEAD,
    encode_header,
    encode_record,
    header_digest,
    seal_chunk,
)


class RecordingWriter:
    def __init__(
        self, header: dict[str, Any], recipient: X25519PublicKey, chunk_bytes: int = 64 * 1024
    ) -> None:
        data_key = keys.new_data_key()
        self.prefix = encode_header({**header, "key": keys.wrap(data_key, recipient)})
        self._aead = AESGCM(data_key)
        self._digest = header_digest(self.prefix)
        self._sequence = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.chunk_bytes = chunk_bytes
        self.finished = False

    @property
    def chunks(self) -> int:
        return self._sequence

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def add(self, kind: int, track: int, arrival: float, body: bytes) -> bytes | None:
        """Buffer one record; the sealed chunk to append when the batch is full, else None."""
        # Head and body kept apart: the packet is copied once, when the chunk is joined.
        head = RECORD_HEAD.pack(kind, track, arrival, len(body))
        self._pending += (head, body)
        self._pending_bytes += len(head) + len(body)
        if self._pending_bytes >= self.chunk_bytes:
            return self.flush()
        return None

    def flush(self, flags: int = 0) -> bytes | None:
        """Seal what is buffered (nothing to seal: None, unless this is the final chunk)."""
        if self.finished or (not self._pending and not flags & FINAL):
            return None
        plaintext = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        chunk, self._digest = seal_chunk(self._aead, self._digest, self._sequence, flags, plaintext)
        self._sequence += 1
        if flags & FINAL:
            self.finished = True
        return chunk

    def finish(self, note: bytes, arrival: float) -> bytes | None:
        """The last chunk: what is buffered plus the stop note, marked FINAL."""
        if self.finished:
            return None
        self._pending.append(encode_record(NOTE, 0, arrival, note))
        return self.flush(FINAL)
