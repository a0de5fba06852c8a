"""The permission prompt's contract: what the user is asked about a tool call and the answer.

The GUI's dialog, the terminal prompt of ``keyless run`` (``app/terminal_prompt.py``)
and the tests' scripted answerers all satisfy :class:`PermissionPrompt`.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from agent.host.policy import Rule


class PermissionRequest(BaseModel):
    """What the permission prompt shows the user.

    Attributes:
        tool: The tool the agent wants to run.
        arguments: Its validated arguments.
        effect: What the tool does (read, write, execute, network, ...).
        reason: Why the user is asked (the rule, the default, or the taint).
        tainted: Untrusted content is in the agent's context.
        suggested_rule: The rule "always" would save; the user may edit it.
        unsandboxed: The call would run without the OS sandbox; only "once"
            or "deny" are offered for it.
        runs_code: One line per workspace file the call writes (or a shell
            command names) that the user's own tools execute on the host
            (``.envrc``, ``.vscode/tasks.json``, ``.gitattributes``; see
            :mod:`agent.host.protected`); shown as "runs code on your machine".
        confidence: How sure the model was of the call (:mod:`models.confidence`;
            higher is surer), or None when the model gives no log-probabilities.
    """

    model_config = ConfigDict(frozen=True)

    tool: str
    arguments: dict[str, Any]
    effect: str
    reason: str
    tainted: bool
    suggested_rule: Rule
    unsandboxed: bool = False
    runs_code: list[str] = Field(default_factory=list)
    confidence: float | None = None


class PermissionAnswer(BaseModel):
    """The user's answer to a :class:`PermissionRequest`.

    Attributes:
        choice: Allow once, for this session, always (saving ``rule``), or deny.
        rule: The rule to add for "session"/"always" (the suggestion, maybe
            edited); None uses the suggestion.
        reason: For "deny": told to the agent so it can try something else.
    """

    model_config = ConfigDict(frozen=True)

    choice: Literal["once", "session", "always", "deny"]
    rule: Rule | None = None
    reason: str = ""


class PermissionPrompt(Protocol):
    """Asks the user about one tool call (GUI dialog, terminal, scripted in tests)."""

    def ask(self, request: PermissionRequest) -> PermissionAnswer:
        """Return the user's answer; may block until the user decides."""
        ...


class RuleSaver(Protocol):
    """Persists "always" rules (agent.host.policy.RuleStore satisfies it)."""

    def add(self, rule: Rule) -> Any:
        """Save ``rule``."""
        ...
