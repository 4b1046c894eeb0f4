"""End-to-end encrypted media frames, the format keyroom.js (static/e2ee.js) uses too.

    encrypted = clear header || AES-GCM(key, iv, rest, aad=clear header) || iv (12) || 12 || index

The clear header is what the SFU must read: the first 10 bytes of a VP8 keyframe, 3 of a delta
frame (frame tag and, for keyframes, the start code and size) and the first byte of an Opus frame
(its TOC), as LiveKit's frame cryptor does; the RTP payload descriptor is added after encryption
by the packetizer, so keyframe detection, layer switching and NACK work on encrypted media.

Keys: PBKDF2-HMAC-SHA256 over the passphrase (salt: the room name, 100,000 rounds) gives the
room's base key, or the application supplies the 32 bytes; each participant's key is
HKDF-SHA256(base, salt = its identity); key index n is that key ratcheted n times (HKDF again),
so a sender can move on when someone leaves and receivers follow it by the index byte.

Rotation, as the page (static/e2ee-frame.js, e2ee.js) does it: when a participant leaves, each
participant ratchets its own sending index one step (`rekey()`); a receiver accepts a sender's
newest index, and an older one only for GRACE_SECONDS after the newer one first arrived, then
drops it. One FrameCryptor per participant: the index and what it has seen are its own.
"""

from __future__ import annotations

import hashlib
import os
import queue
import time
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

IV_BYTES = 12
TRAILER_BYTES = IV_BYTES + 2
PBKDF2_ROUNDS = 100_000
GRACE_SECONDS = 5.0  # e2ee-frame.js GRACE_MS


class E2EEError(Exception):
    """A frame that does not decrypt: wrong key, damaged, or not encrypted at all."""


def base_key_from_passphrase(passphrase: str, room: str) -> bytes:
    return hashlib.pbkdf2_hmac(
        "sha256", passphrase.encode(), b"keyroom e2ee/" + room.encode(), PBKDF2_ROUNDS, 32
    )


def _hkdf(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(SHA256(), 32, salt=salt, info=info).derive(key)


def clear_bytes(kind: str, frame: bytes) -> int:
    """How many leading bytes stay in clear (VP8 keyframe 10, delta 3; Opus 1)."""
    if kind == "audio":
        return 1
    return 10 if frame and frame[0] & 0x01 == 0 else 3


class FrameCryptor:
    """Per-participant frame keys from one room key; `index` is the sender's ratchet step."""

    def __init__(self, base_key: bytes) -> None:
        if len(base_key) != 32:
            raise ValueError("an E2EE base key is 32 bytes")
        self._base = base_key
        self._keys: dict[tuple[str, int], AESGCM] = {}
        self.index = 0  # own sending key index: moves on when someone leaves
        self._newest: dict[str, tuple[int, float]] = {}  # sender -> (newest index, since)

    @classmethod
    def from_passphrase(cls, passphrase: str, room: str) -> FrameCryptor:
        return cls(base_key_from_passphrase(passphrase, room))

    def raw_key(self, identity: str, index: int) -> bytes:
        """The AES-256 key of `identity`'s frames under key `index`."""
        raw = _hkdf(self._base, identity.encode(), b"keyroom e2ee frame key")
        for _ in range(index):
            raw = _hkdf(raw, b"", b"keyroom e2ee ratchet")
        return raw

    def _key(self, identity: str, index: int) -> AESGCM:
        cached = self._keys.get((identity, index))
        if cached is None:
            cached = self._keys[(identity, index)] = AESGCM(self.raw_key(identity, index))
        return cached

    def rekey(self) -> int:
        """Someone left: ratchet the own sending key one step on; receivers follow the index."""
        self.index = (self.index + 1) & 0xFF
        return self.index

    def accepts(self, identity: str, index: int, now: float) -> bool:
        """Whether frames under `index` are still accepted from `identity` at `now` (seconds):
        its newest index always, an older one for GRACE_SECONDS after a newer one appeared."""
        newest = self._newest.get(identity)
        if newest is None or index > newest[0]:
            self._newest[identity] = (index, now)
            return True
        if index == newest[0] or now - newest[1] < GRACE_SECONDS:
            return True
        for stale in [k for k in self._keys if k[0] == identity and k[1] < newest[0]]:
            del self._keys[stale]  # past the grace period: the old keys go
        return False

    def encrypt(self, identity: str, kind: str, frame: bytes, index: int | None = None) -> bytes:
        """Encrypt under `index`, by default the own current one (`self.index`)."""
        index = self.index if index is None else index
        clear = min(clear_bytes(kind, frame), len(frame))
        iv = os.urandom(IV_BYTES)
        sealed = self._key(identity, index).encrypt(iv, frame[clear:], frame[:clear])
        return frame[:clear] + sealed + iv + bytes([IV_BYTES, index & 0xFF])

    def decrypt(self, identity: str, kind: str, frame: bytes, now: float | None = None) -> bytes:
        """`now` (seconds, monotonic) applies the grace period of old key indexes; None (an
        offline export) accepts every index."""
        if len(frame) < TRAILER_BYTES + 16 or frame[-2] != IV_BYTES:
            raise E2EEError("not an encrypted frame")
        index = frame[-1]
        if now is not None and not self.accepts(identity, index, now):
            raise E2EEError(f"key index {index} of {identity} has expired")
        iv = frame[-TRAILER_BYTES:-2]
        body = frame[:-TRAILER_BYTES]
        clear = min(clear_bytes(kind, body), len(body) - 16)
        try:
            plain = self._key(identity, index).decrypt(iv, body[clear:], body[:clear])
        except InvalidTag:
            raise E2EEError("the frame does not decrypt with this key") from None
        return body[:clear] + plain


def encrypt_sender(sender: Any, cryptor: FrameCryptor, identity: str, kind: str) -> None:
    """Encrypt every frame an aiortc sender sends (VP8 or Opus), before its packetizer: the
    encoder's payloads are reassembled into the frame, sealed, and packetized again."""
    from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload

    encoded = sender._next_encoded_frame  # noqa: SLF001 - aiortc has no insertable streams
    picture_id = 0

    async def next_encrypted(codec: Any) -> Any:
        nonlocal picture_id
        frame = await encoded(codec)
        if frame is None:
            return None
        if kind == "video":
            plain = b"".join(vp8_depayload(p) for p in frame.payloads)
            picture_id = (picture_id + 1) & 0x7FFF
            frame.payloads = Vp8Encoder._packetize(  # noqa: SLF001
                cryptor.encrypt(identity, kind, plain), picture_id
            )
        else:
            frame.payloads = [cryptor.encrypt(identity, kind, p) for p in frame.payloads]
        return frame

    sender._next_encoded_frame = next_encrypted  # noqa: SLF001


class _DecryptingQueue(queue.Queue[Any]):
    """Stands in for an aiortc receiver's decoder queue: frames are decrypted on their way to
    the decoder thread; one that does not decrypt is dropped and counted."""

    def __init__(self, cryptor: FrameCryptor, identity: Callable[[], str], kind: str) -> None:
        super().__init__()
        self.cryptor, self.identity, self.kind = cryptor, identity, kind
        self.failures = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            _codec, frame = item
            try:
                frame.data = self.cryptor.decrypt(
                    self.identity(), self.kind, frame.data, time.monotonic()
                )
            except E2EEError:
                self.failures += 1
                return
        super().put(item, block, timeout)


DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"  # aiortc 1.16: set in __init__, read by receive()


def decrypt_receiver(
    receiver: Any, cryptor: FrameCryptor, identity: Callable[[], str], kind: str
) -> _DecryptingQueue:
    """Decrypt every frame an aiortc receiver decodes; call before it starts receiving (the
    client does it in its "track" event). `identity`: the frames' author, looked up per frame."""
    current = getattr(receiver, DECODER_QUEUE, None)
    if isinstance(current, _DecryptingQueue):  # a recycled section: same receiver
        current.identity = identity
        return current
    if not isinstance(current, queue.Queue):
        raise RuntimeError("aiortc's receiver has no decoder queue to decrypt in")
    decrypting = _DecryptingQueue(cryptor, identity, kind)
    setattr(receiver, DECODER_QUEUE, decrypting)
    return decrypting
