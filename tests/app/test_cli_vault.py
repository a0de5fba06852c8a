"""``keyless vault ...`` end to end through ``app.cli.main`` with a real vault file.

Standard input is a pipe here, so passphrases come one per line and a value is
the rest of the input; nothing secret is ever an argument.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from vault.errors import KeyringUnavailableError
from vault.keystore import NoKeyring
from vault.store import Vault

PASS = "correct horse battery staple"
FAST = ["--kdf-memory-mib", "1", "--kdf-iterations", "1"]
SECRET = b"sk-cli-secret-0123456789"
SECRET_SERVICE = os.environ.get("KEYLESS_SECRET_SERVICE") == "1"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def vault_file(tmp_path: Path) -> Path:
    return tmp_path / "vault.kls"


@pytest.fixture(autouse=True)
def no_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYLESS_NO_KEYRING", "1")


def run(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, *args: str, stdin: bytes = b""
) -> int:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    return main(["vault", "--vault", str(vault_file), *args])


def init(monkeypatch: pytest.MonkeyPatch, vault_file: Path) -> None:
    assert run(monkeypatch, vault_file, "init", *FAST, stdin=f"{PASS}\n".encode()) == 0


def test_init_without_keyring_says_so_and_uses_a_passphrase(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init(monkeypatch, vault_file)
    out, err = capsys.readouterr()
    assert "no OS keyring is available" in err
    assert "unlock with: passphrase" in out
    v = Vault.open(vault_file, keystore=NoKeyring())
    assert v.unlock_methods == ("passphrase",)
    v.unlock(PASS)


def test_init_refuses_keyring_flag_and_no_passphrase_without_keyring(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(monkeypatch, vault_file, "init", "--keyring", stdin=b"pw\n") == 1
    assert "no OS keyring" in capsys.readouterr().err
    assert run(monkeypatch, vault_file, "init", "--no-passphrase", stdin=b"pw\n") == 1
    assert "needs a passphrase" in capsys.readouterr().err
    assert not vault_file.exists()


class _BrokenKeyring:
    """Looks available, fails on use: a D-Bus session without a Secret Service."""

    def available(self) -> bool:
        return True

    def get(self, vault_id: bytes, item: str) -> bytearray | None:
        raise KeyringUnavailableError("the OS keyring could not read the vault key (DBusError)")

    def set(self, vault_id: bytes, item: str, value: bytes | bytearray) -> None:
        raise KeyringUnavailableError("the OS keyring could not write the vault key (DBusError)")

    def delete(self, vault_id: bytes, item: str) -> None:
        raise KeyringUnavailableError("the OS keyring could not delete the vault key (DBusError)")


def test_init_falls_back_when_a_keyring_fails_on_first_use(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("vault.keystore.default_keystore", lambda: _BrokenKeyring())
    assert run(monkeypatch, vault_file, "init", *FAST, stdin=f"{PASS}\n".encode()) == 0
    assert "DBusError" in capsys.readouterr().err
    v = Vault.open(vault_file, keystore=NoKeyring())
    assert v.unlock_methods == ("passphrase",)
    vault_file.unlink()
    # Asked for explicitly, the keyring is not silently dropped.
    assert run(monkeypatch, vault_file, "init", "--keyring", *FAST, stdin=b"pw\n") == 1
    assert not vault_file.exists()


def test_init_twice_keeps_the_first_vault(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init(monkeypatch, vault_file)
    before = vault_file.read_bytes()
    assert run(monkeypatch, vault_file, "init", *FAST, stdin=b"other\n") == 1
    assert "already exists" in capsys.readouterr().err
    assert vault_file.read_bytes() == before


def test_add_list_update_delete(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init(monkeypatch, vault_file)
    stdin = f"{PASS}\n".encode() + SECRET + b"\n"
    assert run(monkeypatch, vault_file, "add", "OPENAI_API_KEY", stdin=stdin) == 0
    multi = f"{PASS}\n".encode() + b"l1\nl2\n"
    assert run(monkeypatch, vault_file, "add", "multi", stdin=multi) == 0
    assert run(monkeypatch, vault_file, "add", "OPENAI_API_KEY", stdin=stdin) == 1
    assert "already exists" in capsys.readouterr().err
    assert run(monkeypatch, vault_file, "list", stdin=f"{PASS}\n".encode()) == 0
    out, err = capsys.readouterr()
    assert out.split() == ["OPENAI_API_KEY", "multi"]
    assert SECRET.decode() not in out + err

    v = Vault.open(vault_file, keystore=NoKeyring())
    v.unlock(PASS)
    assert v.get("OPENAI_API_KEY") == SECRET  # the trailing newline was dropped
    assert v.get("multi") == b"l1\nl2"
    v.lock()

    new = f"{PASS}\nnew\n".encode()
    assert run(monkeypatch, vault_file, "update", "OPENAI_API_KEY", stdin=new) == 0
    assert run(monkeypatch, vault_file, "rm", "multi", stdin=f"{PASS}\n".encode()) == 0
    assert run(monkeypatch, vault_file, "delete", "multi", stdin=f"{PASS}\n".encode()) == 1
    assert "no secret named 'multi'" in capsys.readouterr().err
    v.unlock(PASS)
    assert v.names() == ["OPENAI_API_KEY"] and v.get("OPENAI_API_KEY") == b"new"


def test_wrong_passphrase_and_bad_name(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init(monkeypatch, vault_file)
    capsys.readouterr()
    assert run(monkeypatch, vault_file, "list", stdin=b"nope\n") == 1
    assert capsys.readouterr().err.strip() == "keyless vault list: error: wrong passphrase"
    assert run(monkeypatch, vault_file, "add", "bad name", stdin=f"{PASS}\nv\n".encode()) == 1
    assert "invalid secret name" in capsys.readouterr().err
    assert run(monkeypatch, vault_file, "add", "empty", stdin=f"{PASS}\n".encode()) == 1
    assert "cannot be empty" in capsys.readouterr().err


def test_unlock_check_reports_state(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init(monkeypatch, vault_file)
    capsys.readouterr()
    assert run(monkeypatch, vault_file, "unlock", stdin=f"{PASS}\n".encode()) == 0
    out = capsys.readouterr().out
    assert "0 secrets" in out and "passphrase" in out and "rollback detection: off" in out


def test_corrupt_vault_is_reported_and_left_alone(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init(monkeypatch, vault_file)
    damaged = vault_file.read_bytes()[:-5]
    vault_file.write_bytes(damaged)
    assert run(monkeypatch, vault_file, "list", stdin=f"{PASS}\n".encode()) == 1
    assert "damaged or was tampered with" in capsys.readouterr().err
    assert vault_file.read_bytes() == damaged


def test_passwd_rotate_backup(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    init(monkeypatch, vault_file)
    run(monkeypatch, vault_file, "add", "k", stdin=f"{PASS}\n".encode() + SECRET)
    assert run(monkeypatch, vault_file, "passwd", *FAST, stdin=f"{PASS}\nnew pass\n".encode()) == 0
    assert run(monkeypatch, vault_file, "list", stdin=f"{PASS}\n".encode()) == 1
    assert run(monkeypatch, vault_file, "rotate", stdin=b"new pass\n") == 0
    assert "1 secret re-encrypted" in capsys.readouterr().out
    assert run(monkeypatch, vault_file, "passwd", "--remove", stdin=b"new pass\n") == 1
    assert "only way to unlock" in capsys.readouterr().err
    backup = tmp_path / "backup.kls"
    assert run(monkeypatch, vault_file, "backup", str(backup), *FAST, stdin=b"new pass\nbk\n") == 0
    assert run(monkeypatch, vault_file, "backup", str(backup), stdin=b"new pass\nbk\n") == 1
    b = Vault.open(backup, keystore=NoKeyring())
    b.unlock("bk")
    assert b.get("k") == SECRET


def test_missing_vault(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(monkeypatch, vault_file, "list") == 1
    assert "no vault at" in capsys.readouterr().err


def test_default_path_is_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f"{PASS}\n".encode())))
    assert main(["vault", "init", *FAST]) == 0
    assert (Path(os.environ["KEYLESS_DATA_DIR"]) / "vault.kls").exists()


def test_value_is_never_an_argument() -> None:
    with pytest.raises(SystemExit):
        main(["vault", "add", "NAME", "the-value"])


def test_real_process_reads_value_from_stdin(vault_file: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "KEYLESS_NO_KEYRING": "1"}
    cmd = [sys.executable, "-m", "app", "vault", "--vault", str(vault_file)]
    subprocess.run([*cmd, "init", *FAST], input=f"{PASS}\n".encode(), env=env, check=True)
    subprocess.run([*cmd, "add", "k"], input=f"{PASS}\n".encode() + SECRET, env=env, check=True)
    listed = subprocess.run(
        [*cmd, "list"], input=f"{PASS}\n".encode(), env=env, check=True, capture_output=True
    )
    assert listed.stdout.split() == [b"k"]
    assert SECRET not in listed.stdout + listed.stderr


@pytest.mark.keyring
def test_keyring_init_and_unlock_without_typing(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not SECRET_SERVICE:
        pytest.skip("needs a real Secret Service (KEYLESS_SECRET_SERVICE=1)")
    monkeypatch.delenv("KEYLESS_NO_KEYRING")
    assert run(monkeypatch, vault_file, "init", "--no-passphrase") == 0
    assert "unlock with: keyring" in capsys.readouterr().out
    assert run(monkeypatch, vault_file, "add", "k", stdin=SECRET) == 0  # no passphrase line
    assert run(monkeypatch, vault_file, "unlock-check") == 0
    assert "rollback detection: on" in capsys.readouterr().out
    assert run(monkeypatch, vault_file, "passwd", *FAST, stdin=b"pw\n") == 0
    assert run(monkeypatch, vault_file, "keyring", "off") == 0
    assert run(monkeypatch, vault_file, "list", stdin=b"pw\n") == 0
    assert capsys.readouterr().out.split()[-1] == "k"


def _locked_redaction(vault_file: Path, tmp_path: Path, text: str) -> tuple[str, list[str]]:
    """Redact ``text`` through a broker over the vault, opened (so locked) afresh."""
    from vault.audit import AuditLog
    from vault.broker import Broker
    from vault.grants import GrantStore

    vault = Vault.open(vault_file, keystore=NoKeyring())
    assert vault.is_locked
    db = tmp_path / "keyless.db"
    grants, audit = GrantStore(db), AuditLog(db)
    try:
        with Broker(vault, grants, audit) as broker:
            return broker.redact(text, session_id="s1")
    finally:
        grants.close()
        audit.close()


def test_every_cli_change_reindexes_the_secrets_for_the_locked_redactor(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, tmp_path: Path
) -> None:
    init(monkeypatch, vault_file)
    key = SECRET.decode()
    assert run(monkeypatch, vault_file, "add", "k", stdin=f"{PASS}\n".encode() + SECRET) == 0
    # No unlock since the add, no broker ever saw it unlocked: the add itself indexed it.
    text, names = _locked_redaction(vault_file, tmp_path, f"API_KEY={key}\n")
    assert key not in text and names == ["vault secret (locked)"]

    other = "sk-second-secret-9876543210zyx"
    assert run(monkeypatch, vault_file, "update", "k", stdin=f"{PASS}\n{other}".encode()) == 0
    both = f"old {key}; and after plenty of plain words, new {other}\n"
    text, _ = _locked_redaction(vault_file, tmp_path, both)
    assert other not in text and key in text  # the old value is no longer a secret
    for command in (["passwd", *FAST], ["rotate"]):
        stdin = f"{PASS}\n{PASS}\n".encode() if command[0] == "passwd" else f"{PASS}\n".encode()
        assert run(monkeypatch, vault_file, *command, stdin=stdin) == 0
        text, _ = _locked_redaction(vault_file, tmp_path, f"value: {other}\n")
        assert other not in text  # a new generation, indexed again
    assert run(monkeypatch, vault_file, "rm", "k", stdin=f"{PASS}\n".encode()) == 0
    assert _locked_redaction(vault_file, tmp_path, f"value: {other}\n") == (f"value: {other}\n", [])
