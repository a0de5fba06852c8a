"""The house rules of DESIGN.md, checked mechanically."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_PACKAGES = ("agent", "vault", "memory", "models")


def _modules(package: str) -> list[str]:
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts))
    return names


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", CORE_PACKAGES)
def test_core_packages_never_load_qt(package: str) -> None:
    modules = _modules(package)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6'))\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{package} loaded Qt: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("package", CORE_PACKAGES)
def test_only_app_imports_qt_in_source(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("PySide6", "shiboken6")}
        assert not bad, f"{path} imports {bad}"


def test_agent_imports_only_the_handle_type_from_vault() -> None:
    allowed = {"vault.handle", "vault.errors"}
    host_side = {"agent/host", "agent/tools", "agent/policy", "agent/egress"}
    for path in (ROOT / "agent").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if any(rel.startswith(prefix) for prefix in host_side):
            continue  # host-side code may use the broker interface
        bad = {m for m in _imports(path) if m.split(".")[0] == "vault" and m not in allowed}
        assert not bad, f"{rel} (agent process side) imports {bad}"


@pytest.mark.parametrize("package", ("vault", "memory"))
def test_vault_and_memory_do_not_import_the_model_runtime(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("llama_cpp", "agent", "app")}
        assert not bad, f"{path} imports {bad}"
