"""Find credentials the vault does not know in tool results, and withhold them.

The broker's redaction removes the secrets the vault holds; most users' first
secrets live elsewhere (a workspace ``.env``, a ``~/.npmrc`` quoted by a
command, a token echoed in an HTTP body). :func:`withhold` scans a tool result
line by line with Yelp's ``detect-secrets`` plugins (known key formats: AWS,
GitHub, Slack, JWT, private keys, Stripe, ...; its keyword detector), plus
the few rules it lacks (``github_pat_``, ``sk-``/``sk-ant-`` API keys, and
high-entropy values assigned to names like ``*TOKEN*`` or ``*PASSWORD*``), and
replaces each line that holds one with a stub naming the file and line.

It lives in ``vault/`` because it is a redaction step: the agent process
never imports ``vault/`` (beyond the handle type), so it can neither load nor
bypass it. The detector's process-wide settings are configured once, under a
lock, and only this module uses them.

What was found comes back as :class:`Finding` objects whose value never shows
in a repr: the host hands it only to the user's offer to move it into the
vault.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vault.errors import SecretScanError

log = logging.getLogger(__name__)

MAX_LINE_CHARS = 4096
"""Longer lines are scanned in pieces of this size (minified files, base64 blobs)."""

#: detect-secrets plugins used. IP addresses are no credential, and Base64/Hex
#: entropy over any quoted string flags digests and test vectors in ordinary
#: code: entropy is judged here only for values assigned to credential names.
_PLUGINS: tuple[str, ...] = (
    "ArtifactoryDetector",
    "AWSKeyDetector",
    "AzureStorageKeyDetector",
    "BasicAuthDetector",
    "CloudantDetector",
    "DiscordBotTokenDetector",
    "GitHubTokenDetector",
    "GitLabTokenDetector",
    "IbmCloudIamDetector",
    "IbmCosHmacDetector",
    "JwtTokenDetector",
    "KeywordDetector",
    "MailchimpDetector",
    "NpmDetector",
    "OpenAIDetector",
    "PrivateKeyDetector",
    "PypiTokenDetector",
    "SendGridDetector",
    "SlackDetector",
    "SoftlayerDetector",
    "SquareOAuthDetector",
    "StripeDetector",
    "TelegramBotTokenDetector",
    "TwilioKeyDetector",
)

#: detect-secrets' heuristic filters that drop what only looks like a secret.
_FILTERS: tuple[str, ...] = (
    "detect_secrets.filters.heuristic.is_indirect_reference",
    "detect_secrets.filters.heuristic.is_likely_id_string",
    "detect_secrets.filters.heuristic.is_potential_uuid",
    "detect_secrets.filters.heuristic.is_sequential_string",
    "detect_secrets.filters.heuristic.is_templated_secret",
    "detect_secrets.filters.heuristic.is_not_alphanumeric_string",
    "detect_secrets.filters.heuristic.is_prefixed_with_dollar_sign",
)

#: Formats detect-secrets 1.5 does not know: (kind, pattern).
_EXTRA_FORMATS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("GitHub token", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}")),
    ("Anthropic API key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}")),
    ("OpenAI-style API key", re.compile(r"\bsk-(?!ant-)(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}")),
    ("Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),
)

#: ``NAME=value``, ``NAME: value``, ``export NAME="value"``, ``"name": "value"``.
_ASSIGNMENT = re.compile(
    r"""^(?P<lead>\s*(?:export\s+)?["']?(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)["']?\s*(?::=|=|:)\s*)
        (?P<value>.*?)\s*,?\s*$""",
    re.VERBOSE,
)
_CREDENTIAL_NAME = re.compile(
    r"(?i)(key|token|secret|passw(or)?d|pwd|credential|auth|api_?key|private)"
)
_PLAIN_VALUE = re.compile(r"""^["']?(?P<v>[A-Za-z0-9+/=_\-.~@!#%^*]{8,})["']?$""")
_WORD = re.compile(r"^[A-Za-z_]+$")
_DOTTED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_KINDS = {
    "Secret Keyword": "password or secret",
    "Base64 High Entropy String": "high-entropy string",
    "Hex High Entropy String": "high-entropy string",
}
ENTROPY_LIMIT = 3.0
"""Shannon entropy (bits per character) a value assigned to a credential name must reach."""


@dataclass(frozen=True)
class Finding:
    """One credential found in a tool result.

    Attributes:
        source: Where it was (a workspace path, "shell output", "HTTP body").
        line: Its line in ``source`` (1-based).
        kind: What it looks like ("GitHub token", "private key", ...).
        name: The name it was assigned to (``SECRET_TOKEN``), if any.
        value: The credential itself; never in a repr, a log or an event's text.
    """

    source: str
    line: int
    kind: str
    name: str | None
    value: str = field(repr=False)

    @property
    def location(self) -> str:
        """``source:line``."""
        return f"{self.source}:{self.line}"

    def describe(self) -> dict[str, Any]:
        """The finding without its value (for the audit log and events)."""
        return {"file": self.source, "line": self.line, "kind": self.kind, "name": self.name}


def stub(finding: Finding) -> str:
    """What the agent sees in place of the line holding ``finding``."""
    return (
        f"[WITHHELD: a credential ({finding.kind}) at {finding.location} "
        "— ask the user to store it in the vault]"
    )


def withhold(text: str, *, source: str, first_line: int = 1) -> tuple[str, list[Finding]]:
    """Scan ``text`` for credentials; return it with each holding line replaced by a stub.

    On an assignment (``NAME=value``) the name stays visible and only the
    value is replaced; a private-key block is replaced as a whole.

    Args:
        text: A tool result (file text, command output, HTTP body).
        source: Where it came from, named in the stub.
        first_line: The line number of the first line of ``text`` in ``source``.

    Returns:
        The text to show the agent, and what was withheld (in line order).

    Raises:
        SecretScanError: The detector failed; the caller must withhold the
            whole result (the message carries no text of it).
    """
    lines = text.split("\n")
    findings: list[Finding] = []
    out: list[str] = []
    i = 0
    try:
        while i < len(lines):
            line = lines[i]
            number = first_line + i
            if _PRIVATE_KEY_BEGIN.search(line):
                end = _block_end(lines, i)
                value = "\n".join(lines[i : end + 1])
                found = Finding(source, number, "private key", None, value)
                findings.append(found)
                out.append(stub(found))
                i = end + 1
                continue
            hit = _scan_line(line)
            if hit is None:
                out.append(line)
            else:
                kind, name, value, lead = hit
                found = Finding(source, number, kind, name, value)
                findings.append(found)
                out.append(lead + stub(found))
            i += 1
    except SecretScanError:
        raise
    except Exception as e:  # noqa: BLE001 - any detector failure must withhold, never leak
        raise SecretScanError(f"the credential scan failed ({type(e).__name__})") from e
    return "\n".join(out), findings


# --------------------------------------------------------------------------- internals

_PRIVATE_KEY_BEGIN = re.compile(
    r"-----BEGIN[ A-Z0-9]*PRIVATE KEY( BLOCK)?-----|PuTTY-User-Key-File-\d+:"
)
_PRIVATE_KEY_END = re.compile(r"-----END[ A-Z0-9]*PRIVATE KEY( BLOCK)?-----|Private-MAC:")

_setup_lock = threading.Lock()
_detector: _Detector | None = None


class _Detector:
    """detect-secrets' plugins and filters, configured once for this process."""

    def __init__(self) -> None:
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
        from detect_secrets.plugins.keyword import DENYLIST_REGEX
        from detect_secrets.settings import get_filters, get_plugins, get_settings

        # Its loggers would name skipped candidates; nothing of a result is logged.
        logging.getLogger("detect-secrets").setLevel(logging.CRITICAL)
        plugin_classes: list[type] = list(get_mapping_from_secret_type_to_class().values())
        known = {c.__name__ for c in plugin_classes}
        settings = get_settings()
        settings.clear()
        settings.configure_plugins([{"name": n} for n in _PLUGINS if n in known])
        settings.configure_filters([{"path": p} for p in _FILTERS])
        get_plugins.cache_clear()
        get_filters.cache_clear()
        plugins = list(get_plugins())
        self.keyword = [p for p in plugins if type(p).__name__ == "KeywordDetector"]
        self.formats = [p for p in plugins if type(p).__name__ != "KeywordDetector"]
        # Only the heuristics chosen here: the file filters always on in its
        # settings would judge the made-up file name, not the line.
        self.filters = [f for f in get_filters() if f.path in _FILTERS]
        # The keyword detector is the slow one; it only fires near one of its words.
        self.keyword_hint = re.compile(DENYLIST_REGEX, re.IGNORECASE)

    def find(self, line: str) -> list[tuple[str, str]]:
        """(kind, matched value) for each detect-secrets finding on ``line``."""
        found: list[tuple[str, str]] = []
        plugins: Sequence[Any] = self.formats
        if self.keyword_hint.search(line):
            plugins = [*self.formats, *self.keyword]
        for plugin in plugins:
            for secret in plugin.analyze_line(
                filename="tool-result", line=line, line_number=1, context=None
            ):
                value = str(secret.secret_value or "")
                if value and not self._filtered(value, line, plugin):
                    found.append((str(secret.type), value))
        return found

    def _filtered(self, value: str, line: str, plugin: Any) -> bool:
        from detect_secrets.util.inject import call_function_with_arguments

        for fn in self.filters:
            try:
                if call_function_with_arguments(
                    fn, secret=value, line=line, plugin=plugin, filename="tool-result"
                ):
                    return True
            except TypeError:
                continue  # a filter that needs what a line scan has not (a file's context)
        return False


def _get_detector() -> _Detector:
    global _detector
    with _setup_lock:
        if _detector is None:
            _detector = _Detector()
        return _detector


def _scan_line(line: str) -> tuple[str, str | None, str, str] | None:
    """(kind, name, value, kept lead) when ``line`` holds a credential, else None."""
    if len(line) < 8:
        return None
    assignment = _ASSIGNMENT.match(line[:MAX_LINE_CHARS])
    name = assignment.group("name") if assignment else None
    for kind, pattern in _EXTRA_FORMATS:
        m = pattern.search(line)
        if m:
            return kind, name, m.group(0), _lead(assignment, m.group(0))
    detector = _get_detector()
    for start in range(0, len(line), MAX_LINE_CHARS):
        piece = line[start : start + MAX_LINE_CHARS]
        for kind, matched in detector.find(piece):
            if kind == "Secret Keyword" and _WORD.match(matched):
                continue  # secret_name="KEY", kind: "header": a name, not a password
            value = _full_token(piece, matched)
            if assignment and matched in assignment.group("value"):
                value = _unquote(assignment.group("value"))
            return _KINDS.get(kind, kind), name, value, _lead(assignment, matched)
    if assignment and _CREDENTIAL_NAME.search(assignment.group("name")):
        plain = _PLAIN_VALUE.match(assignment.group("value"))
        if plain and _looks_random(plain.group("v")):
            return "value of a credential name", name, plain.group("v"), assignment.group("lead")
    return None


def _lead(assignment: re.Match[str] | None, matched: str) -> str:
    """The part of an assignment line kept visible: its name, when the value holds the match."""
    if assignment and matched in assignment.group("value"):
        return assignment.group("lead")
    return ""


def _looks_random(value: str) -> bool:
    if _DOTTED_NAME.match(value) or value.startswith(("$", "%", "<", "{")):
        return False
    if not (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)):
        return False
    return _entropy(value) >= ENTROPY_LIMIT


def _entropy(value: str) -> float:
    counts: Counter[str] = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _full_token(line: str, matched: str) -> str:
    """The whitespace- and quote-delimited token of ``line`` that holds ``matched``.

    Some detectors report only a prefix of what they matched (``ghp``).
    """
    at = line.find(matched)
    if at < 0:
        return matched
    stops = " \t\"'`,;()[]{}<>"
    start = at
    while start > 0 and line[start - 1] not in stops:
        start -= 1
    end = at + len(matched)
    while end < len(line) and line[end] not in stops:
        end += 1
    token = line[start:end]
    # "Authorization: Bearer x" / "password=x": the part after the last = or :
    for sep in ("=", ":"):
        head, _, tail = token.rpartition(sep)
        if head and len(tail) >= len(matched) and matched in tail:
            token = tail
    return token


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _block_end(lines: Sequence[str], start: int) -> int:
    for j in range(start, min(len(lines), start + 200)):
        if _PRIVATE_KEY_END.search(lines[j]):
            return j
    return len(lines) - 1


__all__ = ["ENTROPY_LIMIT", "Finding", "stub", "withhold"]
