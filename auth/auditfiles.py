"""Rotated audit logs: one hash chain across files.

When `[audit] rotate_bytes` is reached the writer seals the log, renames it and its checkpoints
to `PATH.000001` and `PATH.000001.checkpoints` (then `.000002`, ...: older first), and starts
PATH again with a `log_continued` record that links to the last record of the renamed file,
sealed at once. The chain runs on unbroken: `keyroom audit verify PATH` reads the rotated files
present, oldest first, then PATH. When the oldest files were archived away, verification starts
at the first file's `log_continued` record and says so.
"""

from __future__ import annotations

import re
from pathlib import Path

CONTINUED = "log_continued"
_SUFFIX = re.compile(r"\.(\d{6})$")


def rotated_files(path: str | Path) -> list[Path]:
    """The rotated logs of `path` present, oldest first."""
    base = Path(path)
    found = [
        (int(match[1]), candidate)
        for candidate in base.parent.glob(base.name + ".*")
        if (match := _SUFFIX.search(candidate.name)) and candidate.name == f"{base.name}.{match[1]}"
    ]
    return [candidate for _, candidate in sorted(found)]


def next_rotated(path: str | Path) -> Path:
    existing = rotated_files(path)
    number = int(existing[-1].name[-6:]) + 1 if existing else 1
    return Path(f"{path}.{number:06d}")
