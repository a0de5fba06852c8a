"""``keyless vault``: create, unlock and edit the encrypted vault from a terminal.

Secret values and passphrases are never taken from the command line (they
would land in shell history and ``ps``): they are prompted for without echo
on a terminal, or read from standard input when it is a pipe: one line per
passphrase asked, then the rest of the input is the value (one trailing
newline dropped), so scripts can feed both without an argument.

Subcommands: ``init``, ``unlock-check`` (alias ``unlock``), ``add NAME``,
``update NAME``, ``list``, ``delete NAME`` (alias ``rm``), ``passwd``,
``rotate``, ``backup PATH``, ``keyring on|off``. Other packages may add
commands to the same group: a module listed in :data:`EXTENSION_MODULES`
exposing ``register_vault_commands(subparsers)`` is picked up if present.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vault._crypto import Argon2Params
    from vault.keystore import KeyStore
    from vault.store import Vault

EXTENSION_MODULES: tuple[str, ...] = ("app.cli_vault_grants",)

Handler = Callable[[argparse.Namespace, "_Terminal"], int]


class _Terminal:
    """Where prompts go and where secrets come from (a TTY without echo, or a pipe)."""

    def __init__(self) -> None:
        self.interactive = sys.stdin.isatty()

    def say(self, message: str) -> None:
        print(message, file=sys.stderr)

    def passphrase(self, prompt: str, *, confirm: bool = False) -> str:
        """Read a passphrase; with ``confirm`` a terminal user types it twice."""
        if not self.interactive:
            # The binary layer only: a text-layer read-ahead would swallow the value.
            raw = sys.stdin.buffer.readline()
            if not raw:
                raise _UsageError("expected a passphrase on standard input")
            try:
                return raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise _UsageError("the passphrase on standard input is not UTF-8") from e
        first = getpass.getpass(prompt)
        if confirm and getpass.getpass("Repeat it: ") != first:
            raise _UsageError("the two passphrases differ")
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


class _UsageError(Exception):
    """A problem with what the user typed (not a vault error)."""


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
    init.set_defaults(func=_wrap(_init))

    check = commands.add_parser(
        "unlock-check", aliases=["unlock"], help="unlock the vault to check it opens"
    )
    check.add_argument(
        "--accept-rollback",
        action="store_true",
        help="accept a vault file older than the keyring expects (you restored an old copy)",
    )
    check.set_defaults(func=_wrap(_unlock_check))

    add = commands.add_parser("add", help="store a new secret (value prompted or from stdin)")
    add.add_argument("name")
    add.set_defaults(func=_wrap(_add))

    update = commands.add_parser("update", help="replace a secret's value")
    update.add_argument("name")
    update.set_defaults(func=_wrap(_update))

    listing = commands.add_parser("list", help="list the secret names (never values)")
    listing.set_defaults(func=_wrap(_list))

    delete = commands.add_parser("delete", aliases=["rm"], help="delete a secret")
    delete.add_argument("name")
    delete.set_defaults(func=_wrap(_delete))

    passwd = commands.add_parser("passwd", help="set or change the passphrase")
    passwd.add_argument(
        "--remove", action="store_true", help="remove the passphrase (keyring must stay enabled)"
    )
    _add_kdf_options(passwd)
    passwd.set_defaults(func=_wrap(_passwd))

    rotate = commands.add_parser("rotate", help="replace the data key and re-encrypt everything")
    rotate.set_defaults(func=_wrap(_rotate))

    backup = commands.add_parser("backup", help="export an encrypted copy under its own passphrase")
    backup.add_argument("path", type=Path)
    _add_kdf_options(backup)
    backup.set_defaults(func=_wrap(_backup))

    keyring_cmd = commands.add_parser("keyring", help="enable or disable the OS keyring method")
    keyring_cmd.add_argument("state", choices=["on", "off"])
    keyring_cmd.set_defaults(func=_wrap(_keyring))

    for name in EXTENSION_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register_vault_commands(commands)


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
    from vault._crypto import Argon2Params
    from vault.keystore import DEFAULT_ARGON2, calibrate_argon2

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
        raise _UsageError(f"invalid key derivation settings: {e}") from e
    return params


def _wrap(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from vault.errors import VaultError

        terminal = _Terminal()
        try:
            return handler(args, terminal)
        except (VaultError, _UsageError) as e:
            terminal.say(f"keyless vault: {e}")
            return 1
        except KeyboardInterrupt:
            terminal.say("keyless vault: interrupted, nothing changed")
            return 130

    return run


def _vault_path(args: argparse.Namespace) -> Path:
    if args.vault is not None:
        return Path(args.vault)
    from app.paths import default_paths

    return default_paths().ensure().vault_file


def _keystore() -> KeyStore:
    from vault.keystore import default_keystore

    return default_keystore()


def _open_unlocked(
    args: argparse.Namespace, terminal: _Terminal, *, accept_rollback: bool = False
) -> tuple[Vault, str | None]:
    """Open and unlock the vault: the keyring first, then the passphrase.

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


def _init(args: argparse.Namespace, terminal: _Terminal) -> int:
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
        raise _UsageError(NO_KEYRING_MESSAGE + "; run again without --keyring")
    want_passphrase = args.passphrase or not use_keyring
    if not args.passphrase and not use_keyring:
        raise _UsageError("without an OS keyring the vault needs a passphrase")
    if path.exists():  # before asking for a passphrase that would be wasted
        raise _UsageError(f"a vault already exists at {path}")
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


def _unlock_check(args: argparse.Namespace, terminal: _Terminal) -> int:
    vault, _ = _open_unlocked(args, terminal, accept_rollback=args.accept_rollback)
    count = len(vault.names())
    rollback = "on" if vault.rollback_protected else "off (no OS keyring)"
    vault.lock()
    print(
        f"vault unlocked: {count} secret{'s' if count != 1 else ''}; "
        f"unlock methods: {', '.join(vault.unlock_methods)}; rollback detection: {rollback}"
    )
    return 0


def _add(args: argparse.Namespace, terminal: _Terminal) -> int:
    return _store_value(args, terminal, update=False)


def _update(args: argparse.Namespace, terminal: _Terminal) -> int:
    return _store_value(args, terminal, update=True)


def _store_value(args: argparse.Namespace, terminal: _Terminal, *, update: bool) -> int:
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
    terminal: _Terminal | None = None,
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
        _UsageError: A new secret's name is taken, or the input is unusable.
    """
    from vault import _crypto

    terminal = terminal or _Terminal()
    read = value if callable(value) else None
    data = None if callable(value) else value
    try:
        vault, _ = _open_unlocked(argparse.Namespace(vault=vault_file), terminal)
        try:
            if not update and name in vault:
                raise _UsageError(f"a secret named {name!r} already exists; use 'update'")
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
            _crypto.zero(data)


def _list(args: argparse.Namespace, terminal: _Terminal) -> int:
    vault, _ = _open_unlocked(args, terminal)
    names = vault.names()
    vault.lock()
    for name in names:
        print(name)
    return 0


def _delete(args: argparse.Namespace, terminal: _Terminal) -> int:
    vault, _ = _open_unlocked(args, terminal)
    try:
        vault.delete(args.name)
    finally:
        vault.lock()
    print(f"deleted {args.name}")
    return 0


def _passwd(args: argparse.Namespace, terminal: _Terminal) -> int:
    vault, _ = _open_unlocked(args, terminal)
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


def _rotate(args: argparse.Namespace, terminal: _Terminal) -> int:
    vault, passphrase = _open_unlocked(args, terminal)
    try:
        if "passphrase" in vault.unlock_methods and passphrase is None:
            passphrase = terminal.passphrase("Vault passphrase (to re-wrap the new key): ")
        vault.rotate_data_key(passphrase=passphrase)
        count = len(vault.names())
    finally:
        vault.lock()
    print(f"data key rotated; {count} secret{'s' if count != 1 else ''} re-encrypted")
    return 0


def _backup(args: argparse.Namespace, terminal: _Terminal) -> int:
    target = Path(args.path)
    if target.exists():
        raise _UsageError(f"a file already exists at {target}")
    vault, _ = _open_unlocked(args, terminal)
    try:
        passphrase = terminal.passphrase("Backup passphrase: ", confirm=True)
        vault.export_backup(target, passphrase, kdf=_kdf(args))
    finally:
        vault.lock()
    print(f"encrypted backup written to {target} (opens with its own passphrase only)")
    return 0


def _keyring(args: argparse.Namespace, terminal: _Terminal) -> int:
    vault, _ = _open_unlocked(args, terminal)
    try:
        if args.state == "on":
            vault.enable_keyring()
        else:
            vault.disable_keyring()
    finally:
        vault.lock()
    print(f"unlock methods: {', '.join(vault.unlock_methods)}")
    return 0
