"""The recording file format: sealed chunks, verify without a key, decrypt with one, and every
kind of damage named by its chunk (issue 16)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from sfu.recording import keys
from sfu.recording.container import FINAL, RTP, SENDER_REPORT, RecordingFormatError
from sfu.recording.reader import RecordingTruncated, decrypt, verify
from sfu.recording.recorder import Quota, Recording
from sfu.recording.writer import RecordingWriter


def _pair() -> tuple[object, object]:
    private_pem, public_pem = keys.generate()
    return keys.load_private(private_pem.decode()), keys.load_public(public_pem.decode())


def _file(chunks: int = 5) -> tuple[bytes, object, list[bytes]]:
    private, public = _pair()
    writer = RecordingWriter({"id": "RC_test", "room": "r"}, public, chunk_bytes=1024)  # type: ignore[arg-type]
    out, bodies = [writer.prefix], []
    n = 0
    while writer.chunks < chunks:
        body = os.urandom(300) + n.to_bytes(4, "big")
        bodies.append(body)
        chunk = writer.add(RTP, 0, 1000.0 + n, body)
        if chunk:
            out.append(chunk)
        n += 1
    final = writer.finish(b'{"stopped":"stopped"}', 2000.0)
    assert final is not None
    out.append(final)
    return b"".join(out), private, bodies


def _offsets(data: bytes) -> list[int]:
    """Where each chunk starts."""
    from sfu.recording.container import CHUNK_HEAD, DIGEST_BYTES, parse_header

    _, offset = parse_header(data)
    starts = []
    while offset < len(data):
        starts.append(offset)
        _, _, length = CHUNK_HEAD.unpack_from(data, offset)
        offset += CHUNK_HEAD.size + length + DIGEST_BYTES
    return starts


def test_a_whole_file_verifies_and_decrypts_to_the_records_in_order() -> None:
    data, private, bodies = _file()
    result = verify(io.BytesIO(data))
    assert result.complete and result.chunks == 6 and result.header["room"] == "r"
    header, records = decrypt(io.BytesIO(data), private)  # type: ignore[arg-type]
    got = list(records)
    assert [r.body for r in got if r.kind == RTP] == bodies
    assert got[-1].kind == 4 and header["id"] == "RC_test"


@pytest.mark.parametrize("where", ["header", "chunk 0", "chunk 3", "last digest"])
def test_one_flipped_byte_anywhere_fails_naming_the_chunk(where: str) -> None:
    data, private, _ = _file()
    starts = _offsets(data)
    position = {
        "header": 20,
        "chunk 0": starts[0] + 30,
        "chunk 3": starts[3] + 100,
        "last digest": len(data) - 1,
    }[where]
    damaged = bytearray(data)
    damaged[position] ^= 0x01
    with pytest.raises(RecordingFormatError) as caught:
        verify(io.BytesIO(bytes(damaged)))
    expected = {"header": 0, "chunk 0": 0, "chunk 3": 3, "last digest": 5}[where]
    if where != "header":
        assert caught.value.chunk == expected and f"chunk {expected}" in str(caught.value)
    with pytest.raises(RecordingFormatError):
        _header, records = decrypt(io.BytesIO(bytes(damaged)), private)  # type: ignore[arg-type]
        list(records)


def test_a_removed_chunk_is_named() -> None:
    data, private, _ = _file()
    starts = _offsets(data)
    cut = data[: starts[2]] + data[starts[3] :]
    with pytest.raises(RecordingFormatError, match="chunk 2:.*removed"):
        verify(io.BytesIO(cut))
    with pytest.raises(RecordingFormatError, match="chunk 2"):
        list(decrypt(io.BytesIO(cut), private)[1])  # type: ignore[arg-type]


def test_a_chunk_moved_with_its_digest_recomputed_still_does_not_decrypt() -> None:
    """verify has no key, so a forger could recompute the public digests; the GCM seal, bound to
    the chain before it, still refuses a reordered chunk."""
    from sfu.recording.container import CHUNK_HEAD, DIGEST_BYTES, chain, header_digest, parse_header

    data, private, _ = _file()
    starts = _offsets(data) + [len(data)]
    pieces = [data[starts[i] : starts[i + 1]] for i in range(len(starts) - 1)]
    pieces[1], pieces[2] = pieces[2], pieces[1]
    _, prefix_end = parse_header(data)
    digest = header_digest(data[:prefix_end])
    rebuilt = [data[:prefix_end]]
    for sequence, piece in enumerate(pieces):
        _, flags, length = CHUNK_HEAD.unpack_from(piece)
        head = CHUNK_HEAD.pack(sequence, flags, length)
        body = piece[CHUNK_HEAD.size : CHUNK_HEAD.size + length]
        digest = chain(digest, head, body)
        rebuilt.append(head + body + digest)
        assert len(piece) == CHUNK_HEAD.size + length + DIGEST_BYTES
    forged = b"".join(rebuilt)
    assert verify(io.BytesIO(forged)).complete
    with pytest.raises(RecordingFormatError, match="chunk 1: does not decrypt"):
        list(decrypt(io.BytesIO(forged), private)[1])  # type: ignore[arg-type]


@pytest.mark.parametrize("cut", ["last byte", "final chunk gone", "inside chunk 3"])
def test_truncation_fails_naming_the_chunk_unless_partial_is_accepted(cut: str) -> None:
    data, private, _ = _file()
    starts = _offsets(data)
    end, chunk = {
        "last byte": (len(data) - 1, 5),
        "final chunk gone": (starts[5], 5),
        "inside chunk 3": (starts[3] + 50, 3),
    }[cut]
    short = data[:end]
    with pytest.raises(RecordingTruncated, match=f"chunk {chunk}"):
        verify(io.BytesIO(short))
    with pytest.raises(RecordingTruncated, match=f"chunk {chunk}"):
        list(decrypt(io.BytesIO(short), private)[1])  # type: ignore[arg-type]
    # What a killed server leaves: the complete chunks still open.
    partial = verify(io.BytesIO(short), allow_partial=True)
    assert not partial.complete and partial.chunks == chunk
    records = list(decrypt(io.BytesIO(short), private, allow_partial=True)[1])  # type: ignore[arg-type]
    assert records and records[-1].kind == RTP


def test_the_wrong_private_key_fails_clearly() -> None:
    data, _private, _ = _file()
    other, _ = _pair()
    with pytest.raises(keys.RecordingKeyError, match="wrong private key"):
        decrypt(io.BytesIO(data), other)  # type: ignore[arg-type]


def test_not_a_recording_and_bad_keys_are_refused() -> None:
    with pytest.raises(RecordingFormatError, match="magic"):
        verify(io.BytesIO(b"GIF89a" + bytes(100)))
    with pytest.raises(keys.RecordingKeyError):
        keys.load_public("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    private_pem, _ = keys.generate()
    with pytest.raises(keys.RecordingKeyError, match="not an X25519 public key|PEM public"):
        keys.load_public(private_pem.decode())


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _recording(tmp_path: Path, **caps: object) -> tuple[Recording, list[str], _Clock, object]:
    private, public = _pair()
    stopped: list[str] = []
    clock = _Clock()
    writer = RecordingWriter({"id": "RC_x", "room": "r"}, public, chunk_bytes=1024)  # type: ignore[arg-type]
    recording = Recording(
        "RC_x",
        str(tmp_path / "RC_x.krec"),
        writer,
        max_bytes=int(caps.get("max_bytes", 1 << 30)),  # type: ignore[call-overload]
        max_duration=float(caps.get("max_duration", 3600.0)),  # type: ignore[arg-type]
        quota=caps.get("quota", Quota(1 << 30)),  # type: ignore[arg-type]
        on_stop=lambda r, why: stopped.append(why),
        wall=clock,
    )
    return recording, stopped, clock, private


def test_the_size_cap_stops_the_recording_with_a_final_chunk_under_the_cap(tmp_path: Path) -> None:
    recording, stopped, _clock, private = _recording(tmp_path, max_bytes=40_000)
    for _ in range(400):
        recording.add(RTP, 0, os.urandom(500))
    assert stopped == ["max_bytes"]
    size = os.path.getsize(recording.path)
    assert size <= 40_000
    with open(recording.path, "rb") as file:
        assert verify(file).complete


def test_the_duration_cap_and_the_quota_stop_it(tmp_path: Path) -> None:
    recording, stopped, clock, _ = _recording(tmp_path, max_duration=10.0)
    recording.add(RTP, 0, b"x" * 100)
    clock.now += 11
    recording.tick()
    assert stopped == ["max_duration"]
    quota = Quota(limit=5000)
    (tmp_path / "q").mkdir()
    recording2, stopped2, _, _ = _recording(tmp_path / "q", quota=quota)
    for _ in range(50):
        recording2.add(RTP, 0, os.urandom(500))
    assert stopped2 == ["quota"] and quota.used <= 5000


def test_an_io_error_stops_the_recording_not_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording, stopped, _clock, private = _recording(tmp_path)
    real_write = os.write

    def full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    recording.add(RTP, 0, os.urandom(800))
    recording.add(RTP, 0, os.urandom(800))  # one chunk written
    monkeypatch.setattr(os, "write", full)
    for _ in range(10):
        recording.add(RTP, 0, os.urandom(800))  # raises nothing
    monkeypatch.setattr(os, "write", real_write)
    assert stopped == ["io_error: No space left on device"]
    with open(recording.path, "rb") as file:
        result = verify(file, allow_partial=True)
    assert not result.complete and result.chunks >= 1
    with open(recording.path, "rb") as file:
        records = list(decrypt(file, private, allow_partial=True)[1])  # type: ignore[arg-type]
    assert any(r.kind == RTP for r in records)


def test_sender_reports_and_flags_round_trip() -> None:
    private, public = _pair()
    writer = RecordingWriter({"id": "RC_y"}, public)  # type: ignore[arg-type]
    writer.add(SENDER_REPORT, 1, 5.0, (123).to_bytes(8, "big") + (9).to_bytes(4, "big"))
    chunk = writer.flush(FINAL)
    assert chunk is not None and writer.finished and writer.finish(b"", 0.0) is None
    records = list(decrypt(io.BytesIO(writer.prefix + chunk), private)[1])  # type: ignore[arg-type]
    assert records[0].kind == SENDER_REPORT and records[0].track == 1
