"""The direction of the layers, consensus <- node <- scripts, and a node process's imports.

Every module's imports are read with ``ast`` (lazy imports inside functions included): the
protocol core imports neither the node nor the tools, and the node never imports the tools.
A node process (node.main, node.runtime and every node module) loads none of the operator
tooling's heavy libraries.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"consensus": ("node", "scripts"), "node": ("scripts",), "scripts": ()}
TOOLING_LIBRARIES = ("rich", "psutil", "matplotlib")


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in ``path``, at any depth (absolute names only)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_upward(package: str) -> None:
    modules = _modules(package)
    assert modules, f"no modules under {package}/"
    upward = [
        f"{path.relative_to(REPO)}:{line}: imports {name}"
        for path in modules
        for line, name in _imported(path)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert not upward, "\n".join(upward)


def test_the_import_reader_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n"
        "def f():\n"
        "    from scripts.cli import main\n"
        "    import importlib\n"
        "    return importlib.import_module('scripts.bench')\n"
    )
    names = {name for _, name in _imported(module)}
    assert {"os", "scripts.cli", "importlib", "scripts.bench"} <= names


def test_a_node_process_loads_no_tooling_library() -> None:
    node_modules = [
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for path in _modules("node")
    ]
    assert "node.main" in node_modules and "node.runtime" in node_modules
    code = (
        "import importlib, sys\n"
        f"for name in {node_modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(','.join(m for m in {TOOLING_LIBRARIES!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"a node process imports {proc.stdout.strip()}"
