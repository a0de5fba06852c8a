"""End to end: a credential the vault does not know never reaches the agent.

The real agent process (scripted model) reads a workspace ``.env``, cats it
in the shell and fetches an HTTP body that quotes a token; each time the
host withholds the line, the agent gets a stub naming the file and line, a
``secret_found`` event carries the offer (the value only in its offer
object), and the audit log says what was withheld without the value.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.host.permission import PermissionAnswer
from agent.host.policy import Rule
from agent.host.sandbox import Sandbox
from tests.agent.hostkit import Rig, call, final, make_rig
from tests.agent.test_e2e_http import LEAKY_TOKEN, broker, ca, grant, server  # noqa: F401 - fixtures
from vault.broker import Broker
from vault.errors import SecretScanError
from vault.secretscan import Finding

TOKEN = "ghp_" + "Zq3Vb8Nm1Lk4Jh7Gf2Ds5Ap9Ow6Ie0Ru3Ty8"
ENV = f"# local settings\nDEBUG=1\nSECRET_TOKEN={TOKEN}\n"


def assert_nowhere(rig: Rig, value: str) -> None:
    """``value`` crossed no pipe, no event's text, no audit entry."""
    for line in rig.transcript.sent + rig.transcript.received:
        assert value.encode() not in line
    for event in rig.events:
        assert value not in event.text
    for entry in rig.audit.entries():
        assert value not in entry.model_dump_json()


def found(rig: Rig) -> list[Finding]:
    return [e.data["offer"] for e in rig.events if e.kind == "secret_found"]


def test_read_file_of_a_dotenv_delivers_a_stub_not_the_token(
    tmp_path: Path, workspace: Path
) -> None:
    (workspace / ".env").write_text(ENV)
    rig = make_rig(
        tmp_path,
        workspace,
        [call("read_file", path=".env"), final("done")],
        answers=[PermissionAnswer(choice="once")],
    )
    rig.host.run_errand("what is in .env?")
    rig.host.close()
    # The default rules asked before the credential file was read.
    [asked] = rig.prompt.asked
    assert asked.tool == "read_file" and "credentials" in asked.reason
    [result] = rig.transcript.sent_of("tool_result")
    assert result["content"] == (
        "# local settings\nDEBUG=1\nSECRET_TOKEN=[WITHHELD: a credential (GitHub token) at "
        ".env:3 — ask the user to store it in the vault]\n"
    )
    assert_nowhere(rig, TOKEN)
    [offer] = found(rig)
    assert (offer.name, offer.value, offer.location) == ("SECRET_TOKEN", TOKEN, ".env:3")
    [event] = [e for e in rig.events if e.kind == "secret_found"]
    assert event.data["file"] == ".env" and event.data["line"] == 3
    [entry] = [e for e in rig.audit.entries() if e.kind == "tool_result"]
    assert entry.details["withheld"] == [
        {"file": ".env", "line": 3, "kind": "GitHub token", "name": "SECRET_TOKEN"}
    ]


def test_a_start_line_shifts_the_line_the_stub_names(tmp_path: Path, workspace: Path) -> None:
    (workspace / ".env").write_text(ENV)
    rig = make_rig(
        tmp_path,
        workspace,
        [call("read_file", path=".env", start_line=3), final("done")],
        rules=[Rule.parse("read_file(.env)", action="allow")],
    )
    rig.host.run_errand("read the token line")
    rig.host.close()
    [result] = rig.transcript.sent_of("tool_result")
    assert "at .env:3 —" in result["content"]
    assert_nowhere(rig, TOKEN)


@pytest.mark.skipif(not Sandbox.detect().available, reason="the shell needs bubblewrap")
def test_cat_dotenv_in_the_shell_is_withheld_too(tmp_path: Path, workspace: Path) -> None:
    (workspace / ".env").write_text(ENV)
    rig = make_rig(
        tmp_path,
        workspace,
        [call("shell", command="cat .env"), final("done")],
        answers=[PermissionAnswer(choice="once")],
        tools=("shell",),
    )
    rig.host.run_errand("cat .env")
    rig.host.close()
    [result] = rig.transcript.sent_of("tool_result")
    assert (
        "SECRET_TOKEN=[WITHHELD: a credential (GitHub token) at the command's output:"
        in (result["content"])
    )
    assert "DEBUG=1" in result["content"]
    assert_nowhere(rig, TOKEN)
    assert [f.value for f in found(rig)] == [TOKEN]


def test_an_http_body_quoting_an_unknown_token_is_withheld(
    tmp_path: Path,
    workspace: Path,
    broker: Broker,  # noqa: F811 - the imported fixture
    server: int,  # noqa: F811 - the imported fixture
) -> None:
    handle = grant(broker, server)
    rig = make_rig(
        tmp_path,
        workspace,
        [
            call("http_request", url=f"https://localhost:{server}/echo/leaky", capability=handle),
            final("done"),
        ],
        broker=broker,
        answers=[PermissionAnswer(choice="once")],
    )
    rig.host.run_errand("call the API")
    rig.host.close()
    [result] = rig.transcript.sent_of("tool_result")
    assert result["ok"] is True
    # The vault's own secret is redacted; the one it does not know is withheld.
    assert result["redacted"] == ["API_TOKEN"]
    assert (
        "deploy_token: [WITHHELD: a credential (GitHub token) at the HTTP response:"
        in (result["content"])
    )
    assert_nowhere(rig, LEAKY_TOKEN)
    [offer] = found(rig)
    assert (offer.name, offer.value) == ("deploy_token", LEAKY_TOKEN)


def test_ordinary_code_passes_untouched(tmp_path: Path, workspace: Path) -> None:
    source = Path(__file__).resolve().parents[2] / "agent" / "host" / "errand.py"
    (workspace / "host.py").write_text(source.read_text()[:12000])
    rig = make_rig(tmp_path, workspace, [call("read_file", path="host.py"), final("done")])
    rig.host.run_errand("read host.py")
    rig.host.close()
    [result] = rig.transcript.sent_of("tool_result")
    assert "WITHHELD" not in result["content"]
    assert found(rig) == []


def test_a_scanner_failure_withholds_the_whole_result(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workspace / "notes.txt").write_text("nothing secret here\n")

    def broken(text: str, *, source: str, first_line: int = 1) -> tuple[str, list[Finding]]:
        raise SecretScanError("the credential scan failed (RuntimeError)")

    # The real detector cannot be made to fail on demand; its failure is stood in for.
    monkeypatch.setattr("agent.host.delivery.withhold", broken)
    rig = make_rig(tmp_path, workspace, [call("read_file", path="notes.txt"), final("done")])
    rig.host.run_errand("read notes")
    rig.host.close()
    [result] = rig.transcript.sent_of("tool_result")
    assert result["content"].startswith("[WITHHELD: the result could not be checked")
    assert "nothing secret" not in json.dumps(rig.transcript.sent_of("tool_result"))
