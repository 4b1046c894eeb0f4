"""Issue 18.11: the audit log rotates itself and its hash chain stays verifiable across the
files; a restart continues it; archiving the oldest files leaves the rest verifiable."""

from __future__ import annotations

from pathlib import Path

from auth.audit import AuditLog, verify_file
from auth.auditfiles import rotated_files
from tests.test_audit import KEY


def write(path: Path, count: int, start: int = 0) -> None:
    audit = AuditLog(str(path), KEY, rotate_bytes=1500)
    for n in range(start, start + count):
        audit.record("kicked", room="r", reason=f"reason {n}")
    audit.close()


def test_rotation_keeps_one_chain_across_files_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 40)
    write(path, 20, start=40)  # a restart resumes the rotated chain
    files = rotated_files(path)
    assert len(files) >= 3
    assert all(Path(f"{f}.checkpoints").exists() for f in files)
    first_line = path.read_text().splitlines()[0]
    assert '"event":"log_continued"' in first_line
    result = verify_file(str(path), KEY)
    assert result.intact, result.problems
    assert result.first_record == 0
    reasons = [
        line for f in [*files, path] for line in f.read_text().splitlines() if '"kicked"' in line
    ]
    assert len(reasons) == 60  # every record is in exactly one file

    # An edit in a rotated file is named by that file and its line.
    victim = files[1]
    lines = victim.read_text().splitlines()
    lines[2] = lines[2].replace("reason", "REASON")
    victim.write_text("\n".join(lines) + "\n")
    broken = verify_file(str(path), KEY)
    assert broken.problems[0].startswith(f"{victim.name} line 3: record ")
    assert broken.problems[0].endswith("edited (its MAC does not match its content)")
    assert len(broken.problems) == 1


def test_archived_oldest_files_leave_the_rest_verifiable(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 40)
    oldest = rotated_files(path)[0]
    oldest.unlink()
    Path(f"{oldest}.checkpoints").unlink()
    result = verify_file(str(path), KEY)
    assert result.intact, result.problems
    assert result.first_record > 0
    assert any("verified from record" in line for line in result.report("audit.jsonl"))
    # Removing a file between two others is a break, named as removed records.
    middle = rotated_files(path)[1]
    middle.unlink()
    broken = verify_file(str(path), KEY)
    assert len(broken.problems) == 1 and "are missing (removed)" in broken.problems[0]
