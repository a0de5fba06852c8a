"""Adapts :class:`agent.host.errand.AgentHost` to the errand controller.

The controller knows runners (``run_errand`` / ``cancel`` / ``close``), an
events sink and a permission asker; the agent host knows ``AgentEvent`` s, a
``PermissionPrompt`` and ``Rule`` s. This module translates between the two,
so neither the views nor the controller depend on the agent's types.

Everything here runs in the errand worker thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.host.tools.net import NET_RULE
from app.controllers.errand_controller import (
    ErrandEvents,
    ErrandRunner,
    PermissionAsker,
    PermissionQuestion,
    RunnerContext,
    RunnerFactory,
    WhyAsked,
)
from app.services import AppServices, ServiceUnavailableError
from app.sessions import (
    ErrandRecorder,
    ResumeChoice,
    SessionStore,
    SessionStoreError,
    resume_plan,
    run_recorded,
)
from app.withheld import offer_from_event
from models.backends import runs_in_host

log = logging.getLogger(__name__)


def rule_to_text(rule: Any) -> str:
    """Write an ``agent.host.policy.Rule`` as ``tool(pattern)``."""
    pattern = getattr(rule, "pattern", None) or "*"
    return f"{rule.tool}({pattern})"


def question_from_request(call_id: str, request: Any) -> PermissionQuestion:
    """Turn an ``agent.host.permission.PermissionRequest`` into what the dialog shows."""
    why: WhyAsked
    reason = str(getattr(request, "reason", "") or "")
    if getattr(request, "unsandboxed", False):
        why = "unsandboxed"
    elif getattr(request, "tainted", False):
        why = "tainted"
    elif getattr(request, "effect", "") in ("capability", "secret") or "capabilit" in reason:
        why = "capability"
    elif reason and "no rule" not in reason.lower() and "default" not in reason.lower():
        why = "rule"
    else:
        why = "no_rule"
    effect = getattr(request, "effect", "")
    confidence = getattr(request, "confidence", None)
    parts = [
        f"Effect: {effect}." if effect else "",
        f"Policy: {reason}." if reason else "",
        f"Model confidence: {confidence:.2f}." if confidence is not None else "",
    ]
    if str(request.tool) == NET_RULE:  # a sandboxed command's request through the egress proxy
        args = request.arguments
        parts.insert(0, f"Network request {args.get('method', '?')} {args.get('host', '?')}"
                        f"{args.get('path', '')} — asked by: {args.get('command', '?')}.")
    detail = " ".join(p for p in parts if p)
    suggested = getattr(request, "suggested_rule", None)
    return PermissionQuestion(
        call_id=call_id,
        tool=str(request.tool),
        arguments=dict(request.arguments),
        why=why,
        detail=detail,
        suggested_rule=rule_to_text(suggested) if suggested is not None else "",
        rule_check=check_rule_text,
        runs_code=tuple(getattr(request, "runs_code", ())),
    )


def check_rule_text(text: str) -> str | None:
    """Say why ``text`` is not a valid allow rule, or return None when it is."""
    from agent.errors import PolicyError
    from agent.host.policy import Rule

    try:
        Rule.parse(text, action="allow", scope="workspace")
    except PolicyError as e:
        return str(e)
    return None


class HostPrompt:
    """``agent.host.PermissionPrompt`` answered by the GUI through the controller."""

    def __init__(self, asker: PermissionAsker) -> None:
        self._asker = asker
        self._count = 0
        self.current_call_id = ""

    def ask(self, request: Any) -> Any:
        """Ask the user (blocks this worker thread) and return a ``PermissionAnswer``."""
        from agent.errors import PolicyError
        from agent.host.permission import PermissionAnswer
        from agent.host.policy import Rule

        self._count += 1
        call_id = self.current_call_id or f"ask-{self._count}"
        reply = self._asker.ask(question_from_request(call_id, request))
        rule = None
        if reply.choice in ("session", "always") and reply.rule_text:
            scope = "session" if reply.choice == "session" else reply.scope
            # The dialog validated the text; a rule that still fails here is the
            # user's edit being refused: deny, and say why, rather than allow more.
            try:
                rule = Rule.parse(reply.rule_text, action="allow", scope=scope)
            except PolicyError as e:
                return PermissionAnswer(choice="deny", reason=f"the edited rule was refused: {e}")
        return PermissionAnswer(choice=reply.choice, rule=rule, reason=reply.reason)

    def withdraw(self, reason: str) -> None:
        """The agent process died: release the question the user still sees (any thread)."""
        withdraw = getattr(self._asker, "withdraw", None)
        if callable(withdraw):
            withdraw(reason)


class HostListener:
    """Turns ``agent.host.events.AgentEvent`` s into :class:`ErrandEvents` calls."""

    def __init__(self, events: ErrandEvents, prompt: HostPrompt) -> None:
        self._events = events
        self._prompt = prompt

    def __call__(self, event: Any) -> None:
        """Dispatch one event."""
        kind = event.kind
        data: Mapping[str, Any] = event.data or {}
        call_id = event.call_id or ""
        if kind == "token":
            self._events.token(event.text)
        elif kind == "tool_call":
            # The prompt (if any) that follows belongs to this call.
            self._prompt.current_call_id = call_id
            self._events.tool_call(call_id, event.tool or "?", _arguments(data.get("arguments")))
        elif kind == "decision":
            action = str(data.get("action", event.text))
            self._events.decision(call_id, action, str(data.get("reason", "")))
        elif kind == "tool_result":
            self._events.tool_result(
                call_id,
                bool(data.get("ok", False)),
                event.text,
                [str(n) for n in data.get("redacted", [])],
                bool(data.get("truncated", False)),
            )
        elif kind == "final":
            self._events.final(event.text, dict(data))
            context = data.get("context")
            if isinstance(context, Mapping):
                self._events.context(context)
        elif kind == "progress":
            context = data.get("context")
            if isinstance(context, Mapping):
                self._events.context(context)
        elif kind == "error":
            self._events.error(event.text)
        elif kind in ("memory_problems", "notice"):
            self._events.notice(event.text)
        elif kind == "agent_crashed":
            tail = str(data.get("stderr", "")).strip()
            self._events.agent_crashed(event.text + (f"\n{tail}" if tail else ""))
        elif kind == "os_isolation":
            self._events.isolation(bool(data.get("isolated", False)), str(data.get("reason", "")))
        elif kind == "egress":  # a request of the running shell command, through the proxy
            self._events.egress(call_id, dict(data))
        elif kind == "model_loaded":
            self._events.model_loaded(dict(data))
        elif kind == "secret_found":
            offer = offer_from_event(event.tool, data)
            if offer is not None:
                self._events.secret_found(offer)


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return {"arguments": raw}
        return value if isinstance(value, dict) else {"arguments": value}
    return {}


class WorkspaceRuleSaver:
    """Saves "always" rules, filing workspace rules under the errand's workspace."""

    def __init__(self, store: Any, workspace: Path) -> None:
        self._store = store
        self._workspace = workspace

    def add(self, rule: Any) -> Any:
        """Persist ``rule`` (a user rule applies to every workspace)."""
        workspace = self._workspace if rule.scope == "workspace" else None
        return self._store.add(rule, workspace=workspace)


class AgentHostRunner:
    """An :class:`ErrandRunner` backed by an ``agent.host.errand.AgentHost``.

    With a session store (and the host's :class:`app.sessions.ErrandRecorder`),
    every errand is recorded in its session, which the runner creates on
    the first errand.
    """

    def __init__(
        self,
        host: Any,
        *,
        owned: tuple[Any, ...] = (),
        sessions: SessionStore | None = None,
        recorder: ErrandRecorder | None = None,
        model: str = "",
        outdated: Callable[[], bool] | None = None,
    ) -> None:
        self.host = host
        self._outdated = outdated
        self._owned = owned
        self._sessions = sessions
        self._recorder = recorder
        self._model = model

    def outdated(self) -> bool:
        """Whether the model settings changed since this runner was built."""
        return self._outdated is not None and self._outdated()

    def run_errand(self, task: str) -> Any:
        """Run one errand; the host reports through the listener."""
        if self._sessions is None or self._recorder is None:
            return self.host.run_errand(task)
        session_id = self.host.session_id
        self._sessions.ensure_session(
            session_id, workspace=self.host.workspace, title=task, model=self._model
        )
        return run_recorded(
            self.host, self._sessions, self._recorder, session_id=session_id, task=task
        )

    def resume_errand(self, errand_id: str, choice: ResumeChoice) -> Any:
        """Resume an interrupted errand of this session (see :func:`app.sessions.resume_plan`).

        Raises:
            SessionStoreError: No store, or the errand cannot be resumed.
        """
        if self._sessions is None or self._recorder is None:
            raise SessionStoreError("sessions are not recorded, so nothing can be resumed")
        plan = resume_plan(self._sessions, errand_id)
        return run_recorded(
            self.host, self._sessions, self._recorder, session_id=plan.errand.session_id,
            task="", resume=plan, choice=choice,
        )

    def cancel(self) -> None:
        """Cancel the running errand."""
        self.host.cancel()

    def close(self) -> None:
        """Stop the agent process (and its model), then close what this runner opened."""
        try:
            self.host.close()
        finally:
            for thing in self._owned:
                thing.close()


def _mcp_hub(services: AppServices, workspace: Path, rules: list[Any]) -> Any:
    """The configured MCP servers for an errand (None when there are none or the store fails)."""
    from agent.errors import McpError
    from agent.host.policy import PolicyEngine
    from app.cli_mcp import mcp_hub

    try:
        return mcp_hub(services, workspace, policy=PolicyEngine(rules))
    except McpError as e:
        log.warning("errand runs without MCP servers: %s", e)
        return None


def _relay_key_secret(services: AppServices, spec: Any) -> str | None:
    """The vault secret a host-run model reads its API key from (not part of its spec)."""
    return services.settings.model.remote_key_secret if runs_in_host(spec) else None


def approximate_tokens(text: str) -> int:
    """Estimate a text's tokens without the model's tokenizer (~4 characters each)."""
    return max(1, len(text) // 4)


def agent_host_factory(
    services: AppServices,
    model_spec: Callable[[], Any],
    *,
    scripted_model: Path | None = None,
    broker: Callable[[], Any] | None = None,
    host_options: Mapping[str, Any] | None = None,
    sessions: SessionStore | None = None,
) -> RunnerFactory:
    """Build a runner factory that starts a real agent host for each session.

    Args:
        services: The host's services (audit log, rules, memory).
        model_spec: Returns the ``models.factory.ModelSpec`` to run (read when
            the runner is built; when it returns another spec, or a remote
            model's API key is to come from another vault secret, the runner
            is outdated and the next errand runs on a new one: model settings
            apply at the next errand; so do the pinned hosts).
        scripted_model: Run the scripted fake model from this JSON file instead.
        broker: Returns the broker to use (the vault screen's, once unlocked);
            defaults to the services' own.
        host_options: Extra keyword arguments for ``AgentHost`` (tests).
        sessions: Where errands are recorded (None: not recorded).
    """

    def factory(ctx: RunnerContext) -> ErrandRunner:
        from agent.host.errand import AgentHost
        from agent.host.policy import PolicyEngine

        spec = model_spec()

        try:
            store = services.rule_store(ctx.workspace)
            rules = list(store.rules(ctx.workspace))
        except ServiceUnavailableError as e:
            # Without saved rules the policy's defaults still hold (writes, shell, network ask).
            log.warning("errand runs with the default rules only: %s", e)
            store, rules = None, []
        try:
            the_broker = broker() if broker is not None else services.live_broker()
        except ServiceUnavailableError as e:
            log.warning("errand runs without capabilities: %s", e)
            the_broker = None
        try:
            audit = services.audit
        except ServiceUnavailableError:
            audit = None
        memory = None
        try:
            memory = services.memory_service(
                workspace=ctx.workspace,
                session_id=ctx.session_id,
                # The tokenizer lives with the model in the agent process; reading
                # the vocabulary here would load llama.cpp into the GUI host
                # (+66 MB RSS), so the host budgets ~4 characters per token.
                # `keyless run` / `keyless memory` count with the vocabulary.
                count_tokens=approximate_tokens,
            )
        except ServiceUnavailableError as e:
            log.warning("errand runs without memory: %s", e)
        # The MCP servers configured in Settings or with `keyless mcp`.
        hub = _mcp_hub(services, ctx.workspace, rules)
        prompt = HostPrompt(ctx.asker)
        options: dict[str, Any] = {
            "hidden_paths": services.protected_paths(),
            "egress": services.egress_settings(),  # shell commands reach the network via the proxy
            **services.kv_states(),
        }
        if runs_in_host(spec):
            # The host opens the remote model (and holds its key); the agent
            # process gets relayed generations only.
            options["relay_model"] = services.remote_model(spec)
        options.update({"mcp": hub} if hub is not None else {})
        options.update(host_options or {})
        listener: Any = HostListener(ctx.events, prompt)
        recorder = None
        if sessions is not None:
            recorder = ErrandRecorder(sessions, then=listener)
            listener = recorder
        host = AgentHost(
            spec,
            workspace=ctx.workspace,
            broker=the_broker,
            memory=memory,
            policy=PolicyEngine(rules),
            prompt=prompt,
            audit=audit,
            session_id=ctx.session_id,
            listener=listener,
            rule_store=WorkspaceRuleSaver(store, ctx.workspace) if store is not None else None,
            scripted_model=scripted_model,
            **options,
        )
        mcp_store = hub.store if hub is not None else None
        owned = tuple(
            x for x in (store, memory, mcp_store) if callable(getattr(x, "close", None))
        )
        model = f"scripted:{scripted_model.name}" if scripted_model is not None else (
            spec.label() if spec is not None else "unknown"
        )
        def built_from(spec: Any) -> tuple[Any, ...]:
            # The model, its key, and the hosts the egress proxy passes through.
            pinned = tuple(services.settings.egress_pinned_hosts)
            return (spec, _relay_key_secret(services, spec), pinned)

        built = built_from(spec)

        def outdated() -> bool:
            return built_from(model_spec()) != built

        return AgentHostRunner(
            host, owned=owned, sessions=sessions, recorder=recorder, model=model,
            outdated=outdated,
        )

    return factory
