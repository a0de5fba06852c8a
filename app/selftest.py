"""``keyless --self-test``: check an installation end to end, headless.

What an installer's smoke test and a user who wonders "does it work on this
machine?" both need: load the embedded model, generate past a small ``n_ctx``
through the sink cache, round-trip a vault in passphrase mode, start the
sandboxed agent process and run one tool call through the host's policy. Each
step prints one line; the first failure prints what failed and exits with
``ExitStatus.ERROR`` (1).
Everything happens in a temporary directory; the user's files are not touched.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from app.cli_common import ExitStatus, new_session_id

N_CTX = 256
GENERATE = 2 * N_CTX


class SelfTestError(Exception):
    """A self-test step failed; the message says what was expected."""


def _check_model(tmp: Path) -> str:
    from models.catalog import embedded_default, verify
    from models.interface import Finished, Message
    from models.runtime import Runtime, RuntimeConfig

    model_file = verify(embedded_default(), cache_file=tmp / "verified.json")
    runtime = Runtime(RuntimeConfig(model_path=model_file.path, n_ctx=N_CTX, n_sink=4))
    try:
        messages = [Message(role="user", content="Tell me a long story.")]
        final = None
        for event in runtime.stream_chat(messages, max_tokens=GENERATE, ignore_eos=True):
            if isinstance(event, Finished):
                final = event
        if final is None or final.stats.n_generated != GENERATE:
            raise SelfTestError(f"expected {GENERATE} tokens past n_ctx={N_CTX}, got {final}")
        state = runtime.context_state()
        if state.n_evicted <= 0:
            raise SelfTestError(f"the sink cache evicted nothing after {GENERATE} tokens")
        return (
            f"{model_file.name}: {GENERATE} tokens through n_ctx={N_CTX} "
            f"({state.n_evicted} evicted, {state.n_shifts} shifts, "
            f"{final.stats.tokens_per_second:.0f} tok/s, "
            f"shift {'in place' if state.shift_supported else 're-prefill'})"
        )
    finally:
        runtime.close()


def _check_vault(tmp: Path) -> str:
    from vault.errors import WrongPassphraseError
    from vault.keystore import NoKeyring
    from vault.store import Vault

    path = tmp / "vault.kls"
    secret = bytearray(b"selftest-" + time.time_ns().to_bytes(8, "big").hex().encode())
    # NoKeyring: a throwaway vault must leave nothing in the user's keyring.
    vault = Vault.create(path, passphrase="correct horse", use_keyring=False, keystore=NoKeyring())
    vault.add("SELFTEST", secret)
    vault.lock()
    reopened = Vault.open(path, keystore=NoKeyring())
    try:
        reopened.unlock("wrong passphrase")
    except WrongPassphraseError:
        pass
    else:
        raise SelfTestError("the vault opened with a wrong passphrase")
    reopened.unlock("correct horse")
    value = reopened.get("SELFTEST")
    try:
        if value != secret:
            raise SelfTestError("the vault returned a different value than was stored")
    finally:
        value[:] = bytes(len(value))
        secret[:] = bytes(len(secret))
        reopened.lock()
    return "passphrase vault: created, locked, wrong passphrase refused, value round-tripped"


def _check_redaction(tmp: Path) -> str:
    """The redactor and the credential scanner load and work (a bundle may lack a plugin)."""
    from vault.redact import Redactor
    from vault.secretscan import withhold

    secret = "selftest-" + time.time_ns().to_bytes(8, "big").hex()
    text = f"echo {secret.upper()[:10]} {secret.upper()[10:]} done"
    redacted, names = Redactor([("SELFTEST", secret)]).redact(text)
    if names != ["SELFTEST"] or secret.upper()[10:] in redacted:
        raise SelfTestError("the redactor let a case-changed, split copy of a secret through")
    token = "ghp_" + "Zq3Vb8Nm1Lk4Jh7Gf2Ds5Ap9Ow6Ie0Ru3Ty8"
    shown, findings = withhold(f"x = 1\nGITHUB_TOKEN={token}\n", source="selftest.env")
    if token in shown or [f.line for f in findings] != [2]:
        raise SelfTestError("the credential scanner missed a GitHub token")
    return "redactor (variants) and credential scanner work"


def _check_agent(tmp: Path) -> str:
    import json

    from agent.host.errand import AgentHost
    from agent.host.permission import PermissionAnswer, PermissionRequest
    from agent.host.policy import PolicyEngine, Rule
    from vault.audit import AuditLog

    workspace = tmp / "workspace"
    workspace.mkdir()
    (workspace / "hello.txt").write_text("hello from the self-test\n", encoding="utf-8")
    script = tmp / "script.json"
    script.write_text(
        json.dumps(
            [
                json.dumps({"tool": "read_file", "arguments": {"path": "hello.txt"}}),
                json.dumps({"final": "The file says hello."}),
            ]
        ),
        encoding="utf-8",
    )

    class RefuseEverything:
        """The permission prompt of a self-test: nobody is there to ask."""

        def ask(self, request: PermissionRequest) -> PermissionAnswer:
            return PermissionAnswer(choice="deny", reason="self-test: no user to ask")

    audit = AuditLog(tmp / "keyless.db")
    host = AgentHost(
        None,
        workspace=workspace,
        broker=None,
        memory=None,
        policy=PolicyEngine([Rule.parse("read_file(*)", action="allow")], workspace=workspace),
        prompt=RefuseEverything(),
        audit=audit,
        session_id=new_session_id(),
        scripted_model=script,
        hidden_paths=[tmp / "keyless.db"],
    )
    try:
        result = host.run_errand("Read hello.txt and tell me what it says.")
        isolated = host.os_isolation
    finally:
        host.close()
    calls = [c for c in result.tool_calls if c.tool == "read_file"]
    if result.outcome not in ("final", "finish") or not calls or not calls[0].ok:
        raise SelfTestError(
            f"the agent errand did not run its tool call: outcome {result.outcome}, "
            f"error {result.error}, calls {[c.summary for c in result.tool_calls]}"
        )
    if not audit.verify().ok:
        raise SelfTestError("the audit log's hash chain does not verify")
    where = "in bubblewrap" if isolated else "WITHOUT OS isolation (no bubblewrap)"
    return f"agent process {where}: read_file allowed by rule, ran, audited"


STEPS: tuple[tuple[str, Callable[[Path], str]], ...] = (
    ("model", _check_model),
    ("vault", _check_vault),
    ("redaction", _check_redaction),
    ("agent", _check_agent),
)


def run_self_test(out: TextIO | None = None) -> int:
    """Run every step; return ``ExitStatus.OK`` when all pass, ``ERROR`` at the first failure."""
    out = out or sys.stdout
    with tempfile.TemporaryDirectory(prefix="keyless-selftest-") as name:
        tmp = Path(name)
        for label, step in STEPS:
            started = time.perf_counter()
            try:
                detail = step(tmp)
            except Exception as e:  # noqa: BLE001 - report any failure and exit 1
                print(f"FAIL {label}: {type(e).__name__}: {e}", file=out, flush=True)
                return ExitStatus.ERROR
            print(f"ok   {label} ({time.perf_counter() - started:.1f} s): {detail}", file=out)
    print("self-test passed", file=out, flush=True)
    return ExitStatus.OK
