"""``keyless vault``: create, unlock and edit the encrypted vault from a terminal.

Secret values and passphrases are never taken from the command line (they
would land in shell history and ``ps``): they are prompted for without echo
on a terminal, or read from standard input when it is a pipe: one line per
passphrase asked, then the rest of the input is the value (one trailing
newline dropped), so scripts can feed both without an argument.

Subcommands: ``init``, ``unlock-check`` (alias ``unlock``), ``add NAME``,
``update NAME``, ``list``, ``delete NAME`` (alias ``rm``), ``passwd``,
``rotate``, ``backup PATH``, ``keyring on|off``, and from
:mod:`app.cli_vault_grants` ``grant``, ``grants``, ``revoke`` and ``audit``.
Errors are reported as :mod:`app.cli_common` prints them; Ctrl-C at a prompt
exits with ``ExitStatus.INTERRUPTED`` and changes nothing.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.cli_common import CliError, ExitStatus, set_command
from vault.errors import VaultError

if TYPE_CHECKING:
    from vault.keystore import Argon2Params, KeyStore
    from vault.store import Vault

VaultHandler = Callable[[argparse.Namespace, "Terminal"], int]
"""A ``keyless vault`` command: the parsed arguments and the terminal to prompt on."""


class Terminal:
    """Where prompts go and where secrets come from (a TTY without echo, or a pipe)."""

    def __init__(self) -> None:
        self.interactive = sys.stdin.isatty()

    def say(self, message: str) -> None:
        """Tell the user something (a note, a prompt's context) on stderr."""
        print(message, file=sys.stderr)

    def passphrase(self, prompt: str, *, confirm: bool = False) -> str:
        """Read a passphrase; with ``confirm`` a terminal user types it twice."""
        if not self.interactive:
            # The binary layer only: a text-layer read-ahead would swallow the value.
            raw = sys.stdin.buffer.readline()
            if not raw:
                raise CliError("expected a passphrase on standard input")
            try:
                return raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise CliError("the passphrase on standard input is not UTF-8") from e
        first = getpass.getpass(prompt)
        if confirm and getpass.getpass("Repeat it: ") != first:
            raise CliError("the two passphrases differ")
        return first

    def value(self, name: str) -> bytearray:
        """Read a secret value: hidden prompt on a terminal, else the rest of stdin."""
        if self.interactive:
            data = bytearray(getpass.getpass(f"Value of {name} (hidden): ").encode("utf-8"))
        else:
            data = bytearray(sys.stdin.buffer.read())
            for ending in (b"\r\n", b"\n"):
                if data.endswith(ending):
                    del data[-len(ending) :]
                    break
        return data


def register(subparsers: Any) -> None:
    """Add the ``vault`` command group to the ``keyless`` parser."""
    parser = subparsers.add_parser(
        "vault",
        help="the encrypted vault of API keys and passwords",
        description="Manage the encrypted vault. Values are prompted for, never arguments.",
    )
    parser.add_argument("--vault", type=Path, help="vault file (default: the data dir's vault.kls)")
    commands = parser.add_subparsers(dest="vault_command", metavar="SUBCOMMAND", required=True)

    init = commands.add_parser("init", help="create the vault")
    init.add_argument(
        "--keyring",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the vault key in the OS keyring (default: when one is available)",
    )
    init.add_argument(
        "--passphrase",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also protect the vault with a passphrase (default: yes; the recovery path)",
    )
    _add_kdf_options(init)
    set_vault_command(init, _init)

    check = commands.add_parser(
        "unlock-check", aliases=["unlock"], help="unlock the vault to check it opens"
    )
    check.add_argument(
        "--accept-rollback",
        action="store_true",
        help="accept a vault file older than the keyring expects (you restored an old copy)",
    )
    set_vault_command(check, _unlock_check)

    add = commands.add_parser("add", help="store a new secret (value prompted or from stdin)")
    add.add_argument("name")
    set_vault_command(add, _add)

    update = commands.add_parser("update", help="replace a secret's value")
    update.add_argument("name")
    set_vault_command(update, _update)

    listing = commands.add_parser("list", help="list the secret names (never values)")
    set_vault_command(listing, _list)

    delete = commands.add_parser("delete", aliases=["rm"], help="delete a secret")
    delete.add_argument("name")
    set_vault_command(delete, _delete)

    passwd = commands.add_parser("passwd", help="set or change the passphrase")
    passwd.add_argument(
        "--remove", action="store_true", help="remove the passphrase (keyring must stay enabled)"
    )
    _add_kdf_options(passwd)
    set_vault_command(passwd, _passwd)

    rotate = commands.add_parser("rotate", help="replace the data key and re-encrypt everything")
    set_vault_command(rotate, _rotate)

    backup = commands.add_parser("backup", help="export an encrypted copy under its own passphrase")
    backup.add_argument("path", type=Path)
    _add_kdf_options(backup)
    set_vault_command(backup, _backup)

    keyring_cmd = commands.add_parser("keyring", help="enable or disable the OS keyring method")
    keyring_cmd.add_argument("state", choices=["on", "off"])
    set_vault_command(keyring_cmd, _keyring)

    # Imported here: app.cli_vault_grants builds on this module.
    from app.cli_vault_grants import register_vault_commands

    register_vault_commands(commands)


def _add_kdf_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("passphrase key derivation (Argon2id)")
    group.add_argument("--kdf-memory-mib", type=int, help="memory per unlock in MiB")
    group.add_argument("--kdf-iterations", type=int, help="passes over that memory")
    group.add_argument(
        "--kdf-calibrate",
        action="store_true",
        help="measure this machine and pick iterations for about 0.5 s per unlock",
    )


def _kdf(args: argparse.Namespace) -> Argon2Params | None:
    from vault.keystore import DEFAULT_ARGON2, Argon2Params, calibrate_argon2

    memory = getattr(args, "kdf_memory_mib", None)
    iterations = getattr(args, "kdf_iterations", None)
    if getattr(args, "kdf_calibrate", False):
        return calibrate_argon2(memory_kib=(memory or DEFAULT_ARGON2.memory_kib // 1024) * 1024)
    if memory is None and iterations is None:
        return None
    params = Argon2Params(
        iterations=iterations or DEFAULT_ARGON2.iterations,
        lanes=DEFAULT_ARGON2.lanes,
        memory_kib=int(memory * 1024) if memory else DEFAULT_ARGON2.memory_kib,
    )
    try:
        params.validate()
    except ValueError as e:
        raise CliError(f"invalid key derivation settings: {e}", ExitStatus.USAGE) from e
    return params


def set_vault_command(parser: argparse.ArgumentParser, handler: VaultHandler) -> None:
    """Make ``handler`` the command ``parser`` runs, with a :class:`Terminal`.

    A vault error becomes a :class:`~app.cli_common.CliError`; Ctrl-C at a
    prompt (vault writes are atomic) is reported as changing nothing.
    """
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args, Terminal())
        except KeyboardInterrupt:
            raise CliError("interrupted, nothing changed", ExitStatus.INTERRUPTED) from None

    set_command(parser, run, converts=(VaultError,))


def _vault_path(args: argparse.Namespace) -> Path:
    if args.vault is not None:
        return Path(args.vault)
    from app.paths import default_paths

    return default_paths().ensure().vault_file


def _keystore() -> KeyStore:
    from vault.keystore import default_keystore

    return default_keystore()


def open_unlocked(
    args: argparse.Namespace, terminal: Terminal, *, accept_rollback: bool = False
) -> tuple[Vault, str | None]:
    """Open and unlock the vault ``args.vault`` names: the keyring first, then the passphrase.

    Returns:
        The vault and the passphrase typed, if one was (for ``rotate``).
    """
    from vault.errors import KeyringUnavailableError
    from vault.store import Vault

    keystore = _keystore()
    vault = Vault.open(_vault_path(args), keystore=keystore, idle_timeout=None)
    methods = vault.unlock_methods
    if "keyring" in methods:
        try:
            vault.unlock(accept_rollback=accept_rollback)
            return vault, None
        except KeyringUnavailableError as e:
            if "passphrase" not in methods:
                raise
            terminal.say(f"{e}; using the passphrase instead")
    passphrase = terminal.passphrase("Vault passphrase: ")
    vault.unlock(passphrase, accept_rollback=accept_rollback)
    return vault, passphrase


# ------------------------------------------------------------------ commands


def _init(args: argparse.Namespace, terminal: Terminal) -> int:
    from vault.errors import KeyringUnavailableError
    from vault.keystore import NO_KEYRING_MESSAGE
    from vault.store import Vault

    path = _vault_path(args)
    keystore = _keystore()
    use_keyring = args.keyring
    if use_keyring is None:
        use_keyring = keystore.available()
        if not use_keyring:
            terminal.say(NO_KEYRING_MESSAGE + ".")
    elif use_keyring and not keystore.available():
        raise CliError(NO_KEYRING_MESSAGE + "; run again without --keyring")
    want_passphrase = args.passphrase or not use_keyring
    if not args.passphrase and not use_keyring:
        raise CliError("without an OS keyring the vault needs a passphrase")
    if path.exists():  # before asking for a passphrase that would be wasted
        raise CliError(f"a vault already exists at {path}")
    passphrase = (
        terminal.passphrase("New vault passphrase: ", confirm=True) if want_passphrase else None
    )
    kdf = _kdf(args)
    try:
        vault = Vault.create(
            path, passphrase=passphrase, use_keyring=use_keyring, keystore=keystore, kdf=kdf,
            idle_timeout=None,
        )
    except KeyringUnavailableError as e:
        # A keyring that looked usable failed on first write (e.g. a D-Bus
        # session without a Secret Service): fall back only if we were guessing.
        if args.keyring is not None or passphrase is None:
            raise
        terminal.say(f"{e}; the vault is protected by its passphrase only.")
        use_keyring = False
        vault = Vault.create(
            path, passphrase=passphrase, use_keyring=False, keystore=keystore, kdf=kdf,
            idle_timeout=None,
        )
    vault.lock()
    print(f"created {path} (unlock with: {', '.join(vault.unlock_methods)})")
    if not use_keyring:
        print("note: no OS keyring is used; you will type the passphrase to unlock")
    return 0


def _unlock_check(args: argparse.Namespace, terminal: Terminal) -> int:
    vault, _ = open_unlocked(args, terminal, accept_rollback=args.accept_rollback)
    count = len(vault.names())
    rollback = "on" if vault.rollback_protected else "off (no OS keyring)"
    vault.lock()
    print(
        f"vault unlocked: {count} secret{'s' if count != 1 else ''}; "
        f"unlock methods: {', '.join(vault.unlock_methods)}; rollback detection: {rollback}"
    )
    return 0


def _add(args: argparse.Namespace, terminal: Terminal) -> int:
    return _store_value(args, terminal, update=False)


def _update(args: argparse.Namespace, terminal: Terminal) -> int:
    return _store_value(args, terminal, update=True)


def _store_value(args: argparse.Namespace, terminal: Terminal, *, update: bool) -> int:
    store_secret(
        args.name, lambda: terminal.value(args.name), update=update, vault_file=args.vault,
        terminal=terminal,
    )
    print(f"{'updated' if update else 'stored'} {args.name}")
    return 0


def store_secret(
    name: str,
    value: bytearray | Callable[[], bytearray],
    *,
    update: bool = False,
    vault_file: Path | None = None,
    terminal: Terminal | None = None,
) -> None:
    """Store a secret the way ``keyless vault add`` / ``update`` do.

    The vault is unlocked with the OS keyring, else the passphrase (asked on
    the terminal, or read from standard input when it is a pipe), and locked
    again; the value is zeroed.

    Args:
        name: The secret's name.
        value: The value, or a function that reads it (called only once the
            vault is open and the name is free, so nothing is typed in vain).
        update: Replace an existing secret's value instead of adding one.
        vault_file: The vault (default: the data dir's ``vault.kls``).
        terminal: Where prompts go (default: this process's terminal).

    Raises:
        VaultError: The vault is missing, would not unlock, or refused the value.
        CliError: A new secret's name is taken, or the input is unusable.
    """
    from app.withheld import zero

    terminal = terminal or Terminal()
    read = value if callable(value) else None
    data = None if callable(value) else value
    try:
        vault, _ = open_unlocked(argparse.Namespace(vault=vault_file), terminal)
        try:
            if not update and name in vault:
                raise CliError(f"a secret named {name!r} already exists; use 'update'")
            if read is not None:
                data = read()
            assert data is not None
            if update:
                vault.update(name, data)
            else:
                vault.add(name, data)
        finally:
            vault.lock()
    finally:
        if data is not None:
            zero(data)


def _list(args: argparse.Namespace, terminal: Terminal) -> int:
    vault, _ = open_unlocked(args, terminal)
    names = vault.names()
    vault.lock()
    for name in names:
        print(name)
    return 0


def _delete(args: argparse.Namespace, terminal: Terminal) -> int:
    vault, _ = open_unlocked(args, terminal)
    try:
        vault.delete(args.name)
    finally:
        vault.lock()
    print(f"deleted {args.name}")
    return 0


def _passwd(args: argparse.Namespace, terminal: Terminal) -> int:
    vault, _ = open_unlocked(args, terminal)
    try:
        if args.remove:
            vault.remove_passphrase()
            print("passphrase removed; the vault opens with the OS keyring only")
            return 0
        new = terminal.passphrase("New vault passphrase: ", confirm=True)
        vault.change_passphrase(new, kdf=_kdf(args))
    finally:
        vault.lock()
    print("passphrase changed")
    return 0


def _rotate(args: argparse.Namespace, terminal: Terminal) -> int:
    vault, passphrase = open_unlocked(args, terminal)
    try:
        if "passphrase" in vault.unlock_methods and passphrase is None:
            passphrase = terminal.passphrase("Vault passphrase (to re-wrap the new key): ")
        vault.rotate_data_key(passphrase=passphrase)
        count = len(vault.names())
    finally:
        vault.lock()
    print(f"data key rotated; {count} secret{'s' if count != 1 else ''} re-encrypted")
    return 0


def _backup(args: argparse.Namespace, terminal: Terminal) -> int:
    target = Path(args.path)
    if target.exists():
        raise CliError(f"a file already exists at {target}")
    vault, _ = open_unlocked(args, terminal)
    try:
        passphrase = terminal.passphrase("Backup passphrase: ", confirm=True)
        vault.export_backup(target, passphrase, kdf=_kdf(args))
    finally:
        vault.lock()
    print(f"encrypted backup written to {target} (opens with its own passphrase only)")
    return 0


def _keyring(args: argparse.Namespace, terminal: Terminal) -> int:
    vault, _ = open_unlocked(args, terminal)
    try:
        if args.state == "on":
            vault.enable_keyring()
        else:
            vault.disable_keyring()
    finally:
        vault.lock()
    print(f"unlock methods: {', '.join(vault.unlock_methods)}")
    return 0
