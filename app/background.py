"""Run blocking work off the GUI thread and hear back through signals.

Controllers use :class:`JobRunner` for disk, keyring, network and model work:
the function runs on a thread pool, and its result, its exception or its
progress reports arrive in the GUI thread as queued signals of a :class:`Job`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from app.qt import QObject, QtCore, Signal

log = logging.getLogger(__name__)

Progress = Callable[[Any], None]


class Job(QObject):
    """One piece of background work; its signals arrive in the GUI thread."""

    succeeded = Signal(object)
    failed = Signal(object)
    progressed = Signal(object)
    finished = Signal()

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.setObjectName(f"job:{name}")

    def report(self, value: Any) -> None:
        """Report progress (called from the worker thread)."""
        try:
            self.progressed.emit(value)
        except RuntimeError:  # the controller is gone (shutdown): nobody to tell
            log.debug("progress of job %s after its controller was deleted", self.name)


class _Runnable(QtCore.QRunnable):
    def __init__(self, job: Job, fn: Callable[[Progress], Any]) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self._job = job
        self._fn = fn

    def run(self) -> None:
        job = self._job
        try:
            try:
                result = self._fn(job.report)
            except Exception as e:
                # Delivered to the controller, which shows it to the user.
                log.debug("job %s failed", job.name, exc_info=True)
                job.failed.emit(e)
            else:
                job.succeeded.emit(result)
            finally:
                job.finished.emit()
        except RuntimeError:
            # The controller (and so the job's signals) went away at shutdown
            # while this ran: nobody is left to tell.
            log.debug("job %s finished after its controller was deleted", job.name)


class JobRunner(QObject):
    """A small private thread pool that keeps its jobs alive until they finish.

    Args:
        max_threads: How many jobs may run at once.
        parent: The Qt parent.
    """

    def __init__(self, max_threads: int = 2, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = QtCore.QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads)
        self._jobs: set[Job] = set()

    def submit(
        self,
        name: str,
        fn: Callable[[Progress], Any],
        *,
        on_success: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_progress: Callable[[Any], None] | None = None,
    ) -> Job:
        """Run ``fn(report)`` on the pool; callbacks run in the GUI thread."""
        job = Job(name)
        if on_success is not None:
            job.succeeded.connect(on_success)
        if on_error is not None:
            job.failed.connect(on_error)
        if on_progress is not None:
            job.progressed.connect(on_progress)
        self._jobs.add(job)
        job.finished.connect(lambda: self._jobs.discard(job))
        self._pool.start(_Runnable(job, fn))
        return job

    @property
    def active(self) -> int:
        """Jobs submitted and not yet finished."""
        return len(self._jobs)

    def wait(self, timeout_ms: int = 30_000) -> bool:
        """Wait for every running job (at shutdown). True when all finished."""
        return bool(self._pool.waitForDone(timeout_ms))
