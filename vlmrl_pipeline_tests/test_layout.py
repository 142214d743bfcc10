"""The package's shape: the README's layout names every module, no module passes 600 lines, no import circle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vlmrl_pipeline"
MAX_LINES = 600
WINGS = (PACKAGE / "core" / "training", PACKAGE / "core" / "evaluation")
"""core's sub-packages as big as a stage: the README lists their modules as files, like core/'s own."""


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layout_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's Layout section has no code block"
    return blocks[0]


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, anywhere in it (a function-level import is a dependency too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import module` imports the module; `from module import name` the module itself
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def test_every_module_is_named_in_the_readme_layout():
    block = _layout_block()
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?:\.py)?/?", block))
    missing = []
    for path in _modules():
        if path.name in ("__init__.py", "__main__.py"):
            continue
        # modules of the top level, assets/, core/ and core's two wings are listed as files; those of a sub-package
        # by name
        listed_as_file = path.parent in (PACKAGE, PACKAGE / "assets", PACKAGE / "core", *WINGS)
        if (path.name if listed_as_file else path.stem) not in words:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"README's Layout section does not name: {missing}"
    listed = set(re.findall(r"\b([a-z_]+\.py)\b", block))
    existing = {p.name for folder in ("vlmrl_pipeline", "vlmrl_pipeline_tests", "benchmarks")
                for p in (ROOT / folder).rglob("*.py")}
    assert listed <= existing, f"README's Layout section names files that do not exist: {sorted(listed - existing)}"
    for folder in re.findall(r"^\s*([a-z_/]+)/\s", block, flags=re.M):
        assert any(p.is_dir() for p in (ROOT / folder, PACKAGE / folder, PACKAGE / "core" / folder,
                                        PACKAGE / "assets" / folder)), f"no folder {folder}/"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_passes_600_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it along its sections"


def test_there_is_no_import_circle():
    modules = {_module_name(p): p for p in _modules()}
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (circle := visit(name)):
            pytest.fail("import circle: " + " -> ".join(circle))


def test_core_never_imports_dagster():
    offenders = [str(p.relative_to(ROOT)) for p in (PACKAGE / "core").rglob("*.py")
                 if re.search(r"^\s*(import dagster|from dagster)", p.read_text(encoding="utf-8"), flags=re.M)]
    assert not offenders, offenders
