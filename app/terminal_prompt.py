"""The permission prompt on a terminal, for the headless ``keyless run``."""

from __future__ import annotations

import json
import unicodedata
from typing import IO, Literal

from agent.errors import (
    PolicyError,
)
from agent.host.delivery import summary_line
from agent.host.permission import PermissionAnswer, PermissionRequest
from agent.host.policy import Rule
from agent.host.tools.net import NET_RULE


class TerminalPrompt:
    """A :class:`PermissionPrompt` on a terminal (the headless ``keyless run``).

    Shows the call, why it is asked, the taint and sandbox warnings, and reads
    one of ``o`` (once), ``s`` (session), ``a`` (always: the suggested rule is
    shown and may be edited, then saved for this workspace or every
    workspace) or ``d`` (deny, with a reason for the agent). End of input
    denies. An unsandboxed shell command offers only once or deny.

    Args:
        stdin: Where answers are read.
        out: Where questions are written.
        allow_reads: Answer "once" without asking for calls whose effect is a
            read (``--yes-read-only``). Deny rules are applied before any
            prompt, so this never overrides them.
    """

    def __init__(self, stdin: IO[str], out: IO[str], *, allow_reads: bool = False) -> None:
        self._in = stdin
        self._out = out
        self._allow_reads = allow_reads

    def ask(self, request: PermissionRequest) -> PermissionAnswer:
        """Ask on the terminal; see the class description."""
        if self._allow_reads and request.effect in ("read", "memory_read"):
            self._say(f"[auto] allowed once: {request.tool} (--yes-read-only)")
            return PermissionAnswer(choice="once", reason="--yes-read-only")
        self._say("")
        self._say(f"Permission needed: {request.tool} ({request.effect})")
        if request.tool == NET_RULE:  # Egress proxy: a sandboxed command's request
            args = request.arguments
            self._say(f"    {args.get('method', '?')} {args.get('host', '?')}"
                      f"{summary_line(str(args.get('path', '')), 200)}")
            if args.get("capability"):
                self._say("    carries a capability handle (the proxy swaps in the secret)")
            self._say(f"    asked by: {summary_line(str(args.get('command', '?')), 300)}")
        else:
            for name, value in request.arguments.items():
                text = value if isinstance(value, str) else json.dumps(value)
                self._say(f"    {name}: {summary_line(text, 300)}")
        self._say(f"  why: {request.reason}")
        if request.confidence is not None:
            self._say(f"  model confidence: {request.confidence:.2f}")
        if request.tainted:
            self._say("  ! untrusted content (files, web, output) is in the agent's context")
        if request.runs_code:
            self._say("  !! RUNS CODE ON YOUR MACHINE: your own tools would execute what it writes")
            for line in request.runs_code:
                self._say(f"     - {line}")
        if request.unsandboxed:
            self._say("  !! this command would run WITHOUT the sandbox, with your permissions")
            options = "[o]nce or [d]eny"
        else:
            options = f"[o]nce, [s]ession, [a]lways ({request.suggested_rule}), [d]eny"
        while True:
            answer = self._read(f"Allow? {options}: ")
            if answer is None:
                return PermissionAnswer(choice="deny", reason="no answer (end of input)")
            choice = answer.strip().lower()[:1]
            if choice == "o":
                return PermissionAnswer(choice="once")
            if choice == "d":
                reason = self._read("Reason for the agent (optional): ") or ""
                return PermissionAnswer(choice="deny", reason=reason.strip())
            if choice in ("s", "a") and not request.unsandboxed:
                rule = self._edit_rule(request.suggested_rule, always=choice == "a")
                if rule is None:
                    continue
                return PermissionAnswer(choice="session" if choice == "s" else "always", rule=rule)
            self._say(f"Please answer {options}.")

    def _edit_rule(self, suggested: Rule, *, always: bool) -> Rule | None:
        text = self._read(f"Rule [{suggested}] (Enter keeps it): ")
        text = (text or "").strip() or str(suggested)
        scope: Literal["user", "workspace", "session"] = "session"
        if always:
            where = self._read("Save for this [w]orkspace or for [u]ser (every workspace)? ")
            scope = "user" if (where or "").strip().lower().startswith("u") else "workspace"
        try:
            return Rule.parse(text, action="allow", scope=scope)
        except PolicyError as e:
            self._say(f"That rule is refused: {e}")
            return None

    def _read(self, prompt: str) -> str | None:
        self._out.write(terminal_text(prompt))
        self._out.flush()
        line = self._in.readline()
        if not _is_tty(self._in):
            self._out.write("\n")  # the answer was not echoed: end the prompt's line
        return line.rstrip("\n") if line else None

    def _say(self, text: str) -> None:
        self._out.write(terminal_text(text) + "\n")
        self._out.flush()


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def terminal_text(text: str) -> str:
    r"""``text`` with control and format characters shown as escapes (``ESC`` as ``\x1b``).

    Model and tool text written to a terminal must not drive it: an escape
    sequence could erase or rewrite the permission prompt, hide a command
    (also with bidi overrides) or set the clipboard (OSC 52). Newlines and
    tabs stay.
    """
    if text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        if ch in "\n\t" or unicodedata.category(ch)[0] != "C":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)
