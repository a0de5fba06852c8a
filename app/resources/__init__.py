"""Files the desktop app ships with (the icon)."""

from __future__ import annotations

from pathlib import Path

RESOURCE_DIR = Path(__file__).resolve().parent


def resource_path(name: str) -> Path:
    """Return the path of a bundled resource file.

    Raises:
        FileNotFoundError: No resource of that name is bundled.
    """
    path = RESOURCE_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"bundled resource {name!r} is missing from {RESOURCE_DIR}")
    return path
