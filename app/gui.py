"""The desktop app's entry point: ``keyless`` with no arguments.

Builds the services, the controllers and the main window, shows unexpected
errors in a message box (never only on stderr), and on exit stops the agent
and closes its model explicitly before Qt tears down.

Set ``KEYLESS_SCRIPTED_MODEL=FILE`` to run errands with the scripted fake
model (a JSON list of replies) instead of the real one: screenshots and the
end-to-end GUI test use it.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from app.controllers.agent_runner import agent_host_factory, approximate_tokens
from app.controllers.errand_controller import ErrandController, RunnerFactory
from app.controllers.model_controller import ModelController
from app.main_window import MainWindow, PageBuilder
from app.qt import Qt, QtGui, QtWidgets
from app.resources import resource_path
from app.services import AppServices

log = logging.getLogger(__name__)

SCRIPTED_MODEL_ENV = "KEYLESS_SCRIPTED_MODEL"


def app_icon() -> QtGui.QIcon:
    """The Keyless icon (an SVG bundled in ``app/resources``)."""
    return QtGui.QIcon(str(resource_path("keyless.svg")))


def model_spec_for(services: AppServices) -> Any:
    """The ``models.factory.ModelSpec`` the user's settings describe."""
    return services.model_spec()


def extra_pages(services: AppServices, errands: ErrandController) -> list[tuple[str, PageBuilder]]:
    """Builders of the vault, memory, audit and settings screens.

    Each is imported only when built, so a screen that is missing or broken
    shows why in its own tab instead of keeping the app from starting.
    """
    paths = services.paths

    def vault() -> QtWidgets.QWidget:
        from app.controllers.vault_controller import VaultController
        from app.views.vault_view import VaultView

        controller = VaultController(
            paths.vault_file,
            paths.database,
            session_id=errands.current_session,
            auto_lock_minutes=services.settings.auto_lock_minutes,
        )
        errands.currentSessionChanged.connect(controller.set_session_id)
        # Errands redeem capabilities with the vault the user unlocked on this screen.
        controller.vault_opened.connect(services.set_vault)
        return VaultView(controller)

    def memory() -> QtWidgets.QWidget:
        from app.controllers.memory_controller import MemoryController
        from app.views.memory_view import MemoryView

        def service() -> Any:
            workspace = errands.workspace
            if workspace is None:
                raise RuntimeError("choose a workspace on the Chat screen to see its memory")
            return services.memory_service(
                workspace=workspace,
                session_id=errands.current_session,
                # As for errands: no llama.cpp in the GUI host (see agent_runner).
                count_tokens=approximate_tokens,
            )

        def distill_model() -> Any:
            # The model the settings name, in its own process (closed after
            # use): a llama.cpp crash during distillation cannot end the app.
            from models.process import open_isolated

            return open_isolated(model_spec_for(services))

        controller = MemoryController(service, model_factory=distill_model)
        view = MemoryView(controller)
        errands.currentSessionChanged.connect(lambda _: controller.reset_service())
        return view

    def audit() -> QtWidgets.QWidget:
        from app.controllers.audit_controller import AuditController
        from app.views.audit_view import AuditView

        controller = AuditController(services.audit)
        view = AuditView(controller)
        errands.errandFinished.connect(lambda _: controller.refresh())
        return view

    def settings() -> QtWidgets.QWidget:
        from app.controllers.settings_controller import SettingsController
        from app.views.settings_view import SettingsView

        controller = SettingsController(
            paths, services.settings, rule_store_factory=services.rule_store
        )
        return SettingsView(controller)

    return [("Vault", vault), ("Memory", memory), ("Audit", audit), ("Settings", settings)]


def session_closer(services: AppServices, sessions: Any) -> Callable[[str], list[str]]:
    """Close a session as ``keyless sessions close --no-model`` does (on a job thread).

    No model is opened: its notes are promoted into the project's memory as
    they are, so "New session" and quitting never wait for a model to load
    (the Memory screen's "Distill now" merges them with the model).
    """
    from app.sessions import close_session

    def close(session_id: str) -> list[str]:
        return list(close_session(sessions, services, session_id))

    return close


def build_main_window(
    services: AppServices,
    runner_factory: RunnerFactory | None = None,
    *,
    with_extra_pages: bool = True,
) -> MainWindow:
    """Wire services, controllers and the main window together.

    Args:
        services: The host's services.
        runner_factory: Runs errands; defaults to the real agent host (with the
            scripted model when ``$KEYLESS_SCRIPTED_MODEL`` names a file).
        with_extra_pages: Build the vault, memory, audit and settings screens.

    The window's errand controller owns the session store: it closes the
    current session and then the store when the window shuts down.
    """
    from app.sessions import SessionStore, SessionStoreError

    sessions: SessionStore | None
    try:
        sessions = SessionStore(services.paths.database)
    except SessionStoreError as e:
        log.error("sessions are not recorded: %s", e)
        sessions = None
    closer = session_closer(services, sessions) if sessions is not None else None
    if runner_factory is None:
        scripted = os.environ.get(SCRIPTED_MODEL_ENV)
        runner_factory = agent_host_factory(
            services,
            lambda: model_spec_for(services),
            scripted_model=Path(scripted) if scripted else None,
            sessions=sessions,
        )
    errands = ErrandController(
        runner_factory, workspace=services.workspace, sessions=sessions, session_closer=closer
    )
    model = ModelController(services)
    pages = extra_pages(services, errands) if with_extra_pages else []
    window = MainWindow(services, errands, model, pages)
    errands.setParent(window)
    model.setParent(window)
    model.refresh()
    return window


def _install_error_hook() -> None:
    """Show exceptions that escape a slot in a message box, not only on stderr."""
    previous = sys.excepthook

    def hook(
        kind: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        previous(kind, value, tb)
        app = QtWidgets.QApplication.instance()
        if app is None:
            return
        box = QtWidgets.QMessageBox(
            QtWidgets.QMessageBox.Icon.Critical,
            "Keyless: unexpected error",
            f"Something went wrong: {value}\n\nKeyless keeps running; the details below "
            "help a bug report.",
        )
        box.setDetailedText("".join(traceback.format_exception(kind, value, tb)))
        box.exec()

    sys.excepthook = hook


def main(argv: Sequence[str] | None = None) -> int:
    """Open the Keyless window and run until it is closed; return the exit status."""
    logging.basicConfig(level=os.environ.get("KEYLESS_LOG", "WARNING"))
    existing = QtWidgets.QApplication.instance()
    app = existing if isinstance(existing, QtWidgets.QApplication) else None
    if app is None:
        app = QtWidgets.QApplication(list(argv) if argv is not None else sys.argv[:1])
    app.setApplicationName("Keyless")
    app.setOrganizationName("Keyless")
    app.setDesktopFileName("keyless")
    app.setWindowIcon(app_icon())
    app.setStyle("Fusion")
    _install_error_hook()
    services = AppServices()
    window = build_main_window(services)
    window.show()
    # Start where a user starts: typing a task.
    window.chat_view.task_edit.setFocus(Qt.FocusReason.ActiveWindowFocusReason)
    try:
        status = app.exec()
    finally:
        # Stop the agent (and so its model) before Qt tears the widgets down.
        window.shutdown()
        services.close()
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
