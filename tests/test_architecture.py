"""The layering of docs/architecture.md: import-linter's contracts hold and catch a wrong-way
import, no package module is imported inside a function, and only the dispatch module
sends to the broker. No Redis needed."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGE = ROOT / "celery_graph"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_hold() -> None:
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    ("added", "contract"),
    [
        ({"state/runs.py": "from ..client import GraphRun"}, "Imports point down the layers"),
        ({"model/spec.py": "import celery"}, "The model imports neither Celery nor Redis"),
        ({"dispatch.py": "import redis"}, "Only the state package imports redis"),
        (
            {
                "state/graphs.py": "from . import scripts",
                "state/scripts.py": "from . import graphs",
            },
            "No import cycles",
        ),
    ],
)
def test_a_wrong_way_import_breaks_a_contract(tmp_path, added, contract) -> None:
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy)
    shutil.copytree(PACKAGE, copy / "celery_graph", ignore=shutil.ignore_patterns("__pycache__"))
    for module, line in added.items():
        target = copy / "celery_graph" / module
        target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    out = lint_imports(copy)
    assert out.returncode != 0
    assert f"{contract}" in out.stdout and "BROKEN" in out.stdout, out.stdout


def _function_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """Package-relative or celery_graph imports inside function bodies."""
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and (
                node.level > 0 or (node.module or "").startswith("celery_graph")
            ):
                found.append((node.lineno, f"from {'.' * node.level}{node.module or ''}"))
            elif isinstance(node, ast.Import) and any(
                a.name.startswith("celery_graph") for a in node.names
            ):
                found.append((node.lineno, "import celery_graph..."))
    return found


def test_no_package_module_is_imported_inside_a_function() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in modules()
        for line, what in _function_imports(ast.parse(path.read_text()))
    ]
    assert offenders == []


def test_the_check_finds_an_import_inside_a_function() -> None:
    code = "def f():\n    from .state import state_for\n    return state_for\n"
    assert _function_imports(ast.parse(code)) == [(2, "from .state")]


def _broker_calls(tree: ast.AST) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("send_task", "apply_async")
    ]


def test_only_the_dispatch_module_sends_to_the_broker() -> None:
    senders = {
        str(path.relative_to(PACKAGE))
        for path in modules()
        if _broker_calls(ast.parse(path.read_text()))
    }
    assert senders == {"dispatch.py"}


def _client_uses(tree: ast.AST) -> list[int]:
    """Lines that reach for a Redis client (``state.client``, ``self.client``...)."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("client", "wait_client")
    ]


def test_only_the_state_package_uses_a_redis_client() -> None:
    users = {
        str(path.relative_to(PACKAGE))
        for path in modules()
        if path.relative_to(PACKAGE).parts[0] != "state"
        and _client_uses(ast.parse(path.read_text()))
    }
    assert users == set()


def test_the_check_finds_a_redis_client_use() -> None:
    code = "def f(state):\n    return state.client.zcard('k')\n"
    assert _client_uses(ast.parse(code)) == [2]
