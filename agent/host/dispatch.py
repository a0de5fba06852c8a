"""Deciding and running one tool call the agent asked for.

Validate the arguments (a bad call goes back to the model as an error), ask
the policy, ask the user through the :class:`agent.host.permission.PermissionPrompt`
when the policy says so (saving the rule an "always" answer chose), run the
tool with a :class:`agent.host.tools.base.ToolContext`, and hand the output to
:class:`agent.host.delivery.ResultDelivery`.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agent.errors import (
    AgentCrashedError,
    McpServerDownError,
    PolicyError,
    SandboxError,
    ToolError,
    ToolValidationError,
)
from agent.host.delivery import ResultDelivery
from agent.host.events import AgentEvent, ToolCallRecord
from agent.host.mcpserver.hub import McpHub, mcp_call
from agent.host.mcpserver.network import McpNetwork
from agent.host.permission import PermissionAnswer, PermissionPrompt, PermissionRequest, RuleSaver
from agent.host.policy import Decision, PolicyEngine, ToolCallRequest, suggest_rule
from agent.host.ports import HostMemory
from agent.host.protected import request_host_code_reasons
from agent.host.sandbox import Sandbox, stop_when
from agent.host.supervisor import WorkerProcess
from agent.host.tools.base import ToolContext, ToolOutput
from agent.host.tools.mcp import MCP_RULE
from agent.host.tools.net import NET_RULE
from agent.host.tools.registry import ALL_TOOLS, RULE_KINDS, run_tool
from agent.protocol import (
    ToolRequest,
    ToolResult,
)
from memory.errors import MemoryErrorBase
from models.interface import CancelToken
from vault.errors import VaultError

if TYPE_CHECKING:
    from agent.host.egress.proxy import EgressProxy, EgressRequest
    from agent.host.egress.settings import EgressSettings

log = logging.getLogger(__name__)

GATED_EFFECTS = frozenset({"write", "execute", "network"})
"""Effects whose calls ask when the model was unsure of them, whatever the rules say."""


class ToolDispatch(ResultDelivery):
    """The part of :class:`agent.host.errand.AgentHost` that decides and runs tool calls."""

    workspace: Path
    _policy: PolicyEngine
    _confidence_floor: float | None
    _prompt: PermissionPrompt
    _rule_store: RuleSaver | None
    _sandbox: Sandbox
    _tools: tuple[str, ...]
    _hidden: list[Path]
    _memory: HostMemory | None
    _cancel: CancelToken
    _proc: WorkerProcess | None
    _mcp: McpHub | None
    _egress_settings: EgressSettings | None
    _egress: EgressProxy | None
    _egress_call: str | None

    def _handle_tool(self, req: ToolRequest) -> tuple[ToolResult, ToolCallRecord]:
        args_text = self._redact(json.dumps(req.arguments, sort_keys=True))[0]
        self._emit(
            AgentEvent(
                "tool_call", tool=req.tool, call_id=req.call_id, data={"arguments": args_text}
            )
        )
        mcp = self._mcp
        if mcp is not None and mcp.has(req.tool):
            return self._handle_mcp(req, mcp)
        spec = ALL_TOOLS.get(req.tool)
        if spec is None or req.tool not in self._tools:
            return self._refuse(req, "invalid", f"no tool named {req.tool!r} is available")
        try:
            args = spec.args_model.model_validate(req.arguments)
        except ValidationError as e:
            return self._refuse(req, "invalid", _validation_message(req.tool, e))
        arguments = args.model_dump(mode="json", exclude_defaults=True)
        call = ToolCallRequest(
            tool=req.tool,
            arguments=req.arguments,
            workspace=self.workspace,
            sandbox_available=self._sandbox.available,
        )
        decision = self._unsure_asks(req, self._policy.decide(call, tainted=self.tainted))
        if decision.action == "deny":
            self._decided(req, "deny", decision.reason, by="policy")
            return self._refuse(req, "denied", f"denied: {decision.reason}", audited=True)
        if decision.action == "ask":
            answer = self._ask(call, spec.effect, decision, arguments, req.confidence)
            # The agent may have died while the user was asked: nothing runs for it.
            self._check_agent()
            if answer.choice == "deny":
                reason = answer.reason or "the user denied this call"
                self._decided(req, "deny", reason, by="user", choice="deny")
                return self._refuse(req, "denied", f"denied by the user: {reason}", audited=True)
            reason = f"allowed by the user ({answer.choice})"
            self._decided(
                req,
                "allow",
                reason,
                by="user",
                choice=answer.choice,
                unsandboxed=decision.unsandboxed,
            )
        else:
            self._decided(
                req, "allow", decision.reason, by="policy", unsandboxed=decision.unsandboxed
            )
        if self._cancel.cancelled:
            return self._refuse(req, "cancelled", "the errand was cancelled", audited=True)
        output, ok = self._run(req, unsandboxed_approved=decision.unsandboxed)
        self._check_agent()  # a command stopped because the agent died is not delivered
        return self._deliver(req, output, ok)

    def _handle_mcp(self, req: ToolRequest, mcp: McpHub) -> tuple[ToolResult, ToolCallRecord]:
        """An MCP server's tool: the same policy, prompt and delivery as a built-in one."""
        try:
            mcp.validate(req.tool, req.arguments)
        except ToolValidationError as e:
            return self._refuse(req, "invalid", str(e))
        server = mcp.server_of(req.tool)
        call = mcp_call(req.tool, req.arguments, workspace=self.workspace)
        decision = self._policy.decide(call, tainted=self.tainted)
        if decision.action == "deny":
            self._decided(req, "deny", decision.reason, by="policy", server=server)
            return self._refuse(req, "denied", f"denied: {decision.reason}", audited=True)
        if decision.action == "ask":
            shown = decision.model_copy(
                update={"reason": f"{decision.reason}; from the MCP server {server!r}"}
            )
            effect = RULE_KINDS[MCP_RULE].effect
            answer = self._ask(call, effect, shown, dict(req.arguments), tool=req.tool)
            self._check_agent()
            if answer.choice == "deny":
                reason = answer.reason or "the user denied this call"
                self._decided(req, "deny", reason, by="user", choice="deny", server=server)
                return self._refuse(req, "denied", f"denied by the user: {reason}", audited=True)
            reason = f"allowed by the user ({answer.choice})"
            self._decided(req, "allow", reason, by="user", choice=answer.choice, server=server)
        else:
            self._decided(req, "allow", decision.reason, by="policy", server=server)
        if self._cancel.cancelled:
            return self._refuse(req, "cancelled", "the errand was cancelled", audited=True)
        try:
            output, ok = mcp.call(req.tool, dict(req.arguments))
        except McpServerDownError as e:
            # The errand goes on without the server; the user hears it is down.
            self._emit(AgentEvent("error", text=str(e), tool=req.tool, call_id=req.call_id))
            self._record(
                "mcp_server_down", tool=req.tool, reason=str(e), details={"server": server}
            )
            output, ok = ToolOutput(content=f"error: {e}", untrusted=True), False
        self._check_agent()
        return self._deliver(req, output, ok)

    def _unsure_asks(self, req: ToolRequest, decision: Decision) -> Decision:
        """Turn an allowed risky call the model was unsure of into a question.

        Risky: a write, a command, a network call, or a call that passes a
        capability handle. Unsure: its confidence (DeepConf's lowest group
        confidence, :mod:`models.confidence`) is below the host's floor.
        """
        floor, confidence = self._confidence_floor, req.confidence
        if decision.action != "allow" or floor is None or confidence is None:
            return decision
        spec = ALL_TOOLS[req.tool]
        handle = spec.capability_argument and req.arguments.get(spec.capability_argument)
        passes_capability = "cap_" in json.dumps(handle) if handle else False
        if confidence >= floor or not (spec.effect in GATED_EFFECTS or passes_capability):
            return decision
        reason = (
            f"the model was unsure of this call (confidence {confidence:.2f}, "
            f"below {floor:.2f}), though {decision.reason}"
        )
        return decision.model_copy(update={"action": "ask", "reason": reason})

    def _mcp_network(self) -> McpNetwork:
        """The MCP servers' network: this session's rules, prompt, audit, egress and broker."""
        return McpNetwork(
            policy=self._policy,
            record=self._record,
            session_id=self.session_id,
            egress=self._egress_settings if self._sandbox.available else None,
            broker=self._broker,
            tainted=lambda: self.tainted,
            ask=self._ask_net,
        )

    def _ask(
        self,
        call: ToolCallRequest,
        effect: str,
        decision: Decision,
        arguments: dict[str, Any],
        confidence: float | None = None,
        *,
        tool: str | None = None,
    ) -> PermissionAnswer:
        """Ask the user about ``call``; ``tool`` is the name shown, if not ``call.tool``."""
        suggested = suggest_rule(call)
        request = PermissionRequest(
            tool=tool or call.tool,
            arguments=arguments,
            effect=effect,
            reason=decision.reason,
            tainted=self.tainted,
            suggested_rule=suggested,
            unsandboxed=decision.unsandboxed,
            runs_code=request_host_code_reasons(tool or call.tool, arguments),
            confidence=confidence,
        )
        answer = self._prompt.ask(request)
        if decision.unsandboxed and answer.choice in ("session", "always"):
            # An unsandboxed run is approved one call at a time, never by a rule.
            answer = PermissionAnswer(choice="once", reason=answer.reason)
        if answer.choice in ("session", "always"):
            rule = (answer.rule or suggested).model_copy(update={"action": "allow"})
            if answer.choice == "session":
                rule = rule.model_copy(update={"scope": "session"})
            elif rule.scope == "session":
                rule = rule.model_copy(update={"scope": "workspace"})
            self._policy.add_rule(rule)
            if answer.choice == "always" and self._rule_store is not None:
                try:
                    self._rule_store.add(rule)
                except PolicyError as e:
                    # It still holds for this session; the user hears why it was not saved.
                    self._emit(AgentEvent("error", text=f"the rule {rule} was not saved: {e}"))
            self._record(
                "rule_added",
                tool=tool or call.tool,
                decision="allow",
                reason=answer.choice,
                details={"rule": str(rule), "scope": rule.scope},
            )
        return answer

    def _run(self, req: ToolRequest, unsandboxed_approved: bool) -> tuple[ToolOutput, bool]:
        ctx = ToolContext(
            workspace=self.workspace,
            session_id=self.session_id,
            sandbox=self._sandbox,
            broker=self._broker,
            memory=self._memory,
            unsandboxed_approved=unsandboxed_approved,
            hidden_paths=tuple(self._hidden),
            tainted=self.tainted,
            may_read=self._policy.read_filter(),
            egress=self._egress_for(req.tool, req.call_id),  # Egress proxy
        )
        proc = self._proc
        try:
            # A command still running when the agent dies is killed at once.
            with stop_when(proc.gone if proc is not None else threading.Event()):
                return run_tool(req.tool, req.arguments, ctx), True
        except (ToolError, SandboxError, VaultError, MemoryErrorBase) as e:
            # The message names the problem for the model (path refused, connection
            # failed, secret in memory, ...); none of these messages carries a secret.
            log.info("%s failed: %s", req.tool, e)
            # A network tool's error may quote the server (a redirect target, a
            # protocol error): that is outside data, like a response body.
            untrusted = ALL_TOOLS[req.tool].effect == "network"
            return ToolOutput(content=f"error: {e}", untrusted=untrusted), False

    # ----------------------------------------------------------------- egress proxy (begin)

    def _egress_for(self, tool: str, call_id: str) -> EgressProxy | None:
        """The session's egress proxy for a sandboxed ``shell`` call, started on first use.

        Its requests are shown under ``call_id`` (``egress`` events).

        Raises:
            SandboxError: The proxy did not start (the call fails with the reason).
        """
        settings = self._egress_settings
        if settings is None or tool != "shell" or not self._sandbox.available:
            return None
        self._egress_call = call_id
        if self._egress is None:
            from agent.host.egress.hooks import PolicyEgressHooks  # noqa: PLC0415 (mitmproxy on demand)
            from agent.host.egress.proxy import EgressProxy  # noqa: PLC0415

            hooks = PolicyEgressHooks(
                self._policy, ask=self._ask_net, record=self._record,
                tainted=lambda: self.tainted, decided=self._egress_decided,
            )
            # The broker redeems handles and redacts; one without those methods
            # (a test double) means no capability can be used through the proxy.
            broker = self._broker if hasattr(self._broker, "redeem_egress") else None
            proxy = EgressProxy(
                hooks,
                broker,  # type: ignore[arg-type]  # checked just above
                session_id=self.session_id,
                pinned_hosts=settings.pinned_hosts,
                local_hosts=settings.local_hosts,
                upstream_ca=settings.upstream_ca,
                resolver=settings.resolver,
            )
            proxy.start()
            self._egress = proxy
            self._record("egress_started", details={"pinned": list(settings.pinned_hosts)})
        return self._egress

    def _ask_net(self, call: ToolCallRequest, decision: Decision) -> bool:
        """Ask the user about one proxied request (on a proxy thread), as a ``net`` call.

        "Session" and "always" add the suggested ``net(host)`` rule, as for a
        tool call. A cancelled errand asks nothing and refuses.
        """
        if self._cancel.cancelled:
            return False
        effect = RULE_KINDS[NET_RULE].effect
        answer = self._ask(call, effect, decision, dict(call.arguments))
        return answer.choice != "deny"

    def _egress_decided(self, request: EgressRequest, action: str, reason: str) -> None:
        """Show one proxied request under the shell call that made it (the GUI, the terminal)."""
        self._emit(AgentEvent(
            "egress",
            tool=NET_RULE,
            call_id=self._egress_call,
            text=f"{request.method} {request.host}{request.path}",
            data={"command": request.command, "host": request.host, "method": request.method,
                  "path": request.path, "decision": action, "reason": reason},
        ))

    def _close_egress(self) -> None:
        proxy, self._egress = self._egress, None
        if proxy is not None:
            proxy.close()

    # ----------------------------------------------------------------- egress proxy (end)

    def _check_agent(self) -> None:
        """Raise when the agent process died during a tool call or a prompt.

        Raises:
            AgentCrashedError: It is gone; the message says how (the signal, the status).
        """
        proc = self._proc
        if proc is not None and proc.gone.is_set():
            raise AgentCrashedError(proc.exit_reason())


def _validation_message(tool: str, e: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(arguments)'}: {err['msg']}"
        for err in e.errors()[:5]
    )
    return f"invalid arguments for {tool}: {problems}"
