"""Errand benchmark: does the model get real errands done through the real agent?

The tasks (:data:`TASKS`, data: a name, a tier, the workspace's files, the
task text and a checker) come in three tiers:

1. a single read, answered in words (the checker looks at the answer);
2. a single edit (the checker looks at the files);
3. several steps: search, edit and a shell check, or a call to a local HTTPS
   API through ``http_request`` with a capability handle.

A checker returns None when the errand did what was asked, or a short reason
why not; one that runs Python runs it in a separate interpreter with the
workspace as its directory and a time limit, never in the harness.

Each task of :data:`bench.errand_tasks.TASKS` gets a fresh workspace (its
fixture files), a fresh data dir (vault, grants, audit log, memory) and a
fresh :class:`agent.host.errand.AgentHost` that starts the real agent process
(in bubblewrap where available) with the model under test. The policy allows
every tool call (file tools are confined to the workspace anyway); what still
asks (network calls once untrusted content is in the context) is answered
"once"; a shell command that could not be sandboxed is refused, never run.
The capability tasks call a local HTTPS API (a throwaway ``trustme`` CA that
only the broker trusts) with a capability handle granted to the session; the
API answers only with the right Bearer token, which the broker injects.

After each errand the task's checker looks at the files and the answer.
Reported per task and per tier: success, steps, tool calls, prompt tokens
evaluated and tokens generated (``ErrandStats``), wall time of the errand
(model load excluded, reported apart), and how it ended:

- ``answer``: the model gave a final answer (``final`` or the ``finish`` tool);
- ``loop``: it hit the step or token limit and its last :data:`LOOP_RUN`
  replies were one and the same tool call (same tool, same arguments compared
  as canonical JSON), counting the repeats the executor declined to run again;
- ``step limit`` / ``token limit``: it hit that limit otherwise;
- ``error``: the model failed, the agent crashed, or the errand was cancelled.

    .venv/bin/python -m bench errands [--tier 1] [--tasks 'fix_*'] [--repeat 2]
    .venv/bin/python bench/bench_errands.py --model path/to/model.gguf --json out.json
    .venv/bin/python bench/bench_errands.py --backend openai \\
        --base-url http://127.0.0.1:8080/v1 --model-name NAME --allow-local
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import secrets
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from agent.host.errand import AgentHost
from agent.host.events import AgentEvent, ErrandResult
from agent.host.permission import PermissionAnswer, PermissionRequest
from agent.host.policy import PolicyEngine, Rule
from agent.protocol import ErrandLimits, Resample
from models.factory import ModelSpec

Ending = Literal["answer", "loop", "step limit", "token limit", "error"]
ENDINGS: tuple[Ending, ...] = ("answer", "loop", "step limit", "token limit", "error")

LOOP_RUN = 3
"""Identical tool calls at the end of an errand stopped by a limit that make it a loop."""

SECRET_NAME = "LEDGER_TOKEN"


# -- the tasks ------------------------------------------------------------------------------------

Checker = Callable[[Path, str], str | None]
"""``check(workspace, answer)``: None on success, else why the errand failed."""


@dataclass(frozen=True)
class ErrandTask:
    """One benchmark errand.

    Attributes:
        name: Short unique name (``--tasks`` matches it).
        tier: 1 read/answer, 2 single edit, 3 multi-step (search, edit, shell, API).
        files: The workspace fixture: relative path → text.
        task: What the user asks; ``{api}`` is replaced by the local API's base URL.
        check: Inspects the workspace and the answer after the errand.
        needs_api: The task calls the local HTTPS API with a capability handle.
    """

    name: str
    tier: int
    files: Mapping[str, str]
    task: str
    check: Checker
    needs_api: bool = False


# -- checker building blocks ---------------------------------------------------------------------


def answer_has(*needles: str) -> Checker:
    """The answer mentions every needle (case-insensitive)."""

    def check(ws: Path, answer: str) -> str | None:
        missing = [n for n in needles if n.lower() not in answer.lower()]
        return f"the answer lacks {', '.join(map(repr, missing))}" if missing else None

    return check


def answer_matches(pattern: str, what: str) -> Checker:
    """The answer matches a regular expression (case-insensitive)."""

    def check(ws: Path, answer: str) -> str | None:
        return None if re.search(pattern, answer, re.I) else f"the answer does not give {what}"

    return check


def read(ws: Path, name: str) -> str | None:
    """The text of a workspace file, or None when it is missing or not text."""
    try:
        return (ws / name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def run_python(ws: Path, *args: str, timeout: float = 20.0) -> tuple[int, str]:
    """Run the venv's Python in the workspace; return (status, stdout + stderr).

    ``-E -s`` rather than ``-I``: the workspace must be on ``sys.path``.
    """
    try:
        proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [sys.executable, "-E", "-s", *args],
            cwd=ws,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:g} s"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def python_ok(code: str, what: str) -> Checker:
    """``python -c code`` exits 0 in the workspace."""

    def check(ws: Path, answer: str) -> str | None:
        status, out = run_python(ws, "-c", code)
        return None if status == 0 else f"{what}: {out.splitlines()[-1] if out else status}"

    return check


def unchanged(name: str, original: str) -> Checker:
    """A file the errand must leave alone (a test it should pass, not rewrite)."""

    def check(ws: Path, answer: str) -> str | None:
        return None if read(ws, name) == original else f"{name} was changed"

    return check


def all_of(*checks: Checker) -> Checker:
    """Every check passes; the first failure is the reason."""

    def check(ws: Path, answer: str) -> str | None:
        for c in checks:
            reason = c(ws, answer)
            if reason is not None:
                return reason
        return None

    return check


def file_is(name: str, expected: str) -> Checker:
    """A file holds exactly ``expected`` (surrounding whitespace ignored)."""

    def check(ws: Path, answer: str) -> str | None:
        text = read(ws, name)
        if text is None:
            return f"{name} does not exist"
        return None if text.strip() == expected else f"{name} holds {text.strip()[:60]!r}"

    return check


def file_has(name: str, *needles: str, absent: tuple[str, ...] = ()) -> Checker:
    """A file contains every needle and none of ``absent``."""

    def check(ws: Path, answer: str) -> str | None:
        text = read(ws, name)
        if text is None:
            return f"{name} does not exist"
        missing = [n for n in needles if n not in text]
        if missing:
            return f"{name} lacks {', '.join(map(repr, missing))}"
        present = [a for a in absent if a in text]
        return f"{name} still has {', '.join(map(repr, present))}" if present else None

    return check


def json_fields(name: str, expected: Mapping[str, object]) -> Checker:
    """A JSON file parses and has these top-level values."""

    def check(ws: Path, answer: str) -> str | None:
        text = read(ws, name)
        if text is None:
            return f"{name} does not exist"
        try:
            data = json.loads(text)
        except ValueError:
            return f"{name} is no longer valid JSON"
        if not isinstance(data, dict):
            return f"{name} is not a JSON object"
        wrong = [k for k, v in expected.items() if data.get(k) != v]
        return f"{name} has the wrong {', '.join(wrong)}" if wrong else None

    return check


def no_file_has(needle: str, glob: str) -> Checker:
    """No workspace file matching ``glob`` still contains ``needle``."""

    def check(ws: Path, answer: str) -> str | None:
        left = sorted(
            str(p.relative_to(ws)) for p in ws.rglob(glob) if needle in (read(ws, str(p)) or "")
        )
        return f"{needle!r} is still in {', '.join(left)}" if left else None

    return check


# -- fixtures ------------------------------------------------------------------------------------

CALC = '''def add(a, b):
    """Return the sum of a and b."""
    return a - b  # BUG


def sub(a, b):
    """Return a minus b."""
    return a - b
'''

OPS = """def add(a, b):
    return a + b


def multiply(a, b):
    return a + b
"""

TEST_OPS = """from mathlib.ops import add, multiply

assert add(2, 3) == 5, "add is wrong"
assert multiply(3, 4) == 12, "multiply is wrong"
print("ok")
"""

CHECK_LIMIT = """from limits import LIMIT

assert LIMIT == 100, f"LIMIT must be 100, not {LIMIT}"
print("ok")
"""

SERVER = """import sys

from app.config import HOST, PORT

if __name__ == "__main__":
    if "--print-port" in sys.argv:
        print(PORT)
    else:
        print(f"serving on {HOST}:{PORT}")
"""

CSV_ROWS = "".join(f"{i},item-{i},{i * 3}\n" for i in range(1, 18))

README_TYPO = """# Fox facts

Teh quick brown fox jumps over the lazy dog.
Foxes are small omnivores.
"""

TODO_FIXTURE = {
    "src/a.py": "def load(path):\n    # TODO: handle errors\n    return open(path).read()\n",
    "src/b.py": "def save(path, text):\n    with open(path, 'w') as f:\n        f.write(text)\n",
    "src/c.py": "def fetch(url):\n    # TODO: add caching\n    return url\n",
    "docs/notes.md": "# Notes\n\nNothing left to do here.\n",
}

API_STATUS = {"service": "ledger", "status": "green", "version": "2.4.1"}
API_QUOTE = {"quote": "Measure twice, cut once.", "author": "proverb"}
"""What the local HTTPS API answers (with the right token) at /api/status and /api/quote."""


TASKS: list[ErrandTask] = [
    # -- tier 1: read and answer -----------------------------------------------------------------
    ErrandTask(
        "version", 1,
        {"VERSION": "3.14.2\n", "README.md": "# Orchid\n\nA tiny tool.\n"},
        "What version number is written in the file VERSION?",
        answer_has("3.14.2"),
    ),
    ErrandTask(
        "config_port", 1,
        {"config.toml": '[server]\nhost = "0.0.0.0"\nport = 8421\n\n[log]\nlevel = "info"\n'},
        "Which port does config.toml configure for the server?",
        answer_has("8421"),
    ),
    ErrandTask(
        "maintainer", 1,
        {"README.md": "# Ledger\n\nBooks for small shops.\n\nMaintainer: Ada Quinn "
                      "<ada@example.org>\nLicense: MIT\n"},
        "Who maintains this project, according to README.md?",
        answer_has("Ada Quinn"),
    ),
    ErrandTask(
        "txt_files", 1,
        {"alpha.txt": "a\n", "beta.txt": "b\n", "gamma.txt": "c\n", "notes.md": "# n\n"},
        "List the names of the .txt files in the workspace.",
        answer_has("alpha.txt", "beta.txt", "gamma.txt"),
    ),
    ErrandTask(
        "function_name", 1,
        {"utils.py": "import re\n\n\ndef slugify(text):\n    return re.sub(r'\\W+', '-', "
                     "text.lower()).strip('-')\n"},
        "What is the name of the function defined in utils.py?",
        answer_has("slugify"),
    ),
    ErrandTask(
        "package_name", 1,
        {"package.json": json.dumps({"name": "orchid-cli", "version": "1.0.0",
                                     "scripts": {"test": "node test.js"}}, indent=2) + "\n"},
        "What is the package name in package.json?",
        answer_has("orchid-cli"),
    ),
    ErrandTask(
        "todo_count", 1,
        {"todo.md": "# Todo\n\n- [ ] buy milk\n- [ ] call Sam\n- [ ] fix the bike\n"
                    "- [ ] file taxes\n"},
        "How many items are on the list in todo.md?",
        answer_matches(r"\b(4|four)\b", "the count 4"),
    ),
    # -- tier 2: one edit --------------------------------------------------------------------------
    ErrandTask(
        "fix_add", 2,
        {"calc.py": CALC},
        "Read calc.py and fix the bug in add so it returns the sum.",
        python_ok("import calc; assert calc.add(2, 3) == 5 and calc.sub(5, 3) == 2",
                  "calc.add(2, 3) is not 5"),
    ),
    ErrandTask(
        "hello_file", 2,
        {"README.md": "# Scratch\n"},
        "Create a file hello.txt containing exactly the text: Hello, world!",
        file_is("hello.txt", "Hello, world!"),
    ),
    ErrandTask(
        "timeout", 2,
        {"settings.py": "TIMEOUT = 30\nRETRIES = 3\nNAME = 'svc'\n"},
        "In settings.py, change TIMEOUT from 30 to 60.",
        python_ok("import settings as s; assert (s.TIMEOUT, s.RETRIES, s.NAME) == (60, 3, 'svc')",
                  "settings.TIMEOUT is not 60 (or another setting changed)"),
    ),
    ErrandTask(
        "typo", 2,
        {"README.md": README_TYPO},
        "Fix the typo 'Teh' in README.md.",
        file_has("README.md", "The quick brown fox jumps over the lazy dog.",
                 "Foxes are small omnivores.", absent=("Teh",)),
    ),
    ErrandTask(
        "gitignore", 2,
        {".gitignore": "__pycache__/\n.venv/\n", "main.py": "print('hi')\n"},
        "Add a line '*.log' to the .gitignore file.",
        file_has(".gitignore", "*.log", "__pycache__/", ".venv/"),
    ),
    ErrandTask(
        "json_debug", 2,
        {"config.json": json.dumps({"name": "demo", "debug": False, "workers": 4}, indent=2)
                        + "\n"},
        "Set debug to true in config.json.",
        json_fields("config.json", {"name": "demo", "debug": True, "workers": 4}),
    ),
    ErrandTask(
        "greeting", 2,
        {"greet.py": 'def greet(name):\n    return "Hello " + name\n'},
        "Change greet in greet.py so that greet('Ann') returns 'Hello, Ann!'.",
        python_ok("import greet; assert greet.greet('Ann') == 'Hello, Ann!'",
                  "greet('Ann') is not 'Hello, Ann!'"),
    ),
    # -- tier 3: several steps ---------------------------------------------------------------------
    ErrandTask(
        "multiply_tests", 3,
        {"mathlib/__init__.py": "", "mathlib/ops.py": OPS, "test_ops.py": TEST_OPS},
        "The tests in test_ops.py fail. Find the bug in the mathlib package, fix it, and run "
        "`python3 test_ops.py` to check that it prints ok.",
        all_of(unchanged("test_ops.py", TEST_OPS),
               python_ok("import runpy; runpy.run_path('test_ops.py')", "test_ops.py fails")),
    ),
    ErrandTask(
        "rename_function", 3,
        {"lib.py": "def get_usr(uid):\n    return {'id': uid, 'name': 'user%d' % uid}\n",
         "main.py": "from lib import get_usr\n\nprint(get_usr(1)['name'])\n",
         "report.py": "from lib import get_usr\n\n\ndef names(ids):\n"
                      "    return [get_usr(i)['name'] for i in ids]\n"},
        "Rename the function get_usr to get_user everywhere in the project (it is used in "
        "several files), then run `python3 main.py` to check that it still works.",
        all_of(no_file_has("get_usr", "*.py"),
               python_ok("import lib, report, runpy; assert lib.get_user(2)['name'] == 'user2'; "
                         "assert report.names([3]) == ['user3']; runpy.run_path('main.py')",
                         "the renamed code does not run")),
    ),
    ErrandTask(
        "todo_list", 3,
        TODO_FIXTURE,
        "Search the project for TODO comments and write the paths of the files that contain "
        "them, one per line, to todos.txt.",
        file_has("todos.txt", "a.py", "c.py", absent=("b.py", "notes.md")),
    ),
    ErrandTask(
        "limit_check", 3,
        {"limits.py": "LIMIT = 10\nBURST = 5\n", "check.py": CHECK_LIMIT},
        "Run `python3 check.py`, read its error, and fix limits.py so that the check passes.",
        all_of(unchanged("check.py", CHECK_LIMIT),
               python_ok("import runpy; runpy.run_path('check.py')", "check.py fails")),
    ),
    ErrandTask(
        "count_rows", 3,
        {"data.csv": "id,name,weight\n" + CSV_ROWS},
        "Use the shell to count the data rows in data.csv (not counting the header line) and "
        "write just that number to count.txt.",
        file_is("count.txt", "17"),
    ),
    ErrandTask(
        "change_port", 3,
        {"app/__init__.py": "", "app/config.py": 'HOST = "127.0.0.1"\nPORT = 8080\n',
         "app/server.py": SERVER, "README.md": "# App\n\nRun `python3 -m app.server`.\n"},
        "Change the server's port from 8080 to 9090 (find where it is defined), then run "
        "`python3 -m app.server --print-port` to confirm.",
        all_of(unchanged("app/server.py", SERVER),
               python_ok("from app.config import PORT, HOST; assert (PORT, HOST) == "
                         "(9090, '127.0.0.1')", "app.config.PORT is not 9090")),
    ),
    ErrandTask(
        "api_status", 3,
        {"README.md": "# Ops notes\n\nThe ledger service has a status API.\n"},
        "Call the status API at {api}/api/status using the granted capability and tell me "
        "the service's status.",
        answer_has(API_STATUS["status"]),
        needs_api=True,
    ),
    ErrandTask(
        "api_quote_file", 3,
        {"README.md": "# Quotes\n"},
        "Fetch {api}/api/quote with the granted capability and save the quote text to "
        "quote.txt.",
        file_has("quote.txt", API_QUOTE["quote"]),
        needs_api=True,
    ),
]  # fmt: skip


def select_tasks(
    tasks: list[ErrandTask], *, pattern: str | None = None, tier: int | None = None
) -> list[ErrandTask]:
    """The tasks whose name matches ``pattern`` (a glob, or a substring) and ``tier``.

    Raises:
        ValueError: Nothing matches (the message lists the names).
    """
    chosen = [
        t
        for t in tasks
        if (tier is None or t.tier == tier)
        and (pattern is None or fnmatch.fnmatch(t.name, pattern) or pattern in t.name)
    ]
    if not chosen:
        names = ", ".join(t.name for t in tasks)
        raise ValueError(f"no task matches --tasks {pattern!r} --tier {tier}; tasks: {names}")
    return chosen


# -- how an errand ended -------------------------------------------------------------------------


def call_signature(reply: str) -> str | None:
    """The canonical form of a model reply that calls a tool, or None for anything else."""
    try:
        obj = json.loads(reply)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("tool"), str) or "final" in obj:
        return None
    arguments = obj.get("arguments", {})
    return f"{obj['tool']}({json.dumps(arguments, sort_keys=True, ensure_ascii=False)})"


def classify(outcome: str, replies: Sequence[str]) -> Ending:
    """How an errand ended, from the host's outcome and the model's replies, step by step.

    See the module doc for the definitions; ``replies`` is every step's
    generated text in order.
    """
    if outcome in ("final", "finish"):
        return "answer"
    if outcome in ("max_steps", "max_tokens"):
        tail = [call_signature(r) for r in replies[-LOOP_RUN:]]
        if len(tail) == LOOP_RUN and tail[0] is not None and len(set(tail)) == 1:
            return "loop"
        return "step limit" if outcome == "max_steps" else "token limit"
    return "error"


# -- the local HTTPS API -------------------------------------------------------------------------


class LocalApi:
    """A loopback HTTPS server with a throwaway CA; it answers only the right Bearer token."""

    def __init__(self) -> None:
        try:
            import trustme
        except ModuleNotFoundError as e:
            raise SystemExit("the capability tasks need trustme (pip install -e '.[dev]')") from e
        self.ca = trustme.CA()
        self.token = "lt-" + secrets.token_urlsafe(24)
        token = self.token

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                routes = {"/api/status": API_STATUS, "/api/quote": API_QUOTE}
                if self.headers.get("Authorization", "") != f"Bearer {token}":
                    self._send(401, {"error": "missing or wrong token"})
                elif self.path in routes:
                    self._send(200, routes[self.path])
                else:
                    self._send(404, {"error": f"no route {self.path}"})

            def _send(self, status: int, body: Mapping[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("localhost").configure_cert(ctx)
        self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.port: int = self._httpd.server_address[1]
        self.base_url = f"https://localhost:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def client_context(self) -> ssl.SSLContext:
        """A TLS context that trusts this API's CA (the broker's, nobody else's)."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def close(self) -> None:
        """Stop serving."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


# -- one errand ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """The model under test: a spec the agent opens, or scripted replies per task (tests).

    Attributes:
        label: How the report names it.
        spec: Opened by the agent process (local) or by the host and relayed (openai).
        scripted: Task name → the scripted model's replies, instead of ``spec``;
            ``{api}`` and ``{cap}`` in them become the local API's URL and the
            session's capability handle.
    """

    label: str
    spec: ModelSpec | None = None
    scripted: Mapping[str, Sequence[str]] | None = None


@dataclass
class TaskRun:
    """One errand's result."""

    task: str
    tier: int
    round: int
    success: bool
    reason: str
    ending: Ending
    outcome: str
    steps: int
    tool_calls: int
    evaluated_tokens: int
    generated_tokens: int
    load_s: float
    wall_s: float
    answer: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    prompts: int = 0
    resamples: int = 0


class AllowAll:
    """Answers every permission prompt "once", except running a command unsandboxed."""

    def __init__(self) -> None:
        self.asked = 0

    def ask(self, request: PermissionRequest) -> PermissionAnswer:
        """Allow once; refuse an unsandboxed command (the benchmark never runs one)."""
        self.asked += 1
        if request.unsandboxed:
            return PermissionAnswer(choice="deny", reason="the benchmark never runs unsandboxed")
        return PermissionAnswer(choice="once")


class StepReplies:
    """Listens to the host's events and keeps each step's generated text."""

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        self._steps: dict[int, list[str]] = defaultdict(list)
        self._echo = echo

    def __call__(self, event: AgentEvent) -> None:
        """Collect one event."""
        if event.kind == "token":
            self._steps[int(event.data.get("step", 0))].append(event.text)
        elif self._echo is not None and event.kind == "tool_call":
            self._echo(f"    -> {event.tool} {str(event.data.get('arguments', ''))[:100]}")

    def replies(self) -> list[str]:
        """Each step's reply, in step order."""
        return ["".join(self._steps[s]).strip() for s in sorted(self._steps)]


def run_task(
    task: ErrandTask,
    model: ModelChoice,
    *,
    api: LocalApi | None,
    limits: ErrandLimits,
    round_no: int = 1,
    isolate: bool = True,
    echo: Callable[[str], None] | None = None,
    resample: Resample | None = None,
) -> TaskRun:
    """Run one errand in a fresh workspace and data dir and check what it did.

    Raises:
        ValueError: The task needs the local API and ``api`` is None.
    """
    if task.needs_api and api is None:
        raise ValueError(f"task {task.name} needs the local HTTPS API")
    with tempfile.TemporaryDirectory(prefix=f"errand-{task.name}-") as tmp:
        root = Path(tmp)
        ws = root / "workspace"
        for rel, text in task.files.items():
            path = ws / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        ws.mkdir(exist_ok=True)
        text = task.task.replace("{api}", api.base_url if api is not None else "")
        hosted = _host(root, ws, model, task, api, limits, isolate, echo, resample)
        with hosted as (host, listener, prompt):
            t0 = time.perf_counter()
            try:
                host.start()
            except Exception as e:  # reported as the task's error, the run goes on
                return _failed(task, round_no, f"the agent did not start: {e}")
            t1 = time.perf_counter()
            result = host.run_errand(text)
            t2 = time.perf_counter()
        return _judge(task, round_no, result, listener.replies(), ws, t1 - t0, t2 - t1, prompt)


@contextmanager
def _host(
    root: Path,
    ws: Path,
    model: ModelChoice,
    task: ErrandTask,
    api: LocalApi | None,
    limits: ErrandLimits,
    isolate: bool,
    echo: Callable[[str], None] | None,
    resample: Resample | None = None,
) -> Iterator[tuple[AgentHost, StepReplies, AllowAll]]:
    """The host and the trusted services a real errand has, in a private data dir."""
    import httpx

    from app.paths import AppPaths
    from app.services import AppServices
    from app.settings import AppSettings
    from models.tokenizer import counter_for_spec
    from vault._crypto import Argon2Params
    from vault.broker import Broker
    from vault.grants import CapabilityGrant, header_injection
    from vault.keystore import NoKeyring
    from vault.store import Vault

    services = AppServices(AppPaths(root / "data", root / "config"), settings=AppSettings())
    session = uuid.uuid4().hex
    vault = Vault.create(
        services.paths.vault_file,
        passphrase="errand bench",
        use_keyring=False,
        keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64),
        idle_timeout=None,
    )
    services.set_vault(vault)
    transport = httpx.HTTPTransport(verify=api.client_context(), retries=0) if api else None
    broker = Broker(
        vault,
        services.grants,
        services.audit,
        transport=transport,
        resolver=lambda host, port: ["127.0.0.1"],
    )
    if api is not None and task.needs_api:
        vault.add(SECRET_NAME, api.token.encode())
        now = datetime.now(UTC)
        broker.grant(
            CapabilityGrant(
                secret_name=SECRET_NAME,
                injection=header_injection("Authorization: Bearer {}"),
                methods=("GET",),
                host="localhost",
                port=api.port,
                path_pattern="/api/*",
                session_id=session,
                approved_by="bench",
                approved_at=now,
                allow_local=True,
            ),
            now=now,
        )
    spec = model.spec
    memory = services.memory_service(
        workspace=ws, session_id=session, count_tokens=counter_for_spec(spec)
    )
    scripted = None
    if model.scripted is not None:
        scripted = root / "replies.json"
        handles = [c.handle for c in broker.capabilities(session)]
        fill = {"{api}": api.base_url if api else "", "{cap}": handles[0] if handles else ""}
        replies = []
        for reply in model.scripted.get(task.name, []):
            for key, value in fill.items():
                reply = reply.replace(key, value)
            replies.append(reply)
        scripted.write_text(json.dumps(replies))
        spec = None
    listener = StepReplies(echo)
    prompt = AllowAll()
    host = AgentHost(
        spec,
        workspace=ws,
        broker=broker,
        memory=memory,
        policy=PolicyEngine([Rule(tool="*", pattern="*", action="allow")]),
        prompt=prompt,
        audit=services.audit,
        session_id=session,
        listener=listener,
        scripted_model=scripted,
        limits=limits,
        resample=resample,
        isolate=isolate,
        hidden_paths=(services.paths.data_dir,),
    )
    try:
        yield host, listener, prompt
    finally:
        host.close()
        broker.close()
        services.close()


def _judge(
    task: ErrandTask,
    round_no: int,
    result: ErrandResult,
    replies: list[str],
    ws: Path,
    load_s: float,
    wall_s: float,
    prompt: AllowAll,
) -> TaskRun:
    answer = result.text if result.outcome in ("final", "finish") else ""
    failure = task.check(ws, answer)
    stats = result.stats
    ending = classify(result.outcome, replies)
    reason = failure or ""
    if ending == "error":
        reason = f"{reason}; " if reason else ""
        reason += f"{result.outcome}: {result.error or 'no answer'}"
    return TaskRun(
        task=task.name,
        tier=task.tier,
        round=round_no,
        success=failure is None,
        reason=reason,
        ending=ending,
        outcome=result.outcome,
        steps=stats.steps if stats else 0,
        tool_calls=len(result.tool_calls),
        evaluated_tokens=stats.evaluated_tokens if stats else 0,
        generated_tokens=stats.generated_tokens if stats else 0,
        load_s=load_s,
        wall_s=wall_s,
        answer=answer,
        calls=[
            {
                "tool": c.tool,
                "arguments": c.arguments,
                "decision": c.decision,
                "ok": c.ok,
                "result": c.summary,
                "confidence": c.confidence,
            }
            for c in result.tool_calls
        ],
        prompts=prompt.asked,
        resamples=stats.resamples if stats else 0,
    )


def _failed(task: ErrandTask, round_no: int, reason: str) -> TaskRun:
    return TaskRun(task.name, task.tier, round_no, False, reason, "error", "crashed",
                   0, 0, 0, 0, 0.0, 0.0, "")  # fmt: skip


def run_all(
    tasks: Sequence[ErrandTask],
    model: ModelChoice,
    *,
    repeat: int = 1,
    limits: ErrandLimits | None = None,
    isolate: bool = True,
    echo: Callable[[str], None] | None = None,
    resample: Resample | None = None,
) -> list[TaskRun]:
    """Run every task ``repeat`` times (rounds over all tasks, so load changes hit them alike)."""
    limits = limits or ErrandLimits()
    api = LocalApi() if any(t.needs_api for t in tasks) else None
    runs: list[TaskRun] = []
    try:
        for round_no in range(1, repeat + 1):
            for task in tasks:
                run = run_task(task, model, api=api, limits=limits, round_no=round_no,
                               isolate=isolate, echo=echo, resample=resample)  # fmt: skip
                runs.append(run)
                if echo is not None:
                    verdict = "ok" if run.success else f"FAILED ({run.reason})"
                    echo(f"  {task.name}: {run.ending}, {run.steps} steps, "
                         f"{run.wall_s:.1f} s: {verdict}")  # fmt: skip
    finally:
        if api is not None:
            api.close()
    return runs


# -- report --------------------------------------------------------------------------------------


def _endings(runs: Sequence[TaskRun]) -> str:
    counts = Counter(r.ending for r in runs)
    return ", ".join(f"{e} {counts[e]}" for e in ENDINGS if counts[e])


def task_table(runs: Sequence[TaskRun]) -> list[str]:
    """Markdown rows: one per task (several rounds summed up)."""
    lines = [
        "| task | tier | success | ending | steps | tool calls | tokens eval / gen | wall s |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    by_task: dict[str, list[TaskRun]] = defaultdict(list)
    for r in runs:
        by_task[r.task].append(r)
    for name, rs in by_task.items():
        ok = sum(r.success for r in rs)
        lines.append(
            f"| {name} | {rs[0].tier} | {ok}/{len(rs)} | {_endings(rs)} "
            f"| {statistics.mean(r.steps for r in rs):.1f} "
            f"| {statistics.mean(r.tool_calls for r in rs):.1f} "
            f"| {statistics.mean(r.evaluated_tokens for r in rs):.0f} / "
            f"{statistics.mean(r.generated_tokens for r in rs):.0f} "
            f"| {statistics.mean(r.wall_s for r in rs):.1f} |"
        )
    return lines


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """The area under the ROC curve of ``scores`` for ``labels`` (ties count half).

    The chance that a random positive scores higher than a random negative;
    None without both.
    """
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def confidence_lines(runs: Sequence[TaskRun]) -> list[str]:
    """How well the tool calls' confidence tells solved errands from failed ones.

    Per errand, its lowest call confidence (DeepConf's trace confidence); per
    call, the call's own, labelled by its errand's success. Empty when no call
    carries a confidence (a backend without log-probabilities).
    """
    errands: list[tuple[float, bool]] = []
    calls: list[tuple[float, bool]] = []
    for r in runs:
        values = [c["confidence"] for c in r.calls if c.get("confidence") is not None]
        calls.extend((v, r.success) for v in values)
        if values:
            errands.append((min(values), r.success))
    if not calls:
        return []
    lines = []
    for what, pairs in (("errands (lowest call)", errands), ("calls", calls)):
        area = auroc([p[0] for p in pairs], [p[1] for p in pairs])
        ok = [p[0] for p in pairs if p[1]]
        bad = [p[0] for p in pairs if not p[1]]
        shown = "n/a" if area is None else f"{area:.2f}"
        lines.append(
            f"Confidence AUROC for success, {what}: {shown} ({len(ok)} solved, median "
            f"{statistics.median(ok) if ok else float('nan'):.2f}; {len(bad)} failed, median "
            f"{statistics.median(bad) if bad else float('nan'):.2f})"
        )
    return lines


def tier_table(runs: Sequence[TaskRun]) -> list[str]:
    """Markdown rows: one per tier and one for all (means per errand)."""
    lines = [
        "| tier | errands | success | steps | tool calls | tokens eval / gen | wall s | endings |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    groups: list[tuple[str, list[TaskRun]]] = [
        (str(t), [r for r in runs if r.tier == t]) for t in sorted({r.tier for r in runs})
    ]
    groups.append(("all", list(runs)))
    for label, rs in groups:
        ok = sum(r.success for r in rs)
        lines.append(
            f"| {label} | {len(rs)} | {ok}/{len(rs)} ({100 * ok / len(rs):.0f} %) "
            f"| {statistics.mean(r.steps for r in rs):.1f} "
            f"| {statistics.mean(r.tool_calls for r in rs):.1f} "
            f"| {statistics.mean(r.evaluated_tokens for r in rs):.0f} / "
            f"{statistics.mean(r.generated_tokens for r in rs):.0f} "
            f"| {statistics.mean(r.wall_s for r in rs):.1f} | {_endings(rs)} |"
        )
    return lines


def machine_note() -> str:
    """Cores and load, to say whether the figures were taken on a busy machine."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} cores, load average {load:.1f}"


# -- command line --------------------------------------------------------------------------------


def model_from_args(args: argparse.Namespace) -> ModelChoice:
    """The :class:`ModelChoice` the options name (the embedded model by default).

    Raises:
        SystemExit: The options are inconsistent (the message says which).
    """
    from models.backends import backend_for

    # What the backend takes comes from its settings in the registry, not its name.
    fields = backend_for(args.backend).settings_model.model_fields
    options: dict[str, Any] = {"n_ctx": args.n_ctx, "n_threads": args.threads}
    if args.model is not None and "path" not in fields:
        raise SystemExit(f"--backend {args.backend} takes no --model FILE")
    if "base_url" in fields:
        if not args.base_url or not args.model_name:
            raise SystemExit(f"--backend {args.backend} needs --base-url and --model-name")
        options.update(base_url=args.base_url, model_name=args.model_name,
                       allow_local=args.allow_local)  # fmt: skip
        spec = ModelSpec.from_options(args.backend, options)
        return ModelChoice(f"{args.model_name} at {args.base_url}", spec)
    if args.model is not None:
        path = args.model.expanduser().resolve()
        if not path.is_file():
            raise SystemExit(f"--model {path}: no such file")
        spec = ModelSpec.from_options(args.backend, {**options, "path": path})
        return ModelChoice(path.name, spec)
    from models.catalog import embedded_default

    spec = ModelSpec.from_options(args.backend, options)
    return ModelChoice(f"embedded ({embedded_default().name})", spec)


def main(argv: list[str] | None = None) -> int:
    """Run the errand benchmark and print its tables; 0 when it ran (whatever the scores)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, metavar="FILE", help="a local GGUF file")
    from models.backends import backend_names

    parser.add_argument("--backend", choices=backend_names(), default="llama.cpp")
    parser.add_argument("--base-url", help="the OpenAI-compatible server (--backend openai)")
    parser.add_argument("--model-name", help="the server's model name (--backend openai)")
    parser.add_argument("--allow-local", action="store_true",
                        help="allow a server on loopback or a private address")  # fmt: skip
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    parser.add_argument("--tasks", metavar="PATTERN", help="task names (glob or substring)")
    parser.add_argument("--tier", type=int, choices=(1, 2, 3))
    parser.add_argument("--repeat", type=int, default=1, metavar="N")
    parser.add_argument("--max-steps", type=int, default=ErrandLimits().max_steps)
    parser.add_argument("--json", type=Path, metavar="OUT", help="write every run as JSON")
    parser.add_argument("--no-isolation", action="store_true", help="agent without bubblewrap")
    parser.add_argument("--resample", type=float, metavar="FLOOR",
                        help="resample tool calls whose confidence is below FLOOR")  # fmt: skip
    parser.add_argument("--resample-tries", type=int, default=3, metavar="K",
                        help="generations of an unsure step at most (with --resample)")  # fmt: skip
    parser.add_argument("--quiet", "-q", action="store_true", help="no per-task progress lines")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        tasks = select_tasks(TASKS, pattern=args.tasks, tier=args.tier)
    except ValueError as e:
        parser.error(str(e))
    model = model_from_args(args)
    limits = ErrandLimits(max_steps=args.max_steps)
    resample = None
    if args.resample is not None:
        try:
            resample = Resample(floor=args.resample, tries=args.resample_tries)
        except ValueError as e:
            parser.error(f"--resample-tries: {e}")
    echo = None if args.quiet else (lambda line: print(line, flush=True))
    before = machine_note()
    started = time.perf_counter()
    runs = run_all(tasks, model, repeat=args.repeat, limits=limits,
                   isolate=not args.no_isolation, echo=echo, resample=resample)  # fmt: skip
    total = time.perf_counter() - started
    after = machine_note()
    print(f"\nErrands with {model.label}: {len(tasks)} tasks x {args.repeat}, "
          f"max {args.max_steps} steps, {total:.0f} s in all "
          f"(model loads {sum(r.load_s for r in runs):.0f} s); {before} before, "
          f"{after} after.\n")  # fmt: skip
    print("\n".join(task_table(runs)))
    print()
    print("\n".join(tier_table(runs)))
    if resample is not None:
        print(f"\nResampled below confidence {resample.floor} (up to {resample.tries} tries at "
              f"temperature {resample.temperature}): {sum(r.resamples for r in runs)} extra "
              "generations.")  # fmt: skip
    confidence = confidence_lines(runs)
    if confidence:
        print()
        print("\n".join(confidence))
    if args.json is not None:
        report: dict[str, Any] = {
            "model": model.label,
            "max_steps": args.max_steps,
            "resample": resample.model_dump() if resample is not None else None,
            "total_s": total,
            "machine": {"before": before, "after": after},
            "runs": [asdict(r) for r in runs],
        }
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"\n(wrote {args.json})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
