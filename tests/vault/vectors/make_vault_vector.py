"""Build the known-answer vault file ``vault_v1.kls`` deterministically.

Run ``python tests/vault/vectors/make_vault_vector.py`` to rewrite the stored
vector (only when the format version changes: the test pins the bytes).
Randomness comes from a SHA-256 counter stream instead of ``os.urandom``; the
parameters and expected contents are in ``vault_v1.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC_FILE = HERE / "vault_v1.json"
VECTOR_FILE = HERE / "vault_v1.kls"


class CounterStream:
    """Deterministic stand-in for os.urandom: SHA-256(seed || counter) blocks."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        return out[:n]


@contextmanager
def deterministic_random(seed: bytes) -> Iterator[None]:
    from vault import _crypto

    saved = _crypto.random_bytes
    _crypto.random_bytes = CounterStream(seed)
    try:
        yield
    finally:
        _crypto.random_bytes = saved


def load_spec() -> dict:  # type: ignore[type-arg]
    return json.loads(SPEC_FILE.read_text())


def build(path: Path) -> None:
    """Replay the spec's operations with deterministic randomness into ``path``."""
    from vault._crypto import Argon2Params
    from vault.keystore import NoKeyring
    from vault.store import Vault

    spec = load_spec()
    kdf = Argon2Params(**spec["kdf"])
    with deterministic_random(bytes.fromhex(spec["seed"])):
        vault = Vault.create(
            path, passphrase=spec["passphrase"], use_keyring=False, keystore=NoKeyring(), kdf=kdf,
            idle_timeout=None,
        )
        for op in spec["operations"]:
            if op["op"] == "add":
                vault.add(op["name"], op["value"].encode())
            elif op["op"] == "update":
                vault.update(op["name"], op["value"].encode())
            elif op["op"] == "delete":
                vault.delete(op["name"])
            else:
                raise ValueError(op)
        vault.lock()


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[2]))
    VECTOR_FILE.unlink(missing_ok=True)
    build(VECTOR_FILE)
    print(f"wrote {VECTOR_FILE} ({VECTOR_FILE.stat().st_size} bytes)")
