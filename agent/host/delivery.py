"""What a tool result goes through before the agent sees it, and the errand's record.

Redaction of every secret the broker injected, withholding of credentials
the vault does not know (:mod:`vault.secretscan`), truncation, the taint flag,
the audit entry (fail closed) and the events the user sees.
:class:`ResultDelivery` is the part of :class:`agent.host.errand.AgentHost`
that does it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from agent.errors import (
    AuditWriteError,
)
from agent.host.events import AgentEvent, AgentListener, ToolCallRecord
from agent.host.ports import AuditSink, HostBroker
from agent.host.tools.base import ToolOutput, truncate_text
from agent.protocol import (
    ToolRequest,
    ToolResult,
)
from vault.errors import RedactionError, SecretScanError, VaultError, VaultLockedError
from vault.secretscan import Finding, withhold

log = logging.getLogger(__name__)

HOST_RESULT_BYTES = 16 * 1024
"""The most content one tool result carries back to the agent."""


class ResultDelivery:
    """Redacts, withholds, truncates, audits and reports what goes back to the agent.

    Attributes:
        session_id: The errand's session.
        tainted: Untrusted content has reached the agent's context.
    """

    session_id: str
    tainted: bool
    _broker: HostBroker | None
    _audit: AuditSink | None
    _listener: AgentListener | None

    def redact(self, text: str) -> str:
        """``text`` as the user may be shown it: every secret the broker knows replaced.

        For everything a terminal or a log shows of an errand (tool arguments,
        summaries), through the same redactor as the results the agent gets.
        When redaction cannot run (the vault locked with grants in the
        session) the text is withheld, not shown unchecked.
        """
        try:
            return self._redact(text)[0]
        except RedactionError:
            return "[withheld: it could not be checked for secrets]"

    def _deliver(
        self, req: ToolRequest, output: ToolOutput, ok: bool
    ) -> tuple[ToolResult, ToolCallRecord]:
        content, names = self._redact(output.content)
        redacted = sorted(set(output.redacted) | set(names))
        content, found = self._withhold(req, content)
        content, cut = truncate_text(content, HOST_RESULT_BYTES, what="tool result")
        result = ToolResult(
            call_id=req.call_id,
            ok=ok,
            content=content,
            truncated=output.truncated or cut,
            redacted=redacted,
            untrusted=output.untrusted,
        )
        if result.untrusted:
            self.tainted = True
        self._record(
            "tool_result",
            tool=req.tool,
            decision="allow",
            details={
                "call_id": req.call_id,
                "ok": ok,
                "bytes": len(content.encode()),
                "truncated": result.truncated,
                "redacted": redacted,
                "withheld": [f.describe() for f in found],
                "untrusted": result.untrusted,
            },
            secret_values=[f.value for f in found],
        )
        for f in found:
            # The value travels only in the offer object, never in the text.
            self._emit(
                AgentEvent(
                    "secret_found",
                    text=f"{f.kind} at {f.location}",
                    tool=req.tool,
                    call_id=req.call_id,
                    data={**f.describe(), "offer": f},
                )
            )
        self._emit_result(req, result)
        return result, ToolCallRecord(
            call_id=req.call_id,
            tool=req.tool,
            arguments=req.arguments,
            decision="allow",
            ok=ok,
            confidence=req.confidence,
            summary=summary_line(content),
        )

    def _withhold(self, req: ToolRequest, content: str) -> tuple[str, list[Finding]]:
        """``content`` with credentials the vault does not know withheld (fails closed)."""
        source, first_line = scan_source(req)
        try:
            return withhold(content, source=source, first_line=first_line)
        except SecretScanError as e:
            log.warning("%s result withheld: %s", req.tool, e)
            return f"[WITHHELD: the result could not be checked for credentials: {e}]", []

    def _refuse(
        self, req: ToolRequest, decision: str, message: str, *, audited: bool = False
    ) -> tuple[ToolResult, ToolCallRecord]:
        if not audited:
            self._decided(req, decision, message, by="host")
        result = ToolResult(call_id=req.call_id, ok=False, content=message, untrusted=False)
        self._emit_result(req, result)
        return result, ToolCallRecord(
            call_id=req.call_id,
            tool=req.tool,
            arguments=req.arguments,
            decision=decision,
            ok=False,
            confidence=req.confidence,
            summary=summary_line(message),
        )

    def _decided(
        self,
        req: ToolRequest,
        action: str,
        reason: str,
        *,
        by: str,
        unsandboxed: bool = False,
        **extra: str,
    ) -> None:
        self._emit(
            AgentEvent(
                "decision",
                tool=req.tool,
                call_id=req.call_id,
                text=action,
                data={"action": action, "reason": reason, "by": by, **extra},
            )
        )
        self._record(
            "tool_decision",
            tool=req.tool,
            decision=action,
            reason=reason,
            details={
                "call_id": req.call_id,
                "by": by,
                "arguments": self._redact(json.dumps(req.arguments, sort_keys=True))[0],
                "tainted": self.tainted,
                # An approved run without the OS sandbox says so in its entry.
                **({"sandboxed": False} if unsandboxed else {}),
                **extra,
            },
        )

    def _emit_result(self, req: ToolRequest, result: ToolResult) -> None:
        self._emit(
            AgentEvent(
                "tool_result",
                tool=req.tool,
                call_id=req.call_id,
                text=result.content,
                data={
                    "ok": result.ok,
                    "truncated": result.truncated,
                    "redacted": list(result.redacted),
                    "untrusted": result.untrusted,
                },
            )
        )

    def _redact(self, text: str) -> tuple[str, list[str]]:
        if self._broker is None:
            return text, []
        return self._broker.redact(text, session_id=self.session_id)

    def _token_redactor(self) -> Callable[[str | None], str]:
        """A per-errand filter for streamed tokens: text in, releasable text out.

        Tokens reach the screen, the CLI and the transcript, so they go
        through the broker's streaming redactor (the same secrets as
        :meth:`_redact`); ``None`` flushes what it holds back. If redaction
        cannot run, the stream is withheld (the final answer is still
        redacted and shown whole).
        """
        if self._broker is None:
            return lambda text: text or ""
        try:
            stream = self._broker.redact_stream(session_id=self.session_id)
        except VaultError as e:
            log.info("token stream withheld: %s", e)
            return lambda text: ""
        failed = False

        def feed(text: str | None) -> str:
            nonlocal failed
            if failed:
                return ""
            try:
                out: str = stream.feed(text) if text is not None else stream.finish()
            except VaultError as e:
                failed = True
                log.info("token stream withheld: %s", e)
                return ""
            return out

        return feed

    def _emit(self, event: AgentEvent) -> None:
        if self._listener is not None:
            self._listener(event)

    def _record(self, kind: str, **kwargs: Any) -> None:
        """Append an audit entry; fail closed.

        Raises:
            AuditWriteError: The entry was not written (disk full, database
                locked or corrupt): what it would record must not happen.
        """
        if self._audit is None:
            return
        try:
            self._audit.record(kind, session_id=self.session_id, **kwargs)
        except Exception as e:  # any failure of the sink means "not recorded"
            raise AuditWriteError(
                f"the audit log cannot be written ({e}); the errand stopped so that "
                "nothing runs unaudited"
            ) from e


def scan_source(req: ToolRequest) -> tuple[str, int]:
    """What a withheld-credential stub names for ``req``'s result, and its first line."""
    args = req.arguments
    if req.tool == "read_file":
        start = args.get("start_line", 1)
        return str(args.get("path", "the file")), start if isinstance(start, int) else 1
    if req.tool == "shell":
        return "the command's output", 1
    if req.tool == "http_request":
        return "the HTTP response", 1
    return f"the {req.tool} result", 1


def redaction_message(error: RedactionError) -> str:
    """What to tell the user when redaction failed: unlock the vault, or the error."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, VaultLockedError):
        cause = cause.__cause__
    if cause is not None:
        return (
            "unlock the vault to run with capabilities: this session has capabilities, "
            "and while the vault is locked their secrets cannot be kept out of what the "
            "agent sees"
        )
    return f"the errand was stopped: {error}"


def summary_line(text: str, limit: int = 120) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
