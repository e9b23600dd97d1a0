"""The import graph runs one way: blocks <- ingest, compactor, retention, query_gateway <- strata.

`blocks` imports no other package; the four middle packages import only `blocks` (and
`compactor` -> `retention`, for the nightly retention pass); every command lives in `strata`,
above them all. A new wrong-way import fails here with the file that made it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("blocks", "ingest", "compactor", "retention", "query_gateway", "strata")
ALLOWED = {
    "blocks": set(),
    "ingest": {"blocks"},
    "compactor": {"blocks", "retention"},
    "retention": {"blocks"},
    "query_gateway": {"blocks"},
    "strata": {"blocks", "ingest", "compactor", "retention", "query_gateway"},
}


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def edges() -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for target in imports_of(path) & set(PACKAGES) - {pkg}:
                found.setdefault((pkg, target), []).append(str(path.relative_to(ROOT)))
    return found


def test_no_package_imports_one_on_its_floor_or_above():
    wrong = {f"{a} -> {b}": files for (a, b), files in edges().items() if b not in ALLOWED[a]}
    assert wrong == {}


def test_the_checker_sees_a_wrong_way_import(tmp_path, monkeypatch):
    """The rule is not vacuous: a planted blocks -> query_gateway import is reported."""
    fake = tmp_path / "blocks"
    fake.mkdir()
    (fake / "bad.py").write_text("from query_gateway.engine import Engine\n")
    for pkg in PACKAGES[1:]:
        (tmp_path / pkg).mkdir()
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert edges() == {("blocks", "query_gateway"): ["blocks/bad.py"]}
