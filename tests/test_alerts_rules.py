"""docs/alerts.yml (issue 15): well-formed Prometheus rules over metrics keyroom exports.

PyYAML is not a dependency: the file keeps to a small block-YAML subset that this test parses
(and that promtool, when installed, checks too)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from sfu.config import LimitsConfig
from sfu.metrics import build_registry, record_join, record_security_alert
from sfu.room import RoomRegistry
from sfu.stats import Stats

RULES = Path(__file__).parent.parent / "docs" / "alerts.yml"
RESPONSE = Path(__file__).parent.parent / "docs" / "incident-response.md"
PROMQL_FUNCTIONS = {"rate", "increase", "sum", "by", "histogram_quantile", "le", "up"}


def _lines(text: str) -> list[tuple[int, str]]:
    lines = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            lines.append((len(raw) - len(raw.lstrip(" ")), stripped))
    return lines


def _scalar(text: str) -> str:
    if text.startswith('"'):
        value = json.loads(text)  # double-quoted YAML as used here is JSON
        assert isinstance(value, str)
        return value
    assert not text.startswith(("{", "[", "'", "&", "*", "|", ">")), text
    assert " #" not in text and ": " not in text, f"ambiguous plain scalar: {text}"
    return text


def _block(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][1].startswith("- "):
        items = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            lines[i] = (indent + 2, lines[i][1][2:])
            item, i = _block(lines, i, indent + 2)
            items.append(item)
        return items, i
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
        key, sep, rest = lines[i][1].partition(":")
        assert sep and key not in mapping, lines[i]
        if rest.strip():
            mapping[key], i = _scalar(rest.strip()), i + 1
        else:
            assert lines[i + 1][0] > indent or lines[i + 1][1].startswith("- "), lines[i]
            mapping[key], i = _block(lines, i + 1, lines[i + 1][0])
    return mapping, i


def parse(text: str) -> Any:
    lines = _lines(text)
    value, end = _block(lines, 0, 0)
    assert end == len(lines), f"unparsed from {lines[end]}"
    return value


def exported_metrics() -> set[str]:
    # Labelled counters show once used (in this test process only).
    record_security_alert("proof_failed", "warning")
    record_join(False, "unauthorized", 0.01)
    text = generate_latest(build_registry(RoomRegistry(LimitsConfig()), Stats())).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def test_the_subset_parser_reads_what_it_should() -> None:
    assert parse('a:\n  - b: "x: {{ y }}"\n    c:\n      d: e\n  - b: f\n') == {
        "a": [{"b": "x: {{ y }}", "c": {"d": "e"}}, {"b": "f"}]
    }
    with pytest.raises(AssertionError):
        parse("a: b: c\n")


def test_rules_are_well_formed_over_exported_metrics() -> None:
    document = parse(RULES.read_text())
    metrics = exported_metrics()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", RESPONSE.read_text(), re.M)
    }
    names = set()
    for group in document["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] not in names
            names.add(rule["alert"])
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert {"summary", "description", "runbook"} <= set(rule["annotations"])
            anchor = rule["annotations"]["runbook"].split("#")[1]
            assert anchor in anchors, f"{rule['alert']}: no section #{anchor}"
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"])
            expr = rule["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]")
            # Label matchers, ranges and grouping clauses out: what is left names functions
            # and metrics.
            bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\bby\s*\([^)]*\)", "", expr)
            used = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", bare))
            for name in used - PROMQL_FUNCTIONS:
                assert name in metrics, f"{rule['alert']}: {name} is not exported"
    assert len(names) >= 10


def test_promtool_accepts_the_rules_where_installed() -> None:
    """promtool is no dependency: where it is installed it must accept the file too."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
