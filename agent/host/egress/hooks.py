"""The host's side of the egress proxy: ``net(...)`` rules, the prompt, the audit log.

:class:`PolicyEgressHooks` is what :class:`agent.host.egress.proxy.EgressProxy`
calls, on its worker threads, while a shell command runs on the errand's
thread. Prompts are asked one at a time (a lock), as the host asks them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from agent.host.egress.proxy import EgressRequest, EgressVerdict
from agent.host.policy import Decision, PolicyEngine, ToolCallRequest
from agent.host.tools.net import NET_RULE


class PolicyEgressHooks:
    """Decides proxied requests with the policy engine; asks through ``ask`` when it says so.

    Args:
        policy: The session's rules (``net(...)`` rules decide; deny > ask > allow).
        ask: Asks the user: ``(call, decision) -> allowed``, where ``call`` is
            the ``net`` request (its arguments: command, host, method, path,
            capability) and ``decision`` the policy's "ask" with its reason;
            called on a proxy thread, one at a time. None: "ask" refuses.
        record: Appends an audit entry (the host's fail-closed recorder).
        tainted: Whether untrusted content is in the agent's context now.
    """

    def __init__(
        self,
        policy: PolicyEngine,
        *,
        ask: Callable[[ToolCallRequest, Decision], bool] | None,
        record: Callable[..., None],
        tainted: Callable[[], bool],
    ) -> None:
        self._policy = policy
        self._ask = ask
        self._record = record
        self._tainted = tainted
        self._lock = threading.Lock()

    def decide(self, request: EgressRequest) -> EgressVerdict:
        """Decide one request; see the class description."""
        arguments: dict[str, Any] = {
            "command": request.command,
            "host": request.host,
            "method": request.method,
            "path": request.path,
            "capability": request.capability is not None,
        }
        call = ToolCallRequest(tool=NET_RULE, arguments=arguments)
        decision = self._policy.decide(call, tainted=self._tainted())
        action, reason, by = decision.action, decision.reason, "policy"
        if action == "ask":
            with self._lock:
                allowed = self._ask is not None and self._ask(call, decision)
            action, by = ("allow" if allowed else "deny"), "user"
            reason = f"{'allowed' if allowed else 'denied'} by the user ({decision.reason})"
        self.record(
            "egress_decision",
            tool="shell",
            decision=action,
            reason=reason,
            details={**arguments, "by": by, "url": f"{request.scheme}://{request.host}:"
                     f"{request.port}{request.path}"},
        )
        return EgressVerdict(action == "allow", reason)

    def record(self, kind: str, **fields: Any) -> None:
        """Append an audit entry through the host's recorder."""
        self._record(kind, **fields)
