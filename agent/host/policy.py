"""The permission policy: which tool calls run, which ask the user, which are refused.

A :class:`Rule` names a tool and a pattern over the call's main argument:

- file tools (``read_file(src/**)``): gitignore-style globs over the path
  relative to the workspace (``*`` within a name, ``**`` across directories; a
  pattern without ``/`` matches a name at any depth; a match on a directory
  covers everything below it). Paths are resolved (symlinks followed inside
  the workspace) before matching, so a symlink cannot dodge a deny rule.
- ``shell(git status)``: the command is split on ``&&``, ``||``, ``;``, ``|``,
  ``&``; *each* part must match. Allow patterns match a part exactly, or as a
  prefix when they end in ``*`` (``npm run test:*``, ``git *``); deny and ask
  patterns always match as prefixes on word boundaries (``rm`` catches
  ``rm -rf x``), also after ``env``/``sudo``/``timeout``-like wrappers and
  their options, variable assignments, a directory (``/bin/rm``), inside
  ``$(...)`` and inside ``sh -c '...'``. A command with expansions,
  substitutions, ``eval``, redirections or several lines is never allowed by a
  rule short of ``shell(*)``, and not even by that while shell deny rules
  exist (they cannot see what it runs). Shell deny rules are a tripwire, not
  the boundary: that is the sandbox.
- ``http_request(domain:api.github.com)``, ``domain:*.github.com``.
- ``net(github.com)``, ``net(*.pypi.org, GET)``: requests a sandboxed command
  sends through the egress proxy (the ``request`` pattern kind: a host, then
  the methods it allows; none: every method).
- memory tools: a glob over the topic (or query).
- ``mcp(github.*)``: a glob over the ``server.tool`` name of an MCP server's
  tool (the ``mcp`` rule kind, :mod:`agent.host.tools.mcp`; the host decides
  each MCP tool call as an ``mcp`` call). Like ``shell`` ("execute"), it asks
  unless a rule decides.

Evaluation: deny rules first, then ask, then allow; within each, the first
match wins; deny holds in every mode. No match: the defaults (reads inside the
workspace allowed, except files that usually hold credentials, see
:data:`CREDENTIAL_FILES`, which ask; writes, shell, memory writes and network ask). Taint (the
context holds untrusted content) makes every network call and every use of a
capability ask, whatever the rules say (a proxied ``net`` request, one of
many a decided command sends, asks then only when it carries a capability).
A shell command that cannot be sandboxed always asks, with its own "run
unsandboxed" label.

Why one module of about 750 lines: the rule language, the matching of each
pattern kind (most of it the shell splitter that deny rules depend on) and
the rule store are one contract, tested together in ``tests/agent/test_policy.py``.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import PolicyError, ToolError
from agent.host.tools.base import Effect, ToolSpec
from agent.host.tools.paths import Workspace
from agent.host.tools.registry import ALL_TOOLS, RULE_KINDS, rule_spec

Action = Literal["allow", "ask", "deny"]
Scope = Literal["user", "workspace", "session"]

#: What happens when no rule matches, by the tool's effect.
DEFAULT_ACTIONS: dict[Effect, Action] = {
    "read": "allow",
    "memory_read": "allow",
    "final": "allow",
    "write": "ask",
    "execute": "ask",
    "network": "ask",
    "egress": "ask",
    "memory_write": "ask",
}

#: Files that usually hold credentials: reading one asks by default (a rule
#: that matches the path decides instead). Patterns as in file rules; SSH keys
#: are named by their algorithms, so ``id_utils.py`` does not ask.
CREDENTIAL_FILES: tuple[str, ...] = (
    ".env*",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".npmrc",
    ".netrc",
    ".pypirc",
    "credentials*",
    "*.kdbx",
)

_SEPARATORS = frozenset({"&&", "||", ";", "|", "&", "|&", ";;", "(", ")", "{", "}"})
_WRAPPERS = frozenset(
    {
        "env", "command", "exec", "nice", "nohup", "time", "sudo", "doas", "xargs",
        "builtin", "eval", "timeout", "stdbuf", "ionice", "setsid", "chroot",
    }
)  # fmt: skip
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_WRAPPER_ARG = re.compile(r"^[0-9.]+[smhd]?$|^(KILL|TERM|INT|HUP|[0-9]+)$")
_HOST_PATTERN = re.compile(r"^(\*\.)?([a-z0-9-]+\.)*[a-z0-9-]+$")


class Rule(BaseModel):
    """One permission rule, e.g. ``shell(npm run test:*)`` → allow, for this workspace.

    Attributes:
        tool: A tool name, or ``*`` for every tool (then ``pattern`` must be ``*``).
        pattern: What the call's main argument must match (see the module doc).
        action: ``allow``, ``ask`` or ``deny``.
        scope: ``session`` (kept in memory), ``workspace`` or ``user`` (persisted).
    """

    model_config = ConfigDict(frozen=True)

    tool: str = Field(description="Tool name, or '*' for every tool.")
    pattern: str = Field(default="*", description="Pattern over the call's main argument.")
    action: Action
    scope: Scope = "session"

    @field_validator("pattern")
    @classmethod
    def _pattern_text(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("pattern is empty (use '*' for everything)")
        if any(c in value for c in "\x00\n\r"):
            raise ValueError("pattern contains a NUL byte or a line break")
        if len(value) > 500:
            raise ValueError("pattern is longer than 500 characters")
        return value

    @model_validator(mode="after")
    def _fits_tool(self) -> Rule:
        if self.tool == "*":
            if self.pattern != "*":
                raise ValueError("a rule for every tool ('*') must have the pattern '*'")
            return self
        spec = rule_spec(self.tool)
        if spec is None:
            raise ValueError(f"unknown tool {self.tool!r}; known: {', '.join(_known())}")
        if self.pattern == "*":
            return self
        if spec.main_argument is None:
            raise ValueError(f"{self.tool} takes no pattern; use {self.tool}(*)")
        if spec.pattern == "domain":
            if not self.pattern.startswith("domain:"):
                raise ValueError(f"{self.tool} patterns look like 'domain:api.example.com'")
            host = self.pattern.removeprefix("domain:").lower()
            if not _HOST_PATTERN.match(host):
                raise ValueError(f"{host!r} is not a host name (wildcard only as '*.' prefix)")
        elif spec.pattern == "request":
            _request_pattern(self.pattern)  # raises ValueError naming the problem
        elif spec.pattern == "command":
            try:
                tokens = shlex.split(self.pattern)
            except ValueError as e:
                raise ValueError(f"shell pattern does not parse: {e}") from e
            if not tokens:
                raise ValueError("shell pattern has no words")
        return self

    def __str__(self) -> str:
        return f"{self.tool}({self.pattern})"

    @classmethod
    def parse(cls, text: str, *, action: Action, scope: Scope = "session") -> Rule:
        """Build a rule from its written form, ``tool(pattern)`` or just ``tool``.

        Raises:
            PolicyError: The text is not of that form or the rule is invalid;
                the message names the rule.
        """
        text = text.strip()
        match = re.fullmatch(r"([A-Za-z_*][A-Za-z0-9_]*)(?:\((.*)\))?", text, flags=re.S)
        if match is None:
            raise PolicyError(f"rule {text!r} is not of the form tool(pattern)")
        tool, pattern = match.group(1), match.group(2)
        try:
            return cls(tool=tool, pattern=pattern if pattern is not None else "*",
                       action=action, scope=scope)
        except ValidationError as e:
            raise PolicyError(f"rule {text!r} is invalid: {_first_error(e)}") from e


def _first_error(error: ValidationError) -> str:
    item = error.errors(include_url=False, include_input=False)[0]
    return str(item["msg"]).removeprefix("Value error, ")


class ToolCallRequest(BaseModel):
    """A tool call as the policy sees it.

    Attributes:
        tool: The tool name.
        arguments: The call's arguments (as the model sent them).
        workspace: The workspace, so file paths can be resolved before matching.
        sandbox_available: Whether shell commands would run sandboxed.
    """

    model_config = ConfigDict(frozen=True)

    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    workspace: Path | None = None
    sandbox_available: bool = True


class Decision(BaseModel):
    """The policy's answer for one call.

    Attributes:
        action: ``allow``, ``ask`` or ``deny``.
        rule: The rule that decided, or ``None`` for a default or taint.
        reason: Why, in words (shown in the prompt and the audit log).
        unsandboxed: The call is a shell command that would run without a
            sandbox: the prompt must be the separate "run unsandboxed" one.
    """

    model_config = ConfigDict(frozen=True)

    action: Action
    rule: Rule | None = None
    reason: str
    unsandboxed: bool = False


# -- matching ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    anchored = "/" in pattern.rstrip("/")
    body = pattern.strip("/").removeprefix("./")
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if body.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if body.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = body.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                inner = body[i + 1 : end].replace("\\", "\\\\")
                if inner.startswith("!"):
                    inner = "^" + inner[1:]
                out.append(f"[{inner}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    prefix = "" if anchored else "(?:.*/)?"
    return re.compile(f"^{prefix}{''.join(out)}(?:/.*)?$")


def path_matches(pattern: str, path: str) -> bool:
    """Whether the workspace-relative ``path`` matches the gitignore-style ``pattern``."""
    if pattern in ("*", "**"):
        return True
    return _glob_regex(pattern).match(path) is not None


@dataclass(frozen=True)
class _Shell:
    """A command split for matching."""

    strict: tuple[tuple[str, ...], ...] | None  # None: cannot be auto-allowed
    loose: tuple[tuple[str, ...], ...]  # for deny/ask: wrappers and assignments stripped


def _split_segments(text: str) -> list[list[str]]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    # shlex would drop everything after a '#' even inside a word ("status#x; rm"),
    # where sh sees no comment: keep it, so every command sh runs is seen.
    lexer.commenters = ""
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token in _SEPARATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    return [s for s in segments if s]


# $0 (the shell itself), $1, $@, $$, $"..." are expansions too.
_DYNAMIC = re.compile(r"\$[A-Za-z0-9_{('\"@*#?$!-]|`|<\(|>\(|[\n\r]|\beval\b")
_SHELL_C = re.compile(r"^-[A-Za-z]*c[A-Za-z]*$")
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "busybox"})


def _split_shell(command: str, *, depth: int = 0) -> _Shell:
    # Expansions, substitutions, eval and several lines: what runs is decided
    # at run time, so no rule short of shell(*) may allow it.
    opaque = _DYNAMIC.search(command) is not None
    try:
        strict_segments = _split_segments(command)
    except ValueError:
        strict_segments = []
        opaque = True
    if any(any(set(t) <= set("<>&") for t in seg) for seg in strict_segments):
        opaque = True  # redirections
    # For deny and ask: treat substitutions as separators so their commands are seen.
    flattened = command
    for marker in ("$(", "`", "<(", ">(", ")", "\n", "\r"):
        flattened = flattened.replace(marker, " ; ")
    try:
        loose_segments = _split_segments(flattened)
    except ValueError:
        loose_segments = [flattened.split()]
    loose: list[tuple[str, ...]] = []
    for seg in loose_segments + strict_segments:
        while seg and (_ASSIGNMENT.match(seg[0]) or seg[0] in _WRAPPERS):
            seg = seg[1:]
            # The wrapper's own options and numbers ("timeout -s 9 5 rm", "nice -n 5").
            while seg and (seg[0].startswith("-") or _WRAPPER_ARG.match(seg[0])):
                seg = seg[1:]
        if not seg:
            continue
        # "/bin/rm" is "rm"; "bash -c 'rm x'" runs "rm x".
        seg = [seg[0].rsplit("/", 1)[-1], *seg[1:]]
        loose.append(tuple(seg))
        # "-c" may come combined with other options ("sh -ec", "bash -xc").
        flag = next((i for i, t in enumerate(seg[1:-1], 1) if _SHELL_C.match(t)), None)
        if seg[0] in _SHELLS and flag is not None and depth < 3:
            inner = seg[flag + 1]
            loose.extend(_split_shell(inner, depth=depth + 1).loose)
    strict = None if opaque else tuple(tuple(s) for s in strict_segments)
    return _Shell(strict=strict, loose=tuple(loose))


def _shell_allow_matches(pattern: str, segment: Sequence[str]) -> bool:
    tokens = shlex.split(pattern)
    if tokens[-1] == "*":
        head = tokens[:-1]
        return len(segment) >= len(head) and all(
            fnmatch.fnmatchcase(s, p) for s, p in zip(segment, head, strict=False)
        )
    if tokens[-1].endswith("*"):
        return len(segment) >= len(tokens) and all(
            fnmatch.fnmatchcase(s, p) for s, p in zip(segment, tokens, strict=False)
        )
    return len(segment) == len(tokens) and all(
        fnmatch.fnmatchcase(s, p) for s, p in zip(segment, tokens, strict=True)
    )


def _shell_prefix_matches(pattern: str, segment: Sequence[str]) -> bool:
    tokens = shlex.split(pattern)
    if tokens[-1] == "*":
        tokens = tokens[:-1]
    return len(segment) >= len(tokens) and all(
        fnmatch.fnmatchcase(s, p) for s, p in zip(segment, tokens, strict=False)
    )


def _url_host(url: str) -> str | None:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        # The broker calls the IDNA form (full-width letters and dots folded).
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        pass  # the broker refuses such a host; match it as written
    return host.rstrip(".").lower()


def _host_matches(pattern: str, host: str | None) -> bool:
    if pattern == "*":
        return True
    if host is None:
        return False
    want = pattern.removeprefix("domain:").lower()
    if want.startswith("*."):
        return host.endswith(want[1:])
    return host == want


class PolicyEngine:
    """Decides tool calls from an ordered list of rules.

    Args:
        rules: The rules in order (session, then workspace, then user, say);
            order only matters within one action.
        workspace: Resolves file paths of requests that name no workspace.
    """

    def __init__(self, rules: Iterable[Rule] = (), *, workspace: Path | None = None) -> None:
        self.rules: list[Rule] = list(rules)
        self.workspace = workspace

    def add_rule(self, rule: Rule) -> None:
        """Add a rule (e.g. "allow for this session") after the existing ones."""
        self.rules.append(rule)

    def decide(self, request: ToolCallRequest, *, tainted: bool) -> Decision:
        """Decide one call: deny > ask > allow, first match wins, then defaults.

        Args:
            request: The call.
            tainted: Untrusted content is in the agent's context.

        Returns:
            The decision.

        Raises:
            PolicyError: The tool is unknown.
        """
        spec = rule_spec(request.tool)
        if spec is None:
            raise PolicyError(f"no policy for unknown tool {request.tool!r}")
        matched: dict[Action, Rule] = {}
        for action in ("deny", "ask", "allow"):
            for rule in self.rules:
                if rule.action == action and self._matches(rule, request):
                    matched[action] = rule
                    break
            if "deny" in matched:
                break
        command = spec.pattern == "command"
        if "deny" not in matched and "allow" not in matched and command:
            chained = self._chain_allowed(request)
            if chained is not None:
                matched["allow"] = chained
        if "deny" in matched:
            rule = matched["deny"]
            return Decision(action="deny", rule=rule, reason=f"denied by rule {rule}")
        if command and not request.sandbox_available:
            return Decision(
                action="ask",
                rule=matched.get("ask") or matched.get("allow"),
                reason="bubblewrap is unavailable: the command would run WITHOUT a sandbox",
                unsandboxed=True,
            )
        uses_capability = spec.capability_argument is not None and bool(
            request.arguments.get(spec.capability_argument)
        )
        if tainted and (spec.effect == "network" or uses_capability):
            what = "uses a capability" if uses_capability else "goes to the network"
            return Decision(
                action="ask",
                rule=None,
                reason=f"untrusted content is in the context and this call {what}",
            )
        if "ask" in matched:
            rule = matched["ask"]
            return Decision(action="ask", rule=rule, reason=f"rule {rule} asks")
        if "allow" in matched and command and self._deny_blind(request):
            return Decision(
                action="ask",
                rule=matched["allow"],
                reason="the command is built at run time ($VAR, substitution, eval); "
                "deny rules cannot see what it runs",
            )
        if "allow" in matched:
            rule = matched["allow"]
            return Decision(action="allow", rule=rule, reason=f"allowed by rule {rule}")
        if spec.reads_content:
            pattern = self._credential_file(request)
            if pattern is not None:
                return Decision(
                    action="ask",
                    rule=None,
                    reason=f"default: the file may hold credentials (it matches {pattern})",
                )
        default = DEFAULT_ACTIONS[spec.effect]
        return Decision(action=default, rule=None, reason=f"default for {spec.effect} calls")

    def _credential_file(self, request: ToolCallRequest) -> str | None:
        """The :data:`CREDENTIAL_FILES` pattern the call's path matches, if any."""
        probe = [Rule(tool=request.tool, pattern=p, action="ask") for p in CREDENTIAL_FILES]
        return next((str(r.pattern) for r in probe if self._matches(r, request)), None)

    def read_filter(self) -> Callable[[str], bool]:
        """A predicate for :attr:`agent.host.tools.base.ToolContext.may_read`.

        A workspace-relative path may be read unless a deny rule for a tool
        that shows file content (``read_file``; or every tool) matches it, so
        ``search_files`` skips what ``read_file`` would refuse.
        """
        denies = [
            r
            for r in self.rules
            if r.action == "deny" and (r.tool == "*" or _reads_content(r.tool))
        ]

        def may_read(path: str) -> bool:
            return not any(path_matches(r.pattern, path) for r in denies)

        return may_read

    def _deny_blind(self, request: ToolCallRequest) -> bool:
        """Shell deny rules exist but the command hides what it runs."""
        has_deny = any(r.action == "deny" and r.tool in ("*", request.tool) for r in self.rules)
        if not has_deny:
            return False
        return _split_shell(_main(request)).strict is None

    def _chain_allowed(self, request: ToolCallRequest) -> Rule | None:
        """A chained command whose parts are each allowed by *some* allow rule."""
        split = _split_shell(_main(request))
        if not split.strict or len(split.strict) < 2:
            return None
        first: Rule | None = None
        for segment in split.strict:
            rule = next(
                (
                    r
                    for r in self.rules
                    if r.action == "allow"
                    and r.tool in ("*", request.tool)
                    and (r.pattern == "*" or _shell_allow_matches(r.pattern, segment))
                ),
                None,
            )
            if rule is None:
                return None
            first = first or rule
        return first

    def _matches(self, rule: Rule, request: ToolCallRequest) -> bool:
        if rule.tool not in ("*", request.tool):
            return False
        if rule.pattern == "*":
            return True
        pattern = _spec(request.tool).pattern
        if pattern == "command":
            split = _split_shell(_main(request))
            if rule.action == "allow":
                if split.strict is None or not split.strict:
                    return False
                return all(_shell_allow_matches(rule.pattern, seg) for seg in split.strict)
            return any(_shell_prefix_matches(rule.pattern, seg) for seg in split.loose)
        if pattern == "domain":
            return _host_matches(rule.pattern, _url_host(_main(request)))
        if pattern == "request":
            method = str(request.arguments.get("method", ""))
            return _request_matches(rule.pattern, _main(request).lower(), method.upper())
        if pattern == "path":
            if request.workspace is None and self.workspace is not None:
                request = request.model_copy(update={"workspace": self.workspace})
            subject, resolved = _path_subject(request)
            parts = PurePosixPath(subject).parts
            if resolved:
                return path_matches(rule.pattern, subject)
            if rule.action == "allow":
                # Unresolved: allow only a plain relative path, as written.
                plain = not subject.startswith("/") and ".." not in parts
                return plain and path_matches(rule.pattern, subject)
            # Unresolved (no workspace known, or a path the tool will refuse):
            # a deny or ask rule matches if it matches any tail of the path, so
            # "/home/u/ws/secrets/k" still meets "secrets/**".
            return any(
                path_matches(rule.pattern, PurePosixPath(*parts[i:]).as_posix())
                for i in range(len(parts))
            )
        return fnmatch.fnmatchcase(_main(request), rule.pattern)


def _known() -> list[str]:
    return [*ALL_TOOLS, *RULE_KINDS]


def _spec(tool: str) -> ToolSpec:
    spec = rule_spec(tool)
    if spec is None:
        raise PolicyError(f"no policy for unknown tool {tool!r}")
    return spec


def _main(request: ToolCallRequest, default: str = "") -> str:
    """The call's main argument as text (see :attr:`ToolSpec.main_argument`)."""
    argument = _spec(request.tool).main_argument
    return str(request.arguments.get(argument, default)) if argument else default


def _reads_content(tool: str) -> bool:
    spec = rule_spec(tool)
    return spec is not None and spec.reads_content


def _request_pattern(pattern: str) -> tuple[str, frozenset[str]]:
    """Split ``host[, METHOD...]``; raises ValueError naming what is wrong."""
    host, *methods = [part.strip() for part in pattern.split(",")]
    host = host.lower()
    if host != "*" and not _HOST_PATTERN.match(host):
        raise ValueError(f"{host!r} is not a host name (wildcard only as '*.' prefix)")
    wanted = frozenset(m.upper() for m in methods if m)
    unknown = sorted(m for m in wanted if not re.fullmatch(r"[A-Z]+", m))
    if unknown:
        raise ValueError(f"{', '.join(unknown)} is not an HTTP method")
    return host, wanted


def _request_matches(pattern: str, host: str, method: str) -> bool:
    want, methods = _request_pattern(pattern)
    if methods and method not in methods:
        return False
    return _host_matches(want, host)


def _path_subject(request: ToolCallRequest) -> tuple[str, bool]:
    """The path a file rule matches, and whether it was resolved in the workspace."""
    raw = _main(request, ".")
    if request.workspace is not None:
        try:
            where = Workspace(request.workspace).resolve(raw, must_exist=False)
        except ToolError:
            pass  # the tool itself refuses such paths; match what was written
        else:
            return where.relative.as_posix(), True
    text = PurePosixPath(raw.strip() or ".").as_posix()
    return text.removeprefix("./"), False


def suggest_rule(request: ToolCallRequest, *, action: Action = "allow") -> Rule:
    """The rule an "always" answer would save for ``request`` (the user may edit it).

    Exact, never broader than the call: the command, the resolved path, the
    host, the MCP tool.
    """
    spec = _spec(request.tool)
    if spec.main_argument is None:
        pattern = "*"
    elif spec.pattern == "command":
        pattern = _main(request, "*").strip() or "*"
    elif spec.pattern == "domain":
        host = _url_host(_main(request))
        pattern = f"domain:{host}" if host else "*"
    elif spec.pattern == "path":
        pattern = _path_subject(request)[0]
    else:
        pattern = _main(request, "*") or "*"
    return Rule(tool=request.tool, pattern=pattern, action=action, scope="workspace")


# -- persistence ------------------------------------------------------------------------------


class StoredRule(BaseModel):
    """A persisted rule with its row id and (for workspace rules) its workspace."""

    model_config = ConfigDict(frozen=True)

    id: int
    rule: Rule
    workspace: str | None
    created_at: datetime


class RuleStore:
    """User and workspace rules in the ``policy_rules`` table of ``keyless.db``.

    Args:
        db_path: The SQLite database file (created if missing).
        workspace: The workspace ``add`` files workspace-scoped rules under
            when the caller names none.
    """

    TABLE = "policy_rules"

    def __init__(self, db_path: Path, *, workspace: Path | None = None) -> None:
        import sqlite_utils

        self.workspace = workspace
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite_utils.Database(db_path)
            self._db[self.TABLE].create(  # type: ignore[union-attr]  # sqlite_utils: Table|View
                {
                    "id": int,
                    "scope": str,
                    "workspace": str,
                    "tool": str,
                    "pattern": str,
                    "action": str,
                    "created_at": str,
                },
                pk="id",
                if_not_exists=True,
            )
        except Exception as e:
            raise PolicyError(f"cannot open the rule store {db_path}: {e}") from e

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def add(self, rule: Rule, *, workspace: Path | None = None, now: datetime | None = None) -> int:
        """Persist ``rule``; workspace rules need ``workspace``.

        Args:
            rule: The rule.
            workspace: For workspace rules; defaults to the store's workspace.
            now: When it was saved (default: now).

        Returns:
            The new rule's id.

        Raises:
            PolicyError: A session rule (never persisted) or a scope/workspace mismatch.
        """
        if rule.scope == "session":
            raise PolicyError(f"rule {rule} has scope 'session'; session rules are not saved")
        if rule.scope == "workspace" and workspace is None:
            workspace = self.workspace
        if rule.scope == "workspace" and workspace is None:
            raise PolicyError(f"rule {rule} has scope 'workspace' but no workspace was given")
        if rule.scope == "user" and workspace is not None:
            raise PolicyError(f"rule {rule} has scope 'user'; it applies to every workspace")
        ws = str(Path(workspace).resolve()) if workspace is not None else ""
        when = (now or datetime.now(UTC)).isoformat()
        row = {
            "scope": rule.scope,
            "workspace": ws,
            "tool": rule.tool,
            "pattern": rule.pattern,
            "action": rule.action,
            "created_at": when,
        }
        table = self._db.table(self.TABLE)
        table.insert(row)
        last = table.last_pk
        return int(last) if last is not None else 0

    def remove(self, rule_id: int) -> None:
        """Delete the rule with ``rule_id``.

        Raises:
            PolicyError: No such rule.
        """
        table = self._db.table(self.TABLE)
        if table.count_where("id = ?", [rule_id]) == 0:
            raise PolicyError(f"no saved rule with id {rule_id}")
        table.delete(rule_id)

    def stored(self, workspace: Path | None = None) -> list[StoredRule]:
        """Saved rules: this workspace's (default: the store's) first, then the user's.

        Raises:
            PolicyError: A saved row does not validate; the message names it.
        """
        workspace = workspace if workspace is not None else self.workspace
        ws = str(Path(workspace).resolve()) if workspace is not None else None
        rows: list[Mapping[str, Any]] = []
        table = self._db.table(self.TABLE)
        if ws is not None:
            rows += list(
                table.rows_where("scope = 'workspace' AND workspace = ?", [ws], order_by="id")
            )
        rows += list(table.rows_where("scope = 'user'", order_by="id"))
        out: list[StoredRule] = []
        for row in rows:
            text = f"#{row['id']} {row['tool']}({row['pattern']}) -> {row['action']}"
            try:
                rule = Rule(
                    tool=row["tool"], pattern=row["pattern"], action=row["action"],
                    scope=row["scope"],
                )
            except ValidationError as e:
                raise PolicyError(f"saved rule {text} is invalid: {_first_error(e)}") from e
            out.append(
                StoredRule(
                    id=row["id"], rule=rule, workspace=row["workspace"] or None,
                    created_at=datetime.fromisoformat(row["created_at"]),
                )
            )
        return out

    def rules(self, workspace: Path | None = None) -> list[Rule]:
        """The saved rules that apply in ``workspace``, in evaluation order."""
        return [s.rule for s in self.stored(workspace)]
