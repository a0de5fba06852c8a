"""Every external program the suite starts must come from `.ci/run` or the venv.

A fresh Debian machine gets its programs only from the packages `.ci/run`
installs (plus Debian's Essential and required-priority packages, present on
every install) and from the venv `make` builds. A test that starts anything
else passes on a developer's machine and fails on CI. Two checks close that:

- dynamic: an audit hook (installed by ``tests/conftest.py``) records the
  executable of every ``subprocess.Popen``, ``os.exec*``, ``os.posix_spawn``,
  ``os.spawn*`` and ``os.system`` in the pytest process; at the end of the
  session each is resolved to a file and looked up in dpkg's database
  (``/var/lib/dpkg``, read directly: the check starts no program of its own).
  Programs started by child processes (the agent process, a command inside
  the sandbox) are not seen; the sandbox's commands are the model's, not the
  suite's dependencies.
- static (``tests/test_ci_programs.py``): literal program names in subprocess
  calls, ``shutil.which`` and ``command -v`` anywhere in the code and scripts,
  so a program behind a ``skipif`` is caught on a machine that skips it.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CI_RUN = ROOT / ".ci" / "run"
SCANNED = ("app", "agent", "vault", "memory", "models", "scripts", "tests", "bench", "packaging")

_SPAWN_EVENTS = frozenset({"subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn"})
_SUBPROCESS_CALLS = frozenset({"run", "Popen", "call", "check_call", "check_output"})
_OS_CALLS = frozenset(
    {"execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
     "posix_spawn", "posix_spawnp", "spawnv", "spawnve", "spawnvp", "spawnvpe"}
)


class ProgramRecorder:
    """An audit hook that records the programs the pytest process starts.

    Audit hooks cannot be removed, so this one only records while ``active``.
    """

    def __init__(self) -> None:
        self.active = False
        self.started: dict[str, str] = {}
        """Program as started → the file it resolved to (or the name if not found)."""

    def __call__(self, event: str, args: tuple[object, ...]) -> None:
        if not self.active or event not in _SPAWN_EVENTS and event != "os.system":
            return
        if event == "os.system":
            self._record("/bin/sh", None)
            return
        if event == "subprocess.Popen":
            executable, argv, _cwd, env = args
            program = executable if executable is not None else _first(argv)
        elif event == "os.spawn":
            _mode, program, _argv, env = args
        else:
            program, _argv, env = args[0], args[1], args[2]
        if isinstance(program, (str, bytes, os.PathLike)):
            self._record(os.fsdecode(program), env)

    def _record(self, program: str, env: object) -> None:
        if program in self.started:
            return
        path = None
        if isinstance(env, dict):
            path = env.get("PATH", env.get(b"PATH"))
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        found = program if "/" in program else shutil.which(program, path=path)
        self.started[program] = found or program


RECORDER = ProgramRecorder()
"""The one recorder ``tests/conftest.py`` installs for the session."""


def _first(argv: object) -> object:
    if isinstance(argv, (str, bytes)):
        return shlex.split(os.fsdecode(argv))[0] if argv else None
    if isinstance(argv, (list, tuple)) and argv:
        return argv[0]
    return None


def ci_packages(run_file: Path = CI_RUN) -> set[str]:
    """The Debian packages ``.ci/run`` installs (its ``packages=( ... )`` array)."""
    text = run_file.read_text(encoding="utf-8")
    match = re.search(r"^packages=\((.*?)^\)", text, re.S | re.M)
    if match is None:
        raise ValueError(f"{run_file} has no packages=( ... ) list")
    body = "\n".join(line.split("#", 1)[0] for line in match.group(1).splitlines())
    return set(shlex.split(body))


DPKG = Path("/var/lib/dpkg")


def dpkg_available() -> bool:
    """Whether package ownership can be checked here (a Debian-based system)."""
    return (DPKG / "status").is_file()


@functools.cache
def _owners() -> dict[str, str]:
    """Every installed path and the package that installed it (dpkg's ``info/*.list``)."""
    owners: dict[str, str] = {}
    for listing in sorted((DPKG / "info").glob("*.list")):
        package = listing.stem.split(":", 1)[0]  # "pkg" or "pkg:arch"
        for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
            owners.setdefault(line, package)
    return owners


def _stanzas() -> Iterator[dict[str, str]]:
    """The installed packages' stanzas of dpkg's ``status`` file (continuation lines joined)."""
    text = (DPKG / "status").read_text(encoding="utf-8", errors="replace")
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if fields.get("Package") and fields.get("Status", "").endswith(" installed"):
            yield fields


@functools.cache
def owner(path: str) -> str | None:
    """The Debian package that installed ``path`` (usr-merge aware), or None."""
    real = os.path.realpath(path)
    candidates = [path, real]
    for p in (path, real):
        for a, b in (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/")):
            if p.startswith(a):
                candidates.append(b + p[len(a) :])
            elif p.startswith(b):
                candidates.append(a + p[len(b) :])
    owners = _owners()
    for candidate in dict.fromkeys(candidates):
        if candidate in owners:
            return owners[candidate]
    return None


def _names(field: str) -> list[str]:
    """Package names in a Depends/Provides field (every alternative, no versions)."""
    names = []
    for part in re.split(r"[,|]", field):
        name = part.strip().split(" ", 1)[0].split(":", 1)[0]
        if name:
            names.append(name)
    return names


@functools.cache
def installed_closure(packages: frozenset[str]) -> frozenset[str]:
    """``packages``, the Essential and required ones, and all they depend on (as installed here).

    ``.ci/run`` installs with ``--no-install-recommends``, so only Depends and
    Pre-Depends count; a virtual package counts through its installed providers.
    """
    depends: dict[str, list[str]] = {}
    providers: dict[str, list[str]] = {}
    roots = set(packages)
    for fields in _stanzas():
        name = fields["Package"]
        deps = f"{fields.get('Pre-Depends', '')}, {fields.get('Depends', '')}"
        depends[name] = _names(deps)
        for virtual in _names(fields.get("Provides", "")):
            providers.setdefault(virtual, []).append(name)
        if fields.get("Essential") == "yes" or fields.get("Priority") == "required":
            roots.add(name)
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(depends.get(name, []))
        todo.extend(providers.get(name, []))
    return frozenset(seen)


@dataclass(frozen=True)
class Unprovided:
    """A program the suite uses that a fresh machine would not have."""

    program: str
    where: str
    why: str

    def __str__(self) -> str:
        return (
            f"{self.program} ({self.where}): {self.why}. Add the Debian package that "
            f"provides it to the packages list in .ci/run (or a Python package to "
            f"pyproject.toml), or do the job with what is already there."
        )


def in_venv(path: str) -> bool:
    """``path`` lives in the venv (or is the interpreter running the suite)."""
    prefix = Path(sys.prefix).resolve()
    absolute = Path(os.path.abspath(path))
    return path == sys.executable or absolute.is_relative_to(prefix) or (
        Path(os.path.realpath(path)).is_relative_to(prefix)
    )


# What a fresh machine's PATH finds: the venv's programs, then the system's
# (never a developer's ~/.local/bin or pyenv shims).
FRESH_PATH = os.pathsep.join(
    [str(Path(sys.prefix) / "bin"), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin",
     "/usr/bin", "/sbin", "/bin"]
)


def check(programs: dict[str, str], packages: set[str]) -> list[Unprovided]:
    """Which of ``programs`` (name → where it is used or the file it resolved to) lack a source.

    A program is provided when it resolves into the venv, or to a file owned by
    one of ``packages``, by an Essential/required package, or by a package one
    of those depends on.
    """
    problems = []
    provided = installed_closure(frozenset(packages))
    for program, where in sorted(programs.items()):
        path = where if where.startswith("/") else (
            program if "/" in program else shutil.which(program, path=FRESH_PATH)
        )
        if path is None:
            problems.append(Unprovided(program, where, "not installed on this machine"))
            continue
        if in_venv(path):
            continue
        package = owner(path)
        if package is None:
            problems.append(Unprovided(program, path, "no Debian package owns it"))
        elif package not in provided:
            why = f"it comes from {package}, which .ci/run does not install"
            problems.append(Unprovided(program, path, why))
    return problems


# ----------------------------------------------------------------- static scan


def _literal_program(node: ast.expr) -> str | None:
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        node = node.elts[0]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value:
        return shlex.split(node.value)[0] if " " in node.value else node.value
    return None


def programs_in_python(source: str) -> Iterator[tuple[str, int]]:
    """Literal program names started (or looked up) in Python source, with their lines."""
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        if not isinstance(func, ast.Attribute) or not isinstance(func.value, ast.Name):
            continue
        module, name = func.value.id, func.attr
        if (
            module == "subprocess" and name in _SUBPROCESS_CALLS
            or module == "shutil" and name == "which"
            or module == "os" and name in _OS_CALLS
        ):
            program = _literal_program(node.args[0])
            if program is not None:
                yield program, node.lineno


_COMMAND_V = re.compile(r"command -v ([A-Za-z0-9_.+-]+)")


def programs_in_shell(source: str) -> Iterator[tuple[str, int]]:
    """Programs a shell script looks up with ``command -v``."""
    for number, line in enumerate(source.splitlines(), 1):
        for match in _COMMAND_V.finditer(line):
            yield match.group(1), number


def scan(root: Path = ROOT, folders: Iterable[str] = SCANNED) -> dict[str, str]:
    """Program name → the first ``file:line`` naming it, over ``folders`` under ``root``."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix == ".py":
                hits = programs_in_python(path.read_text(encoding="utf-8"))
            elif path.suffix == ".sh" or path.parent.name == ".ci":
                hits = programs_in_shell(path.read_text(encoding="utf-8"))
            else:
                continue
            for program, line in hits:
                found.setdefault(program, f"{path.relative_to(root)}:{line}")
    return found
