"""The E2EE frame format (signaling/client/e2ee.py) and the depacketizer export relies on."""

from __future__ import annotations

import os
import struct

import pytest
from aiortc.codecs.vpx import Vp8Encoder

from sfu.keyframe import is_keyframe
from sfu.recording.depacketize import opus_frames, vp8_frames, vp8_size
from signaling.client.e2ee import E2EEError, FrameCryptor, clear_bytes

KEYFRAME = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00]) + os.urandom(3000)
DELTA = bytes([0x31, 0x02, 0x00]) + os.urandom(800)


def test_a_frame_round_trips_and_keeps_its_codec_header_in_clear() -> None:
    cryptor = FrameCryptor.from_passphrase("pass", "room")
    for kind, frame, clear in (("video", KEYFRAME, 10), ("video", DELTA, 3), ("audio", DELTA, 1)):
        sealed = cryptor.encrypt("alice", kind, frame)
        assert sealed[:clear] == frame[:clear] and sealed[clear:-14] != frame[clear:]
        assert clear_bytes(kind, frame) == clear
        assert cryptor.decrypt("alice", kind, sealed) == frame


def test_the_sfu_still_finds_keyframes_in_encrypted_vp8() -> None:
    cryptor = FrameCryptor.from_passphrase("pass", "room")
    first = Vp8Encoder._packetize(cryptor.encrypt("alice", "video", KEYFRAME), 1)[0]  # noqa: SLF001
    assert is_keyframe("video/vp8", first)
    delta = Vp8Encoder._packetize(cryptor.encrypt("alice", "video", DELTA), 2)[0]  # noqa: SLF001
    assert not is_keyframe("video/vp8", delta)


def test_wrong_passphrase_identity_index_or_damage_do_not_decrypt() -> None:
    right = FrameCryptor.from_passphrase("pass", "room")
    sealed = right.encrypt("alice", "video", KEYFRAME)
    for other, identity in (
        (FrameCryptor.from_passphrase("wrong", "room"), "alice"),
        (FrameCryptor.from_passphrase("pass", "other-room"), "alice"),
        (right, "bob"),
    ):
        with pytest.raises(E2EEError):
            other.decrypt(identity, "video", sealed)
    damaged = bytearray(sealed)
    damaged[20] ^= 1
    with pytest.raises(E2EEError):
        right.decrypt("alice", "video", bytes(damaged))
    with pytest.raises(E2EEError, match="not an encrypted frame"):
        right.decrypt("alice", "video", KEYFRAME[:20])
    ratcheted = right.encrypt("alice", "video", DELTA, index=3)
    assert ratcheted[-1] == 3 and right.decrypt("alice", "video", ratcheted) == DELTA
    with pytest.raises(ValueError):
        FrameCryptor(b"short")


def _rtp(seq: int, ts: int, payload: bytes, marker: bool, pt: int = 96) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts, 1) + payload


def test_vp8_frames_are_reassembled_in_order_and_incomplete_ones_left_out() -> None:
    packets = []
    seq = 65530  # wraps during the test
    frames = [KEYFRAME, DELTA, DELTA, DELTA]
    for n, frame in enumerate(frames):
        payloads = Vp8Encoder._packetize(frame, n)  # noqa: SLF001
        for i, payload in enumerate(payloads):
            packets.append(_rtp(seq, 3000 * n, payload, i == len(payloads) - 1))
            seq += 1
    lost = packets[1]  # the middle of the keyframe's three packets
    shuffled = packets[::-1] + packets[:2]  # reversed, with duplicates
    result = vp8_frames(shuffled)
    assert [f.data for f in result.frames] == frames and result.dropped == 0
    assert result.frames[0].keyframe and not result.frames[1].keyframe
    assert vp8_size(result.frames[0].data) == (320, 240)
    partial = vp8_frames([p for p in packets if p is not lost])
    assert [f.data for f in partial.frames] == frames[1:] and partial.dropped == 1
    garbage = vp8_frames([b"\x80", b"junk"])
    assert garbage.frames == [] and garbage.dropped == 2


def test_opus_frames_are_one_per_packet() -> None:
    packets = [_rtp(n, 960 * n, bytes([0xFC, n]), True, 111) for n in range(5)]
    assert [f.data[1] for f in opus_frames(reversed(packets)).frames] == [0, 1, 2, 3, 4]


def test_a_load_test_clip_is_encrypted_frame_by_frame() -> None:
    """`keyroom loadtest --e2ee`: the replayed clip, encrypted as its publisher sends it."""
    from aiortc.codecs.vpx import vp8_depayload

    from loadtest.clip import Clip, ClipFrame, encrypted_clip

    plain = [KEYFRAME, DELTA]
    clip = Clip(
        "video",
        "video/VP8",
        90000,
        1 / 15,
        tuple(
            ClipFrame(tuple(Vp8Encoder._packetize(f, n)), n == 0)  # noqa: SLF001
            for n, f in enumerate(plain)
        ),
    )
    cryptor = FrameCryptor(bytes(range(32)))
    sealed = encrypted_clip(clip, cryptor, "pub-0")
    assert is_keyframe("video/vp8", sealed.frames[0].payloads[0]) and sealed.frames[0].keyframe
    for frame, original in zip(sealed.frames, plain, strict=True):
        data = b"".join(vp8_depayload(p) for p in frame.payloads)
        assert data != original and cryptor.decrypt("pub-0", "video", data) == original


def _rfc5869(key: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 to 32 bytes written out from RFC 5869, as WebCrypto's HKDF computes it."""
    import hashlib
    import hmac

    prk = hmac.new(salt or bytes(32), key, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


# e2ee-frame.js FrameKeys(bytes 0..31).key("alice", n), exported from WebCrypto under node.
PAGE_KEYS = [
    "15818feb84123ed05bf67731b04925f42137bf08c7c2eaa735c781d4d5e893db",
    "078171e27d09672b955dda1f98f4ca9c37171b454eecd5a5cdba84c4f7f91c8b",
    "6dc0d01e3923b88b838e4d231e3483a617522b2e2687aa16c43ea5254215a5c3",
]


def test_the_ratchet_derives_the_pages_keys() -> None:
    cryptor = FrameCryptor(bytes(range(32)))
    raw = _rfc5869(bytes(range(32)), b"alice", b"keyroom e2ee frame key")
    for index, expected in enumerate(PAGE_KEYS):
        assert cryptor.raw_key("alice", index).hex() == expected == raw.hex()
        raw = _rfc5869(raw, b"", b"keyroom e2ee ratchet")


def test_rekey_moves_the_sending_index_and_receivers_follow_it() -> None:
    alice, bob = FrameCryptor(bytes(32)), FrameCryptor(bytes(32))
    frame = b"\x00" + bytes(range(1, 60))
    before = alice.encrypt("alice", "audio", frame)
    assert before[-1] == 0 and alice.rekey() == 1
    after = alice.encrypt("alice", "audio", frame)
    assert after[-1] == 1
    # The index byte is authenticated by the key it names: relabelled, it does not decrypt.
    with pytest.raises(E2EEError):
        FrameCryptor(bytes(32)).decrypt("alice", "audio", before[:-1] + b"\x01", now=0.0)
    assert bob.decrypt("alice", "audio", before, now=0.0) == frame
    assert bob.decrypt("alice", "audio", after, now=1.0) == frame  # the newer index
    assert bob.decrypt("alice", "audio", before, now=5.9) == frame  # late, within the grace
    with pytest.raises(E2EEError, match="expired"):
        bob.decrypt("alice", "audio", before, now=6.0)
    assert ("alice", 0) not in bob._keys  # noqa: SLF001 - the old key is dropped
    assert bob.decrypt("alice", "audio", after, now=100.0) == frame
    # Without `now` (an offline export) every index decrypts; other senders are apart.
    assert bob.decrypt("alice", "audio", before) == frame
    assert bob.accepts("carol", 0, 100.0)


def test_the_index_wraps_as_the_page_does() -> None:
    cryptor = FrameCryptor(bytes(32))
    cryptor.index = 255
    assert cryptor.rekey() == 0
