"""The batched fan-out (sfu/fastpath): copies protected with pylibsrtp's own libsrtp and sent
in one sendmmsg, byte for byte what the pure-Python path sends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pylibsrtp
import pytest

from sfu.fastpath import _build, loader
from sfu.fastpath.batch import FanoutBatch
from sfu.internals import SrtpProtector
from sfu.stats import Stats

KEY = os.urandom(30)  # AES_CM_128 key + salt


def session(key: bytes = KEY, outbound: bool = True) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
    policy = pylibsrtp.Policy(key=key, ssrc_type=kind)
    policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy=policy)


def rtp(seq: int, ssrc: int, size: int = 1000) -> bytes:
    header = bytes([0x80, 96]) + seq.to_bytes(2, "big") + (seq * 3000).to_bytes(4, "big")
    return header + ssrc.to_bytes(4, "big") + bytes([seq % 256]) * size


@pytest.fixture
def extension() -> object:
    module = loader.load()
    assert module is not None, f"the extension does not build here: {loader.failure()}"
    return module


@pytest.fixture
def receivers() -> Iterator[list[socket.socket]]:
    socks = []
    for _ in range(5):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        socks.append(sock)
    yield socks
    for sock in socks:
        sock.close()


def test_a_batch_is_one_sendmmsg_and_matches_the_python_path(
    extension: object, receivers: list[socket.socket]
) -> None:
    stats = Stats()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        batch = FanoutBatch(extension, sender.fileno(), stats)  # type: ignore[arg-type]
        keys = [os.urandom(30) for _ in receivers]
        sessions = [session(k) for k in keys]
        twin_sessions = [session(k) for k in keys]  # kept: a protector does not own its session
        twins = [SrtpProtector(s) for s in twin_sessions]
        destinations = [
            batch.destination(s, sock.getsockname())
            for s, sock in zip(sessions, receivers, strict=True)
        ]
        batch.depth = 1  # as inside the shared socket's reader: queued until the flush
        for seq in (10, 11):
            for i, destination in enumerate(destinations):
                assert batch.add(destination, rtp(seq, 1000 + i))
        assert stats.fanout_calls == 0
        assert batch.flush() == 2 * len(receivers)
        assert (stats.fanout_calls, stats.fanout_packets) == (1, 2 * len(receivers))
        for i, sock in enumerate(receivers):
            for seq in (10, 11):
                expected = twins[i].protect(rtp(seq, 1000 + i))
                assert sock.recv(2048) == expected
                assert session(keys[i], outbound=False).unprotect(expected) == rtp(seq, 1000 + i)


def test_outside_a_read_a_copy_goes_at_once_and_oversized_ones_are_refused(
    extension: object, receivers: list[socket.socket]
) -> None:
    stats = Stats()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        batch = FanoutBatch(extension, sender.fileno(), stats)  # type: ignore[arg-type]
        destination = batch.destination(session(), receivers[0].getsockname())
        assert batch.add(destination, rtp(1, 5))
        assert stats.fanout_calls == 1 and len(receivers[0].recv(2048)) > 1000
        assert not batch.add(destination, rtp(2, 5, size=1500))
        assert stats.fanout_calls == 1


def test_a_copy_libsrtp_refuses_is_counted_and_the_rest_sent(
    extension: object, receivers: list[socket.socket]
) -> None:
    stats = Stats()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        batch = FanoutBatch(extension, sender.fileno(), stats)  # type: ignore[arg-type]
        destination = batch.destination(session(), receivers[0].getsockname())
        batch.depth = 1
        assert batch.add(destination, rtp(1, 5))
        assert batch.add(destination, b"\x80\x60\x00")  # shorter than an RTP header
        assert batch.add(destination, rtp(2, 5))
        assert batch.flush() == 2
        assert stats.dropped == {"send_failed": 1}
        assert stats.fanout_packets == 2


def test_a_full_batch_is_flushed_and_the_rest_queued(
    extension: object, receivers: list[socket.socket]
) -> None:
    stats = Stats()
    slots = extension.lib.KR_SLOTS  # type: ignore[attr-defined]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        receivers[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        batch = FanoutBatch(extension, sender.fileno(), stats)  # type: ignore[arg-type]
        destination = batch.destination(session(), receivers[0].getsockname())
        batch.depth = 1
        for seq in range(slots + 3):
            assert batch.add(destination, rtp(seq, 7, size=100))
        assert stats.fanout_calls == 1 and stats.fanout_packets == slots
        batch.flush()
        assert stats.fanout_packets == slots + 3


def test_the_loader_builds_into_the_cache_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYROOM_CACHE_DIR", str(tmp_path))
    path = loader.build()
    assert path.is_relative_to(tmp_path) and path.exists()
    modified = path.stat().st_mtime_ns
    assert loader.build() == path and path.stat().st_mtime_ns == modified


def python(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    """This interpreter run with `args` (a compile: up to 120 s); it must succeed."""
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False, **options
    )
    assert result.returncode == 0, result.stderr
    return result


def test_keyroom_build_ext_compiles_into_the_cache(tmp_path: Path) -> None:
    result = python(
        "-m", "sfu", "build-ext", env={**os.environ, "KEYROOM_CACHE_DIR": str(tmp_path)}
    )
    path = Path(result.stdout.strip())
    assert path.is_relative_to(tmp_path) and path.exists()


def test_setup_py_builds_the_extension_the_loader_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `pip install` runs (setup.py's build_ext over cffi_modules), in a copy of the files
    it reads; the loader takes the result only while its C source is the tree's."""
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "sfu" / "fastpath").mkdir(parents=True)
    (tmp_path / "setup.py").write_text((root / "setup.py").read_text())
    for name in ("_build.py", "_payload_source.py", "_receive_source.py"):  # the script, its C
        source = root / "sfu" / "fastpath" / name
        (tmp_path / "sfu" / "fastpath" / name).write_text(source.read_text())
    python("setup.py", "-q", "build_ext", "--inplace", cwd=tmp_path)
    [built] = (tmp_path / "sfu" / "fastpath").glob("_fanout*.so")
    module = loader._import_built(built)
    assert loader.is_current(module)
    monkeypatch.setattr(loader._build, "SOURCE_KEY", "0" * 16)  # the tree's C source changed
    assert not loader.is_current(module)


def test_an_installed_module_from_an_older_build_script_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `pip install` before the per-copy loop left a module without `kr_fanout` (and without
    the source key): the loader builds (or takes from its cache) a current one instead of failing
    at the first packet."""
    stale = types.ModuleType(_build.MODULE)
    stale.lib = types.SimpleNamespace(kr_add=None)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, _build.MODULE, stale)
    monkeypatch.setattr(loader, "_loaded", None)
    monkeypatch.setattr(loader, "_failure", None)
    module = loader.load()
    assert module is not None
    assert loader.is_current(module) and hasattr(module.lib, "kr_fanout")
