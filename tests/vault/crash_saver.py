"""Child process for the crash-safety test: saves the vault in a loop until killed.

Usage: ``python crash_saver.py VAULT PASSPHRASE``. After each completed save
it prints the counter value it just saved, so the parent knows that this
value (or a later one) must survive a SIGKILL.
"""

from __future__ import annotations

import os
import sys

from vault.keystore import NoKeyring
from vault.store import Vault


def main() -> None:
    path, passphrase = sys.argv[1], sys.argv[2]
    vault = Vault.open(path, keystore=NoKeyring(), idle_timeout=None)
    vault.unlock(passphrase)
    counter = int(vault.get("counter").decode())
    while True:
        counter += 1
        vault.update("counter", str(counter).encode())
        # Grow and shrink the file so a torn write could not pass for a whole one.
        if "churn" in vault:
            vault.delete("churn")
        else:
            vault.add("churn", os.urandom(4096))
        print(counter, flush=True)


if __name__ == "__main__":
    main()
