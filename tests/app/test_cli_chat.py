"""``keyless chat`` with the scripted backend, and one run on the embedded model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main


def _script(tmp_path: Path, answers: list[str]) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(answers), encoding="utf-8")
    return path


def test_one_shot_prints_the_answer_and_a_stats_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _script(tmp_path, ["The sea is wide."])
    status = main(["chat", "--backend", "fake", "--scripted", str(script), "--prompt", "hi"])
    out, err = capsys.readouterr()
    assert status == 0
    assert out == "The sea is wide.\n"
    assert "[4 tokens" in err and "evicted" in err and "shifts" in err and "stop: eos" in err


def test_max_tokens_cuts_the_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _script(tmp_path, ["one two three four five"])
    argv = ["chat", "--backend", "fake", "--scripted", str(script), "--prompt", "x"]
    assert main([*argv, "--max-tokens", "2"]) == 0
    out, err = capsys.readouterr()
    assert out == "one two\n"
    assert "stop: max_tokens" in err


def test_interactive_session_keeps_the_conversation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    script = _script(tmp_path, ["First.", "Second.", "Third."])
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n\nagain\n/reset\nonce more\n/quit\n"))
    assert main(["chat", "--backend", "fake", "--scripted", str(script)]) == 0
    out, err = capsys.readouterr()
    assert out.split() == ["First.", "Second.", "Third."]
    assert "(conversation forgotten)" in err
    assert err.count("stop: eos") == 3


def test_bad_model_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"not a model")
    assert main(["chat", "--model", str(bogus), "--prompt", "hi"]) == 1
    _, err = capsys.readouterr()
    assert "keyless chat: error:" in err and "not a GGUF" in err


def test_openai_backend_needs_url_and_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--backend", "openai", "--prompt", "hi"]) == 1
    assert "base URL and a model name" in capsys.readouterr().err


def test_script_running_out_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _script(tmp_path, [])
    assert main(["chat", "--backend", "fake", "--scripted", str(script), "--prompt", "hi"]) == 1
    assert "no response left" in capsys.readouterr().err


@pytest.mark.model
@pytest.mark.slow
def test_embedded_model_generates_far_past_n_ctx(tmp_path: Path) -> None:
    """The issue's acceptance run, scaled down: every token past n_ctx is produced."""
    argv = [
        sys.executable, "-m", "app", "chat", "--prompt", "Tell a very long story.",
        "--max-tokens", "600", "--n-ctx", "128", "--ignore-eos", "--threads", "1",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr
    stats = done.stderr.strip().splitlines()[-1]
    assert stats.startswith("[600 tokens")
    assert "stop: max_tokens" in stats
    evicted = int(stats.split(",")[3].split()[0])
    assert evicted >= 600 - 128
    assert len(done.stdout.split()) > 100


def test_with_a_server_model_names_the_served_model() -> None:
    from app.cli import build_parser
    from app.cli_chat import spec_from_args

    args = build_parser().parse_args(
        ["chat", "--backend", "openai", "--base-url", "http://127.0.0.1:8080/v1",
         "--model", "qwen2.5-7b", "--allow-local"]
    )  # fmt: skip
    spec = spec_from_args(args)
    assert spec.backend == "openai" and spec.settings.model_name == "qwen2.5-7b"
    assert "path" not in spec.settings.model_dump()


CHAT_KEY = "sk-chat-" + "9Jq2Lx7Vb4Nm8Rt1Wz6Y"


def _vault_with_the_key(*, index: bool = True) -> None:
    """The app's vault (locked, as a fresh process opens it) holding CHAT_KEY."""
    from app.paths import default_paths
    from vault._crypto import Argon2Params
    from vault.keystore import NoKeyring
    from vault.store import Vault

    vault = Vault.create(
        default_paths().vault_file, passphrase="pw", use_keyring=False, keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64),
    )  # fmt: skip
    vault.add("CHAT_KEY", CHAT_KEY.encode())
    vault.lock()
    if not index:
        vault.fingerprints_path.unlink()


def test_a_vault_secret_split_across_tokens_is_not_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _vault_with_the_key()
    answer = (
        f"Here is the key from your notes: {CHAT_KEY[:11]} {CHAT_KEY[11:]} "
        "- please keep it somewhere safe and private."
    )
    script = _script(tmp_path, [answer])
    status = main(["chat", "--backend", "fake", "--scripted", str(script), "--prompt", "key?"])
    out, err = capsys.readouterr()
    assert status == 0, err
    folded = "".join(out.split())
    assert CHAT_KEY[:14] not in folded and CHAT_KEY[-14:] not in folded
    assert out.startswith("Here is the ") and "[WITHHELD: matches a vault secret" in out
    assert out.endswith("somewhere safe and private.\n")


def test_chat_stops_before_the_model_when_the_output_cannot_be_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _vault_with_the_key(index=False)
    script = _script(tmp_path, [f"the key is {CHAT_KEY}"])
    status = main(["chat", "--backend", "fake", "--scripted", str(script), "--prompt", "key?"])
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    assert "cannot check the model's output for vault secrets" in err and "never indexed" in err
    assert CHAT_KEY not in err


@pytest.mark.keyring
def test_with_the_keyring_chat_redacts_every_secret_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    if os.environ.get("KEYLESS_SECRET_SERVICE") != "1":
        pytest.skip("needs a real Secret Service (KEYLESS_SECRET_SERVICE=1)")
    from app.paths import default_paths
    from vault.store import Vault

    vault = Vault.create(default_paths().vault_file, use_keyring=True)
    vault.add("CHAT_KEY", CHAT_KEY.encode())
    vault.lock()
    vault.fingerprints_path.unlink()  # the unlocked redactor needs no index
    script = _script(tmp_path, [f"Your key: {CHAT_KEY[:11]} {CHAT_KEY[11:]} - keep it safe."])
    status = main(["chat", "--backend", "fake", "--scripted", str(script), "--prompt", "key?"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert out == "Your key: [REDACTED:CHAT_KEY] - keep it safe.\n"


def test_eviction_option_reaches_the_spec_and_rejects_unknown_policies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from app.cli import build_parser
    from app.cli_chat import spec_from_args

    parser = build_parser()
    assert spec_from_args(parser.parse_args(["chat"])).settings.eviction == "sinks"
    args = parser.parse_args(["chat", "--eviction", "sinks+h2o"])
    assert spec_from_args(args).settings.eviction == "sinks+h2o"
    with pytest.raises(SystemExit):
        parser.parse_args(["chat", "--eviction", "lru"])
    assert "invalid choice: 'lru'" in capsys.readouterr().err
