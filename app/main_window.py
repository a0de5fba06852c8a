"""The main window: one tab per screen, the permission prompt, persistence.

Screens that another part of the app provides (vault, memory, audit,
settings) are built defensively: when one cannot be built, its tab says why
instead of the whole window failing. Window geometry, the tab shown and the
splitters are kept in a QSettings INI file in the config dir, so a second
launch opens where the first one closed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.controllers.errand_controller import ErrandController, PermissionQuestion
from app.controllers.model_controller import ModelController
from app.dialogs.permission import PermissionDialog, UnsandboxedDialog, dialog_for
from app.qt import Qt, QtCore, QtGui, QtWidgets, Slot
from app.services import AppServices
from app.settings import SettingsError
from app.views.chat_view import ChatView
from app.views.model_view import ModelView
from app.widgets.banner import Banner
from app.widgets.question import ask_yes_no

log = logging.getLogger(__name__)

WINDOW_STATE_FILE = "window.ini"

PageBuilder = Callable[[], QtWidgets.QWidget]


def window_settings(services: AppServices) -> QtCore.QSettings:
    """The QSettings file (INI, in the config dir) that keeps the window's state."""
    path = services.paths.config_dir / WINDOW_STATE_FILE
    return QtCore.QSettings(str(path), QtCore.QSettings.Format.IniFormat)


class UnavailablePage(QtWidgets.QWidget):
    """Stands in for a screen that could not be built, and says why."""

    def __init__(self, title: str, reason: str, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("unavailablePage")
        self.reason = reason
        heading = QtWidgets.QLabel(f"<h2>{title} is not available</h2>")
        text = QtWidgets.QLabel(reason)
        text.setObjectName("unavailableReason")
        text.setWordWrap(True)
        text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(heading)
        layout.addWidget(text)
        layout.addStretch(1)


class LazyPage(QtWidgets.QWidget):
    """Holds a tab's place and builds the real screen the first time it is shown.

    Building a screen imports its packages and opens its stores; doing that on
    first use keeps the first window paint fast.
    """

    def __init__(
        self,
        title: str,
        builder: PageBuilder,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.title = title
        self._builder: PageBuilder | None = builder
        self.page: QtWidgets.QWidget | None = None
        self.setObjectName(f"lazyPage{title}")
        self._layout = QtWidgets.QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)

    def build(self) -> QtWidgets.QWidget:
        """Build the screen now (once) and return it."""
        if self.page is None:
            builder, self._builder = self._builder, None
            assert builder is not None
            try:
                page = builder()
            except Exception as e:  # the tab explains; the rest of the app works
                log.exception("the %s screen could not be built", self.title)
                page = UnavailablePage(self.title, f"{type(e).__name__}: {e}")
            self.page = page
            self._layout.addWidget(page)
            self.setFocusProxy(page)
        return self.page

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        """Build on first show."""
        self.build()
        super().showEvent(event)


class MainWindow(QtWidgets.QMainWindow):
    """The Keyless window.

    Args:
        services: The host's services (paths, settings, problems found at start).
        errand_controller: Runs errands (the chat screen and permission prompts).
        model_controller: The model screen's controller.
        extra_pages: ``(title, builder)`` for the other screens, built when first
            shown and replaced by an :class:`UnavailablePage` when a builder fails.
        parent: The Qt parent.
    """

    def __init__(
        self,
        services: AppServices,
        errand_controller: ErrandController,
        model_controller: ModelController,
        extra_pages: list[tuple[str, PageBuilder]] | None = None,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.services = services
        self.errands = errand_controller
        self.model = model_controller
        self.permission_dialog: PermissionDialog | UnsandboxedDialog | None = None
        self._closing_done = False
        self.quit_question: QtWidgets.QMessageBox | None = None
        self.setObjectName("mainWindow")
        self.setWindowTitle("Keyless")
        self.resize(1180, 780)

        self.banner = Banner()
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.setObjectName("mainTabs")
        self.tabs.setDocumentMode(True)
        self.chat_view = ChatView(errand_controller, list(services.settings.recent_workspaces))
        self.model_view = ModelView(model_controller)
        self.tabs.addTab(self.chat_view, "&Chat")
        self.tabs.addTab(self.model_view, "&Model")
        self.pages: dict[str, QtWidgets.QWidget] = {
            "Chat": self.chat_view,
            "Model": self.model_view,
        }
        self.lazy_pages: dict[str, LazyPage] = {}
        for title, builder in extra_pages or []:
            lazy = LazyPage(title, builder)
            self.lazy_pages[title] = lazy
            self.tabs.addTab(lazy, title)

        central = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(central)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.banner)
        layout.addWidget(self.tabs, 1)
        self.setCentralWidget(central)

        self.isolation_label = QtWidgets.QLabel()
        self.isolation_label.setObjectName("isolationStatus")
        self.model_label = QtWidgets.QLabel()
        self.model_label.setObjectName("modelStatus")
        self.statusBar().addWidget(self.model_label, 1)
        self.statusBar().addPermanentWidget(self.isolation_label)
        self._build_menus()

        errand_controller.permissionRequested.connect(self.ask_permission)
        errand_controller.errandFinished.connect(self._withdraw_question)
        errand_controller.isolationReported.connect(self._on_isolation)
        errand_controller.statsUpdated.connect(model_controller.update_stats)
        errand_controller.contextUpdated.connect(model_controller.update_context)
        errand_controller.modelLoaded.connect(model_controller.update_loaded)
        model_controller.modelDescribed.connect(
            lambda name, detail: self.model_label.setText(f"Model: {name}")
        )
        self.chat_view.workspaceChosen.connect(self._remember_workspace)
        self.chat_view.moveToVaultRequested.connect(self._move_to_vault)

        available, detail = services.sandbox_status()
        self._on_isolation(available, detail)
        if services.problems:
            self.banner.show_message(
                "Some parts of Keyless could not start:\n"
                + "\n".join(f"• {name}: {why}" for name, why in services.problems.items()),
                "warning",
            )
        self.restore_state()

    # -- construction ----------------------------------------------------------------

    def page(self, title: str) -> QtWidgets.QWidget:
        """The screen called ``title``, built now if it was not yet shown.

        Raises:
            KeyError: No such screen.
        """
        if title in self.pages:
            return self.pages[title]
        return self.lazy_pages[title].build()

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        new_action = file_menu.addAction("&New session")
        new_action.setShortcut(QtGui.QKeySequence("Ctrl+Shift+N"))
        new_action.triggered.connect(self._new_session)
        file_menu.addSeparator()
        quit_action = file_menu.addAction("&Quit")
        quit_action.setShortcut(QtGui.QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)

        view_menu = self.menuBar().addMenu("&View")
        for index in range(self.tabs.count()):
            title = self.tabs.tabText(index).replace("&", "")
            action = view_menu.addAction(title)
            action.setShortcut(QtGui.QKeySequence(f"Ctrl+{index + 1}"))
            action.triggered.connect(lambda _=False, i=index: self.show_tab(i))

        help_menu = self.menuBar().addMenu("&Help")
        about = help_menu.addAction("&About Keyless")
        about.triggered.connect(self._about)

    def show_tab(self, index: int) -> None:
        """Show the tab at ``index`` and give its first control the focus."""
        self.tabs.setCurrentIndex(index)
        widget = self.tabs.currentWidget()
        if widget is not None:
            widget.setFocus(Qt.FocusReason.ShortcutFocusReason)
            widget.focusNextChild()

    # -- permission prompts ------------------------------------------------------------

    @Slot(object)
    def ask_permission(self, question: object) -> None:
        """Show the permission dialog for ``question``; its answer goes to the controller."""
        assert isinstance(question, PermissionQuestion)
        dialog = dialog_for(question, self)
        self.permission_dialog = dialog

        def answered(reply: object) -> None:
            from app.controllers.errand_controller import PermissionReply

            assert isinstance(reply, PermissionReply)
            self.errands.answer_permission(question.call_id, reply)
            self.permission_dialog = None
            dialog.deleteLater()

        dialog.answered.connect(answered)
        self.tabs.setCurrentWidget(self.chat_view)
        self.raise_()
        self.activateWindow()
        dialog.open()

    @Slot(str)
    def _withdraw_question(self, session_id: str) -> None:
        """The errand ended (e.g. cancelled) while its question was still open."""
        dialog, self.permission_dialog = self.permission_dialog, None
        if dialog is not None:
            dialog.dismiss()
            dialog.deleteLater()

    # -- status ------------------------------------------------------------------------

    @Slot(bool, str)
    def _on_isolation(self, isolated: bool, detail: str) -> None:
        if isolated:
            self.isolation_label.setText("OS isolation: on")
            self.isolation_label.setStyleSheet("color: #1b7f3b;")
        else:
            self.isolation_label.setText("⚠ OS isolation: OFF")
            self.isolation_label.setStyleSheet("color: #b00020; font-weight: bold;")
        self.isolation_label.setToolTip(detail)
        self.isolation_label.setAccessibleName(self.isolation_label.text() + ": " + detail)

    @Slot(str)
    def _remember_workspace(self, folder: str) -> None:
        try:
            self.services.set_workspace(Path(folder))
        except (NotADirectoryError, SettingsError) as e:
            self.banner.show_message(f"The workspace choice was not saved: {e}", "error")
            return
        warning = self.services.workspace_warning(Path(folder))
        if warning is not None:
            self.banner.show_message(warning, "warning")

    @Slot(object)
    def _move_to_vault(self, offer: object) -> None:
        """Hand a withheld credential to the vault screen, which stores and grants it."""
        from app.withheld import CredentialOffer

        assert isinstance(offer, CredentialOffer)
        lazy = self.lazy_pages.get("Vault")
        page = lazy.build() if lazy is not None else None
        importer = getattr(page, "import_secret", None)
        if lazy is None or not callable(importer):
            offer.discard()
            reason = (
                page.reason if isinstance(page, UnavailablePage) else "not part of this window"
            )
            self.banner.show_message(
                f"The credential cannot be moved: the vault screen is not available ({reason}).",
                "error",
            )
            return
        notice = offer.notice
        self.tabs.setCurrentWidget(lazy)
        importer(
            notice.name,
            offer.take_value(),
            note=f"Found in {notice.where} ({notice.kind}) and withheld from the agent.",
        )

    @Slot()
    def _new_session(self) -> None:
        self.tabs.setCurrentWidget(self.chat_view)
        try:
            self.errands.new_session()
        except RuntimeError as e:
            self.banner.show_message(f"{e}.", "warning")

    @Slot()
    def _about(self) -> None:
        QtWidgets.QMessageBox.about(
            self,
            "About Keyless",
            "<b>Keyless</b><br>A local model runs errands on your machine without "
            "holding your keys: it gets capability vouchers, never secrets.",
        )

    # -- persistence -----------------------------------------------------------------

    def restore_state(self) -> None:
        """Restore geometry, the tab and splitters saved by the last launch."""
        qs = window_settings(self.services)
        geometry = qs.value("window/geometry")
        if isinstance(geometry, QtCore.QByteArray | bytes):
            self.restoreGeometry(QtCore.QByteArray(geometry))
        state = qs.value("window/state")
        if isinstance(state, QtCore.QByteArray | bytes):
            self.restoreState(QtCore.QByteArray(state))
        for name, splitter in self._splitters().items():
            value = qs.value(f"splitters/{name}")
            if isinstance(value, QtCore.QByteArray | bytes):
                splitter.restoreState(QtCore.QByteArray(value))
        tab = qs.value("window/tab", 0)
        try:
            index = int(str(tab))
        except ValueError:
            index = 0
        if 0 <= index < self.tabs.count():
            self.tabs.setCurrentIndex(index)

    def save_state(self) -> None:
        """Write geometry, the tab and splitters to the window state file."""
        qs = window_settings(self.services)
        qs.setValue("window/geometry", self.saveGeometry())
        qs.setValue("window/state", self.saveState())
        qs.setValue("window/tab", self.tabs.currentIndex())
        for name, splitter in self._splitters().items():
            qs.setValue(f"splitters/{name}", splitter.saveState())
        qs.sync()
        if qs.status() != QtCore.QSettings.Status.NoError:
            log.error("could not save the window state to %s", qs.fileName())

    def _splitters(self) -> dict[str, QtWidgets.QSplitter]:
        return {"chat": self.chat_view.splitter, "chatMain": self.chat_view.main_splitter}

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        """Ask before stopping a running errand; then save state and shut down.

        The question is window-modal and non-blocking (``open``, not ``exec``):
        no nested event loop, so nothing else waits on it.
        """
        if self.errands.busy and not self._closing_done:
            event.ignore()
            if self.quit_question is None:
                self.quit_question = ask_yes_no(
                    self,
                    "Quit Keyless?",
                    "An errand is running. Stop it and quit?",
                    self._quit_answered,
                )
            return
        self.shutdown()
        event.accept()

    def _quit_answered(self, yes: bool) -> None:
        self.quit_question = None
        if yes:
            self.shutdown()
            self.close()

    def shutdown(self) -> None:
        """Save the window state and stop every controller (closes the model). Idempotent."""
        if self._closing_done:
            return
        self._closing_done = True
        self.save_state()
        self._withdraw_question("")
        self.errands.shutdown()
        self.model.shutdown()
        built = [lazy.page for lazy in self.lazy_pages.values() if lazy.page is not None]
        for page in [*self.pages.values(), *built]:
            controller: Any = getattr(page, "controller", None)
            waiter = getattr(controller, "wait", None)
            if callable(waiter) and controller not in (self.errands, self.model):
                try:
                    waiter(5000)
                except Exception:  # shutting down goes on; the failure is logged
                    log.exception("waiting for a controller at exit failed")
