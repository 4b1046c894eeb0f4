"""The project's structure rules: no import cycle, small modules and functions, few sleeps in tests.

Cycles are looked for among the modules of sfu/, signaling/, auth/ and loadtest/, imports made
only for type checking included: a cycle there is a back-reference all the same. The size rules
hold for sfu/, signaling/ and auth/.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ("sfu", "signaling", "auth")
PACKAGES = (*CORE, "loadtest")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 50
MAX_TEST_SLEEPS = 21  # half of the 43 there were before the restructuring
SLEEP_CALL = re.compile(r"sleep\(")

Graph = dict[str, set[str]]


def python_files(root: Path, packages: Iterable[str]) -> Iterator[Path]:
    for package in packages:
        yield from sorted((root / package).rglob("*.py"))


def module_name(root: Path, path: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def import_graph(root: Path, packages: Iterable[str]) -> Graph:
    """Module -> the project modules it imports (anywhere in it, `if TYPE_CHECKING:` too)."""
    paths = list(python_files(root, packages))
    known = {module_name(root, path) for path in paths}
    graph: Graph = {}
    for path in paths:
        name = module_name(root, path)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in known)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package[: len(package) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                for alias in node.names:
                    # `from pkg import module` depends on the module, else on pkg itself.
                    candidate = f"{base}.{alias.name}" if base else alias.name
                    if candidate in known:
                        deps.add(candidate)
                    elif base in known:
                        deps.add(base)
        deps.discard(name)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycle() -> None:
    found = cycles(import_graph(ROOT, PACKAGES))
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_module_over_450_lines() -> None:
    too_long = [
        f"{path.relative_to(ROOT)}: {lines} lines"
        for path in python_files(ROOT, CORE)
        if (lines := path.read_text(encoding="utf-8").count("\n")) > MAX_MODULE_LINES
    ]
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(too_long)


def test_no_function_over_50_lines() -> None:
    too_long = []
    for path in python_files(ROOT, CORE):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    too_long.append(f"{where} {node.name}: {lines} lines")
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(too_long)


def test_tests_sleep_at_most_21_times() -> None:
    counts = {
        str(path.relative_to(ROOT)): n
        for path in python_files(ROOT, ["tests"])
        if (n := len(SLEEP_CALL.findall(path.read_text(encoding="utf-8"))))
    }
    listed = "\n".join(f"{path}: {n}" for path, n in sorted(counts.items()))
    assert sum(counts.values()) <= MAX_TEST_SLEEPS, (
        f"{sum(counts.values())} calls to sleep in tests/ (at most {MAX_TEST_SLEEPS}):\n{listed}"
    )


def test_the_cycle_check_finds_a_cycle(tmp_path: Path) -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}) == [["a", "b", "c"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    # On files: a relative import one way, a type-only import back.
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "room.py").write_text("from .participant import Participant\n")
    (tmp_path / "pkg" / "participant.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.room import Room\n"
    )
    (tmp_path / "pkg" / "leaf.py").write_text("import pkg.room\nfrom pkg import participant\n")
    graph = import_graph(tmp_path, ["pkg"])
    assert graph["pkg.leaf"] == {"pkg.room", "pkg.participant"}
    assert cycles(graph) == [["pkg.participant", "pkg.room"]]
