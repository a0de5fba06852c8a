"""Where Keyless keeps its files.

Per user: the platform data dir (``~/.local/share/keyless`` on Linux) holds
``vault.kls``, ``keyless.db``, ``memory/``, ``models/`` and ``kvstate/``. Every path can be
redirected with ``KEYLESS_DATA_DIR`` / ``KEYLESS_CONFIG_DIR`` (tests, portable
installs). Other packages never look paths up themselves: the host passes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "keyless"


@dataclass(frozen=True)
class AppPaths:
    """The per-user locations of Keyless's files."""

    data_dir: Path
    config_dir: Path

    @property
    def vault_file(self) -> Path:
        """The encrypted vault."""
        return self.data_dir / "vault.kls"

    @property
    def database(self) -> Path:
        """SQLite: audit log, rules, grants, memory history and index."""
        return self.data_dir / "keyless.db"

    @property
    def memory_dir(self) -> Path:
        """User-level memory (``USER.md`` and ``topics/``)."""
        return self.data_dir / "memory"

    @property
    def models_dir(self) -> Path:
        """Downloaded GGUF files."""
        return self.data_dir / "models"

    @property
    def kvstate_dir(self) -> Path:
        """Sessions' saved KV state (one directory per session) and the model hashes."""
        return self.data_dir / "kvstate"

    @property
    def settings_file(self) -> Path:
        """The app's settings (JSON)."""
        return self.config_dir / "settings.json"

    def ensure(self) -> AppPaths:
        """Create the directories (private to the user) and return self."""
        for directory in (self.data_dir, self.config_dir, self.memory_dir, self.models_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self


def default_paths() -> AppPaths:
    """Return the paths for this user, honouring the ``KEYLESS_*`` overrides."""
    data = os.environ.get("KEYLESS_DATA_DIR") or platformdirs.user_data_dir(APP_NAME)
    config = os.environ.get("KEYLESS_CONFIG_DIR") or platformdirs.user_config_dir(APP_NAME)
    return AppPaths(data_dir=Path(data), config_dir=Path(config))
