"""The compiled fan-out extension: imported if `pip install` built it from the current source,
else built once into a cache directory (`keyroom build-ext`, or on first use), else absent (the
pure-Python path is used).

The cache key is a hash of the build script and the interpreter's ABI, so an upgrade rebuilds.
Several server processes building at once each compile into their own temporary directory and
move the result into place atomically.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

from sfu.fastpath import _build

log = logging.getLogger("keyroom.fastpath")

_loaded: ModuleType | None = None
_failure: str | None = None


def cache_dir() -> Path:
    """`$KEYROOM_CACHE_DIR`, else `$XDG_CACHE_HOME/keyroom`, else `~/.cache/keyroom`."""
    base = os.environ.get("KEYROOM_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "keyroom"


def build_key() -> str:
    source = b"".join(
        Path(f).read_bytes() for f in (_build.__file__, _build.PAYLOAD_FILE, _build.RECEIVE_FILE)
    )
    abi = f"{sys.implementation.cache_tag}-{sysconfig.get_config_var('EXT_SUFFIX')}"
    return hashlib.sha256(source + abi.encode()).hexdigest()[:16]


def _cached_path() -> Path:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return cache_dir() / "fastpath" / build_key() / f"_fanout{suffix}"


def build() -> Path:
    """Compile the extension into the cache (if not there already); returns its path."""
    target = _cached_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(_build.ffibuilder.compile(tmpdir=tmp, verbose=False))
        os.replace(built, target)  # atomic: a concurrent build's result is as good
    shutil.rmtree(target.parent / "build", ignore_errors=True)
    return target


def _import_built(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(_build.MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _installed() -> ModuleType | None:
    """The extension `pip install` built, if it was built from the current C source."""
    try:
        module = importlib.import_module(_build.MODULE)
    except ImportError:
        return None
    return module if is_current(module) else None


def is_current(module: ModuleType) -> bool:
    """Whether `module` was compiled from the C source of this tree."""
    if not hasattr(module.lib, "kr_source_key"):
        return False
    key: bytes = module.ffi.string(module.lib.kr_source_key())
    return key.decode() == _build.SOURCE_KEY


def load(*, compile_if_missing: bool = True) -> ModuleType | None:
    """The extension module (with `.ffi` and `.lib`), or None if it cannot be had; the reason is
    logged once and kept in `failure()`."""
    global _loaded, _failure
    if _loaded is not None or _failure is not None:
        return _loaded
    installed = _installed()
    if installed is not None:
        _loaded = installed
        return _loaded
    try:
        path = build() if compile_if_missing else _cached_path()
        _loaded = _import_built(path)
    except Exception as exc:  # no compiler, no headers, a read-only cache: Python path
        _failure = f"{type(exc).__name__}: {exc}"
        log.warning("batched fan-out unavailable (%s): using the pure-Python path", _failure)
    return _loaded


def failure() -> str | None:
    return _failure
