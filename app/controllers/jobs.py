"""Run blocking work off the GUI thread and hear about it through signals.

Every screen controller owns one :class:`SerialWorker`: a thread pool with a
single, never-expiring thread. One thread, not many, because the objects the
work touches (a :class:`vault.store.Vault`, SQLite connections opened by
``sqlite-utils``) belong to the thread that created them, and because a user's
actions on one screen must happen in the order they were made (lock, then add,
must not race). The result or the exception comes back on the GUI thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.qt import QObject, Qt, QtCore, Signal


class _Relay(QObject):
    """Carries each job's outcome, tagged with its id, to the GUI thread."""

    succeeded = Signal(int, object)
    failed = Signal(int, object)


class _Job(QtCore.QRunnable):
    def __init__(self, job_id: int, fn: Callable[[], Any], relay: _Relay) -> None:
        super().__init__()
        self._id = job_id
        self._fn: Callable[[], Any] | None = fn
        self._relay = relay
        # Python owns the job (kept in SerialWorker._jobs until it reported):
        # Qt deleting a Python-made runnable behind PySide's back is a crash.
        self.setAutoDelete(False)

    def run(self) -> None:
        # The job keeps ``fn`` until SerialWorker drops the job on the GUI
        # thread: the closure may hold the last reference to a controller, and
        # a QObject must not be destroyed on this thread.
        fn = self._fn
        if fn is None:
            return
        try:
            result = fn()
        except Exception as e:  # reported to the GUI through `failed`, never swallowed
            # The traceback holds this worker frame; the GUI thread needs only the error.
            e.__traceback__ = None
            self._relay.failed.emit(self._id, e)
        else:
            self._relay.succeeded.emit(self._id, result)


_Callbacks = tuple[_Job, Callable[[Any], None], Callable[[Exception], None]]


class SerialWorker(QObject):
    """Runs callables one after another on a single worker thread.

    Signals:
        busy_changed: True while at least one job is queued or running.
    """

    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = QtCore.QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        # Keep the one thread alive so thread-bound objects stay usable.
        self._pool.setExpiryTimeout(-1)
        self._relay = _Relay(self)
        # Queued: the callbacks run in the relay's (the GUI) thread.
        self._relay.succeeded.connect(self._succeeded, Qt.ConnectionType.QueuedConnection)
        self._relay.failed.connect(self._failed, Qt.ConnectionType.QueuedConnection)
        self._jobs: dict[int, _Callbacks] = {}
        self._next_id = 0

    @property
    def busy(self) -> bool:
        """Whether a job is queued or running."""
        return bool(self._jobs)

    def submit(
        self,
        fn: Callable[[], Any],
        on_done: Callable[[Any], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        """Run ``fn`` on the worker thread; call back on the GUI thread.

        Args:
            fn: The blocking work. Runs on the worker thread.
            on_done: Receives ``fn``'s return value, on the GUI thread.
            on_error: Receives the exception ``fn`` raised, on the GUI thread.
        """
        self._next_id += 1
        job = _Job(self._next_id, fn, self._relay)
        was_busy = self.busy
        self._jobs[self._next_id] = (job, on_done, on_error)
        if not was_busy:
            self.busy_changed.emit(True)
        self._pool.start(job)

    def _succeeded(self, job_id: int, result: Any) -> None:
        entry = self._jobs.get(job_id)
        if entry is None:
            return
        try:
            entry[1](result)
        finally:
            self._finish(job_id)

    def _failed(self, job_id: int, error: Exception) -> None:
        entry = self._jobs.get(job_id)
        if entry is None:
            return
        try:
            entry[2](error)
        finally:
            self._finish(job_id)

    def _finish(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)
        if not self._jobs:
            self.busy_changed.emit(False)

    def wait(self, msecs: int = -1) -> bool:
        """Block until the queued jobs ran (for shutdown); True if they all did."""
        return bool(self._pool.waitForDone(msecs))


class WorkerController(QObject):
    """A screen's controller whose blocking work runs in order on its own :class:`SerialWorker`.

    Subclasses submit to ``self._worker`` and get :attr:`busy`, :meth:`wait`
    and the ``busy_changed`` signal.

    Signals:
        busy_changed: Whether work is in flight.
    """

    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._worker = SerialWorker(self)
        self._worker.busy_changed.connect(self.busy_changed)

    @property
    def busy(self) -> bool:
        """Whether work is in flight."""
        return self._worker.busy

    def wait(self, msecs: int = -1) -> bool:
        """Block until queued work ran (shutdown and tests)."""
        return self._worker.wait(msecs)
