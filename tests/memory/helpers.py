"""Helpers shared by the memory tests: a word tokenizer and a fake vault scanner."""

from __future__ import annotations

import re
from collections.abc import Callable

from memory.service import MemoryService

SECRETS = {"GITHUB_TOKEN": "ghp_s3cretvalue123", "CANARY_1": "kl-canary-77f1"}

ServiceFactory = Callable[..., MemoryService]


def count_words(text: str) -> int:
    """A deterministic stand-in tokenizer: one token per word or punctuation run."""
    return len(re.findall(r"\w+|[^\w\s]+", text))


def scan_secrets(text: str) -> list[str]:
    """Names of the fake vault's secrets whose values appear in ``text``."""
    return [name for name, value in SECRETS.items() if value in text]


def all_topic_bodies(*roots: object) -> list[str]:
    """The bodies of every topic file under the given directories (archived included)."""
    from pathlib import Path

    from memory.frontmatter import parse_topic

    bodies = []
    for root in roots:
        for path in sorted(Path(str(root)).rglob("topics/*.md")):
            bodies.append(parse_topic(path.read_text(), fallback_title=path.stem).body)
    return bodies
