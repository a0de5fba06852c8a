"""End to end: vault secrets in the workspace and in a relayed model's output.

The real agent process reads a workspace ``.env`` holding a vault secret (raw,
base64, split across two lines) through read_file and the shell, while the
vault is *locked*: the broker withholds every copy through the secrets'
fingerprints, written when the vault was last saved. A relayed remote model
that echoes a secret goes through the same streaming redactor. Every line the
host sent to the agent process is scanned, and the errand goes on.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.host.errand import AgentHost
from agent.host.permission import PermissionAnswer, PermissionRequest
from agent.host.policy import PolicyEngine
from agent.host.sandbox import Sandbox
from agent.protocol import ErrandLimits
from models.fake import ScriptedModel
from tests.agent.hostkit import ScriptedAnswerer, Transcript, call, final, make_rig
from vault._crypto import Argon2Params
from vault.audit import AuditLog
from vault.broker import Broker
from vault.grants import GrantStore
from vault.keystore import NoKeyring
from vault.redact import secret_forms
from vault.store import Vault

KEY = "sk-proj-" + "T3BlbkFJ" + "q8Zr2LmX5vN0cW7yHd4K"


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    v = Vault.create(
        tmp_path / "vault.kls",
        passphrase="correct horse",
        use_keyring=False,
        keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64),
        idle_timeout=None,
    )
    v.add("OPENAI_API_KEY", KEY.encode())
    return v


@pytest.fixture
def broker(tmp_path: Path, vault: Vault) -> Iterator[Broker]:
    db = tmp_path / "keyless.db"
    b = Broker(vault, GrantStore(db), AuditLog(db))
    yield b
    b.close()


def assert_key_absent(data: bytes | str) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    folded = "".join(text.split())
    for form in [*secret_forms(KEY), KEY[:14], KEY[-14:]]:
        assert form not in text and form not in folded, f"a copy of the key ({form[:6]}...) leaked"


def user_allows(request: PermissionRequest) -> PermissionAnswer:
    if request.unsandboxed:
        return PermissionAnswer(choice="deny", reason="not without a sandbox")
    return PermissionAnswer(choice="once")


def test_a_locked_vault_withholds_its_secrets_in_workspace_files(
    tmp_path: Path, workspace: Path, vault: Vault, broker: Broker
) -> None:
    (workspace / ".env").write_text(
        "# deploy settings\n"
        f"OPENAI_API_KEY={KEY}\n"
        f"OPENAI_API_KEY_B64={base64.b64encode(KEY.encode()).decode()}\n"
        f"OPENAI_API_KEY_WRAPPED={KEY[:16]}\n    {KEY[16:]}\n"
        "# the region is eu-west, the retries are three, nothing else here\n"
    )
    vault.lock()
    shell = Sandbox.detect().available
    replies = [
        call("read_file", path=".env"),
        *([call("shell", command="cat .env")] if shell else []),
        final("Read the settings."),
    ]
    rig = make_rig(
        tmp_path,
        workspace,
        replies,
        broker=broker,
        tools=("read_file", "shell"),
        limits=ErrandLimits(max_steps=len(replies)),
    )
    rig.prompt.decide = user_allows
    try:
        result = rig.host.run_errand("look at the deploy settings")
    finally:
        rig.host.close()
    assert vault.is_locked
    assert result.outcome == "final", result.error  # the errand went on
    assert [r.ok for r in result.tool_calls] == [True] * (len(replies) - 1)
    results = rig.transcript.sent_of("tool_result")
    assert len(results) == len(replies) - 1
    for sent in results:
        assert "[WITHHELD: matches a vault secret; unlock to see]" in sent["content"]
        assert "the retries are three" in sent["content"]  # the rest came through
    for line in rig.transcript.sent + rig.transcript.received:
        assert_key_absent(line)
    for event in rig.events:
        assert_key_absent(event.text)


def test_a_relayed_model_echoing_a_secret_hands_the_agent_no_copy(
    tmp_path: Path, workspace: Path, vault: Vault, broker: Broker
) -> None:
    # The remote server echoes the key, split across its tokens and in base64.
    b64 = base64.b64encode(KEY.encode()).decode()
    echo = (
        f"The key you configured is {KEY[:12]} {KEY[12:]} ({b64[:20]} {b64[20:]}), "
        "all set; the other settings are unchanged."
    )
    transcript = Transcript()
    for locked in (False, True):
        if locked:
            vault.lock()
        remote = ScriptedModel([final(echo)] * 3)  # the host closes it with the errand
        host = AgentHost(
            None,
            workspace=workspace,
            broker=broker,
            memory=None,
            policy=PolicyEngine(),
            prompt=ScriptedAnswerer(),
            audit=None,
            session_id="relay-test",
            tools=["list_dir"],
            limits=ErrandLimits(max_steps=2),
            relay_model=remote,
            transcript=transcript,
        )
        try:
            result = host.run_errand("Is the key set?")
        finally:
            host.close()
        assert result.outcome == "final", result.error
        assert "settings are unchanged" in result.text
    [hello, _] = transcript.sent_of("hello")
    assert hello["relayed_model"]["backend"] == "fake"
    chunks = transcript.sent_of("model_chunk")
    assert chunks and len(transcript.sent_of("model_done")) == 2
    assert any("[REDACTED:OPENAI_API_KEY]" in c["text"] for c in chunks)
    assert any("[WITHHELD:" in c["text"] for c in chunks)
    for line in transcript.sent + transcript.received:
        assert_key_absent(line)
