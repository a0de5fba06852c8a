"""The credential scanner: known formats, assignments, private keys, no alarm on code."""

from __future__ import annotations

from pathlib import Path

import pytest

from vault.secretscan import stub, withhold

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("ghp_" + "Zq3Vb8Nm1Lk4Jh7Gf2Ds5Ap9Ow6Ie0Ru3Ty8", "GitHub token"),
        ("github_pat_11ABCDEFG0" + "123456789_abcdefghijklmnopqrstuvwxyzABCDEF", "GitHub token"),
        ("key sk-proj-" + "abcDEF1234567890abcdefghijklmnop", "OpenAI-style API key"),
        ("sk-ant-api03-" + "abcDEF1234567890abcdefghijk", "Anthropic API key"),
        ("aws_id = AKIA" + "IOSFODNN7EXAMPLE", "AWS Access Key"),
        ("xoxb-123456789012-" + "1234567890123-abcdefghijABCDEFGHIJklmn", "Slack token"),
        (
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
            "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
            "JSON Web Token",
        ),
        ('db_password = "hunter2xyz"', "password or secret"),
        ("API_KEY=3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c", "value of a credential name"),
    ],
)  # fmt: skip
def test_known_formats_and_credential_assignments_are_withheld(line: str, kind: str) -> None:
    text, [finding] = withhold(f"before\n{line}\nafter", source="out.txt")
    assert finding.kind == kind and finding.location == "out.txt:2"
    assert text.split("\n")[1].endswith(stub(finding))
    assert finding.value not in text
    assert finding.value not in repr(finding)


def test_an_assignment_keeps_its_name_and_offers_the_whole_value() -> None:
    token = "ghp_" + "Zq3Vb8Nm1Lk4Jh7Gf2Ds5Ap9Ow6Ie0Ru3Ty8"
    text, [f] = withhold(f'export SECRET_TOKEN="{token}"', source=".env", first_line=7)
    assert text.startswith("export SECRET_TOKEN=")
    assert (f.name, f.value, f.line) == ("SECRET_TOKEN", token, 7)


def test_a_private_key_block_is_withheld_whole() -> None:
    key = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        "b3BlbnNzaC1rZXktdjEAAAAA\n"
        "-----END OPENSSH PRIVATE KEY-----"
    )
    text, [f] = withhold(f"id:\n{key}\ndone", source="id_ed25519")
    assert text == f"id:\n{stub(f)}\ndone"
    assert f.value == key and f.kind == "private key"


@pytest.mark.parametrize(
    "line",
    [
        "api_key = settings.api_key",
        "token = self._next_token()",
        'secret_name="KEY"',
        "password = os.environ['DB_PASSWORD']",
        "PASSWORD=${DB_PASSWORD}",
        "sha = 3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c",
        "DB_PASSWORD=short",
    ],
)
def test_ordinary_lines_pass(line: str) -> None:
    assert withhold(line, source="x") == (line, [])


@pytest.mark.parametrize(
    "module",
    ["agent/host/errand.py", "agent/host/policy.py", "vault/redact.py", "vault/secretscan.py"],
)
def test_no_false_positive_on_this_repositorys_code(module: str) -> None:
    text = (ROOT / module).read_text()
    assert withhold(text, source=module) == (text, [])
