"""A finding of `keyroom doctor`: one line each, errors first; errors decide the exit status."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"
INFO = "info"
_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}


@dataclass(frozen=True)
class Finding:
    severity: str  # ERROR: unsafe or broken; WARNING: risky or soon broken; INFO: a fact
    what: str  # the option, file or URL it is about, e.g. "server.tls_cert"
    problem: str
    fix: str = ""

    def line(self) -> str:
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{self.severity:<7} {self.what}: {self.problem}.{fix}"


def error(what: str, problem: str, fix: str) -> Finding:
    return Finding(ERROR, what, problem, fix)


def warning(what: str, problem: str, fix: str) -> Finding:
    return Finding(WARNING, what, problem, fix)


def info(what: str, problem: str) -> Finding:
    return Finding(INFO, what, problem)


def report(findings: Iterable[Finding]) -> tuple[list[str], int]:
    """The lines to print (errors, then warnings, then facts; a count last) and the exit status:
    1 if any error, else 0 (warnings alone do not fail a deployment check)."""
    ordered = sorted(findings, key=lambda f: _ORDER[f.severity])
    errors = sum(f.severity == ERROR for f in ordered)
    warnings = sum(f.severity == WARNING for f in ordered)
    lines = [f.line() for f in ordered]
    lines.append(f"keyroom doctor: {errors} error(s), {warnings} warning(s)")
    return lines, 1 if errors else 0
