"""The package's shape: no import cycles (imports inside functions count), no module over ~500 lines, nothing
that points outside the installed package, and importing any module leaves matplotlib's backend alone. The
layer contract itself is checked by `lint-imports` in CI (pyproject.toml [tool.importlinter])."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import astrovader

PACKAGE = Path(astrovader.__file__).parent
MAX_LINES = 500


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="astrovader.")
                  if m.name != "astrovader.__main__")  # runs the CLI


def test_no_import_cycles():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("astrovader")
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    # a depth-first search that reports the first cycle it meets, as a chain of module names
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(edges):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_is_too_long():
    long = {p.relative_to(PACKAGE).as_posix(): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_nothing_points_outside_the_package():
    for p in PACKAGE.rglob("*.py"):
        text = p.read_text()
        assert "shared/data" not in text and '"shared"' not in text, p
        assert "matplotlib.use(" not in text and "import matplotlib.pyplot" not in text, p


def test_importing_every_module_leaves_the_matplotlib_backend_alone():
    code = ("import matplotlib; matplotlib.use('svg'); import importlib\n"
            f"for m in {_modules()!r}: importlib.import_module(m)\n"
            "from astrovader.analysis.figures import save_figure, subplots\n"
            "import tempfile, os\n"
            "fig, ax = subplots(figsize=(2, 2))\n"
            "save_figure(fig, os.path.join(tempfile.mkdtemp(), 'a.png'))\n"
            "print(matplotlib.get_backend())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().lower() == "svg"


@pytest.mark.parametrize("name", _modules())
def test_every_module_imports(name):
    importlib.import_module(name)


MAX_FUNCTION_LINES = 100


def test_no_function_is_too_long():
    """A function reads top to bottom in one sitting; its docstring counts."""
    import ast

    long = {}
    for p in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    long[f"{p.relative_to(PACKAGE).as_posix()}:{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
