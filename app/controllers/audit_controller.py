"""The audit screen's controller: read the log and check its hash chain off the GUI thread."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from app.controllers.jobs import WorkerController
from app.qt import QObject, Signal

if TYPE_CHECKING:
    from vault.audit import AuditEntry, AuditLog


@dataclass(frozen=True)
class AuditRow:
    """One audit entry as the table shows it."""

    entry_id: int
    time: datetime | None
    kind: str
    tool: str
    decision: str
    reason: str
    session_id: str
    details: str = ""


@dataclass(frozen=True)
class ChainResult:
    """The outcome of :meth:`vault.audit.AuditLog.verify`, for display.

    ``status`` is :data:`vault.audit.ChainStatus`: how much the log proves.
    """

    ok: bool
    n_entries: int
    first_bad_id: int | None
    problem: str | None = None
    status: str = "keyed"
    legacy_through: int = 0
    unsealed: int = 0

    @property
    def verified(self) -> bool:
        """Intact and covered by a key the database does not hold."""
        return self.ok and self.status in ("keyed", "empty")

    def describe(self) -> str:
        """A sentence for the user, honest about what the check proves."""
        n = self.n_entries
        if self.status == "rollback":
            return f"ROLLBACK detected: {self.problem}."
        if not self.ok:
            why = f" ({self.problem})" if self.problem else ""
            return (
                f"Hash chain BROKEN at entry {self.first_bad_id}{why}: the log was edited or "
                f"rows were deleted after they were written. {n} entries in the log."
            )
        legacy = (
            f" Entries 1 to {self.legacy_through} predate keying (legacy); the keyed "
            "entries after them cover them."
            if self.legacy_through
            else ""
        )
        texts = {
            "empty": "The audit log is empty.",
            "keyed": f"Verified, keyed: all {n} entries are covered by a key the database "
            f"file does not hold.{legacy}",
            "unsealed": f"Hash chain intact. {self.unsealed} entries were written while the "
            "vault was locked and are not sealed yet: unlock the vault to seal them.",
            "unverified": f"Hash chain intact ({n} entries), but the keyed entries cannot be "
            "checked while the vault is locked: unlock it to verify them.",
            "legacy": f"Hash chain intact: all {n} entries are legacy (written before the log "
            "was keyed); someone with the database file could have rewritten them.",
            "unkeyed": f"Hash chain intact: all {n} entries verified, but UNKEYED (no vault "
            "and no keyring): this catches careless edits, not someone who recomputes the "
            "hashes.",
        }
        return texts.get(self.status, f"Hash chain intact: {n} entries, status {self.status}.")


def _row(entry: AuditEntry) -> AuditRow:
    return AuditRow(
        entry_id=entry.id,
        time=entry.ts,
        kind=entry.kind,
        tool=entry.tool or "",
        decision=entry.decision or "",
        reason=entry.reason or "",
        session_id=entry.session_id or "",
        details=_details_text(entry.details),
    )


def _details_text(details: dict[str, object]) -> str:
    """A one-line summary of an entry's JSON details (secret values never reach the log)."""
    if not details:
        return ""
    if isinstance(details.get("description"), str):
        return str(details["description"])
    parts = []
    for key, value in details.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, sort_keys=True)
        parts.append(f"{key}={value}")
    return ", ".join(parts)


class AuditController(WorkerController):
    """Loads audit entries and the chain check for :class:`app.views.audit_view.AuditView`.

    Signals:
        entries_loaded: A list of :class:`AuditRow`, newest first.
        chain_checked: A :class:`ChainResult`.
        error: A sentence for the user.
        busy_changed: Whether work is in flight.
    """

    entries_loaded = Signal(list)
    chain_checked = Signal(object)
    error = Signal(str)

    def __init__(self, audit_log: AuditLog, *, limit: int = 5000, parent: QObject | None = None):
        super().__init__(parent)
        self._log = audit_log
        self._limit = limit
    def refresh(self) -> None:
        """Reload the entries, then verify the chain."""

        def load() -> list[AuditRow]:
            rows = [_row(e) for e in self._log.entries(limit=self._limit)]
            rows.sort(key=lambda r: r.entry_id, reverse=True)
            return rows

        def check() -> ChainResult:
            result = self._log.verify()
            return ChainResult(
                ok=result.ok,
                n_entries=result.n_entries,
                first_bad_id=result.first_bad_id,
                problem=result.problem,
                status=result.status,
                legacy_through=result.legacy_through,
                unsealed=result.unsealed,
            )

        self._worker.submit(load, self.entries_loaded.emit, self._report)
        self._worker.submit(check, self.chain_checked.emit, self._report)

    def _report(self, error: Exception) -> None:
        self.error.emit(f"Cannot read the audit log: {error}")
