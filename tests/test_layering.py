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


AGENT_PROCESS_ALLOWED = frozenset({"vault.handle"})
"""What the agent process may import from ``vault`` and ``memory``: the handle type only.

A :class:`vault.handle.CapabilityInfo` travels in every Task; the module holds
no secret and imports nothing else of the vault (checked below at run time).
"""


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _top(name: str) -> str:
    return ".".join(name.split(".")[:2])


@pytest.mark.parametrize("path", _files("agent/worker"), ids=lambda p: p.name)
def test_the_agent_process_imports_no_host_code(path: Path) -> None:
    for name in _imports(path):
        assert not name.startswith("agent.host"), f"{path.name} imports {name}"
        if name.split(".")[0] in ("vault", "memory"):
            assert name in AGENT_PROCESS_ALLOWED, f"{path.name} imports {name}"


@pytest.mark.parametrize("path", _files("agent/host"), ids=lambda p: p.name)
def test_the_host_imports_nothing_of_the_agent_process(path: Path) -> None:
    bad = {m for m in _imports(path) if _top(m) == "agent.worker"}
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_egress_proxy_is_host_code() -> None:
    # It holds the session's CA key and swaps handles for secrets: host side only,
    # so the agent-process checks above keep the worker away from it.
    assert (ROOT / "agent/host/egress/proxy.py").is_file()
    assert not (ROOT / "agent/egress").exists()
    users = [
        p.relative_to(ROOT).as_posix()
        for p in _files("agent")
        if any(m.startswith("agent.host.egress") for m in _imports(p))
        and not p.relative_to(ROOT).as_posix().startswith("agent/host/")
    ]
    assert not users, f"outside agent/host: {users}"


@pytest.mark.parametrize("name", ["agent/protocol.py", "agent/errors.py"])
def test_the_shared_modules_belong_to_neither_side(name: str) -> None:
    bad = {m for m in _imports(ROOT / name) if _top(m) in ("agent.host", "agent.worker")}
    bad |= {m for m in _imports(ROOT / name) if m.split(".")[0] == "memory"}
    bad |= {m for m in _imports(ROOT / name) if m.startswith("vault.") and m != "vault.handle"}
    assert not bad, f"{name} imports {bad}"


def test_starting_the_agent_process_loads_no_host_module() -> None:
    # Transitively too: what `python -m agent.worker` loads before its first message.
    code = (
        "import sys, agent.worker.main\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = result.stdout.split()
    assert "agent.worker.main" in loaded  # the probe itself worked
    host = [m for m in loaded if m.startswith("agent.host")]
    assert not host, f"the agent process loads host modules: {host}"
    foreign = [
        m
        for m in loaded
        if m.split(".")[0] in ("vault", "memory", "PySide6")
        and m not in AGENT_PROCESS_ALLOWED | {"vault"}
    ]
    assert not foreign, f"the agent process loads {foreign}"


@pytest.mark.parametrize("package", ("vault", "memory"))
def test_vault_and_memory_do_not_import_the_model_runtime(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("llama_cpp", "agent", "app")}
        assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", _files("agent"), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_a_long_agent_module_says_why(path: Path) -> None:
    lines = path.read_text().count("\n")
    if lines <= 550:
        return
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "Why" in docstring, f"{path.name} has {lines} lines and its docstring gives no reason"
