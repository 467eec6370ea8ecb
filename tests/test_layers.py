"""The package's architecture, checked on the code as a wheel lays it out: the layer contracts
in pyproject.toml (import-linter), no import circle between modules, one import namespace."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"


@pytest.fixture(scope="module")
def installed_layout(tmp_path_factory) -> Path:
    """The package tree as the wheel installs it (pyproject's package-dir mapping applied)."""
    root = tmp_path_factory.mktemp("layout")
    config = tomllib.loads(PYPROJECT.read_text("utf-8"))["tool"]["setuptools"]
    mapping = sorted(config["package-dir"].items(), key=lambda item: item[0].count("."))
    for package, folder in mapping:
        shutil.copytree(
            REPO / folder,
            root.joinpath(*package.split(".")),
            ignore=shutil.ignore_patterns("*.parquet", "__pycache__"),
            dirs_exist_ok=True,
        )
    return root


def test_layer_contracts_hold(installed_layout):
    lint_imports = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(installed_layout)}
    done = subprocess.run(
        [str(lint_imports), str(PYPROJECT)],
        cwd=installed_layout,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    imported = sorted(graph.find_modules_directly_imported_by(child))
                    work.append((child, iter(imported)))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_no_import_circles(installed_layout, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_layout))
    graph = grimp.build_graph("curate", cache_dir=None)
    # a package's __init__ importing its own modules is not a circle of the code
    for module in list(graph.modules):
        for imported in list(graph.find_modules_directly_imported_by(module)):
            if imported.startswith(module + "."):
                graph.remove_import(importer=module, imported=imported)
    assert _cycles(graph) == []


def test_the_circle_check_finds_a_circle(tmp_path, monkeypatch):
    package = tmp_path / "circle_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circle_pkg import b\n")
    (package / "b.py").write_text("def f():\n    from circle_pkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("circle_pkg", cache_dir=None)
    assert _cycles(graph) == [["circle_pkg.a", "circle_pkg.b"]]


def test_one_import_namespace():
    """No module imports the repository's folders by their own names (eval, cli, filters)."""
    pattern = re.compile(r"^\s*(from|import)\s+(eval|cli|filters|recipes)(\.|\s|$)", re.M)
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("curate", "eval", "filters", "cli", "tests", "bench", "scripts")
        for path in (REPO / folder).rglob("*.py")
        if pattern.search(path.read_text("utf-8"))
    ]
    assert offenders == []
