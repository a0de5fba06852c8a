"""The main window: tabs, the permission prompt end to end, persistence, errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.controllers.agent_runner import agent_host_factory
from app.controllers.errand_controller import ErrandController
from app.controllers.model_controller import ModelController
from app.dialogs.permission import PermissionDialog
from app.gui import build_main_window
from app.main_window import MainWindow, UnavailablePage, window_settings
from app.qt import Qt, QtCore, QtWidgets
from app.services import AppServices

# The offscreen platform warns that it cannot propagate size hints or raise windows.
pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("propagateSizeHints", "support raise")]


def no_gpu(_: object) -> tuple[bool, str]:
    return False, "CPU-only build (test)"


@pytest.fixture
def make_window(qtbot: Any) -> Iterator[Callable[..., MainWindow]]:
    windows: list[MainWindow] = []

    def make(
        services: AppServices | None = None,
        factory: Any = None,
        pages: list[tuple[str, Any]] | None = None,
    ) -> MainWindow:
        services = services or AppServices()
        errands = ErrandController(factory or (lambda ctx: None), workspace=services.workspace)
        model = ModelController(services, gpu_probe=no_gpu)
        w = MainWindow(services, errands, model, pages or [])
        qtbot.add_widget(w)
        windows.append(w)
        return w

    yield make
    for w in windows:
        w.shutdown()


def test_keyless_opens_every_screen(qtbot: Any) -> None:
    services = AppServices()
    window = build_main_window(services, runner_factory=lambda ctx: None)
    qtbot.add_widget(window)
    try:
        window.show()
        qtbot.wait_exposed(window)
        titles = [window.tabs.tabText(i).replace("&", "") for i in range(window.tabs.count())]
        assert titles == ["Chat", "Model", "Vault", "Memory", "Audit", "Settings"]
        assert window.windowTitle() == "Keyless"
        # The other screens are built when first shown, which keeps start-up fast.
        assert all(lazy.page is None for lazy in window.lazy_pages.values())
        for index, title in enumerate(("Vault", "Memory", "Audit", "Settings"), start=2):
            window.show_tab(index)
            page = window.lazy_pages[title].page
            assert page is not None
            reason = page.reason if isinstance(page, UnavailablePage) else ""
            assert not isinstance(page, UnavailablePage), f"{title}: {reason}"
    finally:
        window.shutdown()


def test_a_screen_that_fails_says_why(make_window: Callable[..., MainWindow]) -> None:
    def broken() -> QtWidgets.QWidget:
        raise RuntimeError("the vault file is not readable")

    w = make_window(pages=[("Vault", broken)])
    page = w.page("Vault")
    assert isinstance(page, UnavailablePage)
    assert "the vault file is not readable" in page.reason
    assert w.tabs.count() == 3


def test_startup_problems_show_in_a_banner(
    make_window: Callable[..., MainWindow], tmp_path: Path
) -> None:
    services = AppServices()
    services.paths.settings_file.write_text("{not json")
    broken = AppServices()
    assert "settings" in broken.problems
    w = make_window(broken)
    assert "settings" in w.banner.text()
    assert w.banner.severity == "warning"


def test_geometry_tab_and_splitters_persist(
    qtbot: Any, make_window: Callable[..., MainWindow]
) -> None:
    services = AppServices()
    first = make_window(services)
    first.show()
    qtbot.wait_exposed(first)
    first.resize(770, 540)
    first.tabs.setCurrentIndex(1)
    first.chat_view.main_splitter.setSizes([150, 700])
    sizes = first.chat_view.main_splitter.sizes()
    size = first.size()
    first.close()
    assert (services.paths.config_dir / "window.ini").is_file()
    assert window_settings(services).value("window/tab") in (1, "1")

    second = make_window(AppServices())
    second.show()
    qtbot.wait_exposed(second)
    assert second.tabs.currentIndex() == 1
    assert second.size() == size
    # The session list keeps its width; the chat pane takes what is left once shown.
    second.tabs.setCurrentIndex(0)
    qtbot.wait_until(lambda: second.chat_view.main_splitter.sizes()[0] == sizes[0], timeout=2000)


def test_workspace_choice_is_saved(
    make_window: Callable[..., MainWindow], workspace: Path
) -> None:
    w = make_window()
    w.chat_view.choose_workspace(str(workspace))
    assert AppServices().settings.workspace == str(workspace.resolve())


def test_keyboard_shortcuts_switch_tabs(qtbot: Any, make_window: Callable[..., MainWindow]) -> None:
    w = make_window()
    w.show()
    qtbot.wait_exposed(w)
    w.show_tab(1)
    assert w.tabs.currentWidget() is w.model_view
    shortcuts = [a.shortcut().toString() for a in w.menuBar().actions()[1].menu().actions()]
    assert shortcuts == ["Ctrl+1", "Ctrl+2"]


# -- the full errand through the GUI with the real host and the scripted agent ---------------


def scripted(tmp_path: Path, *replies: dict[str, Any]) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps([json.dumps(r) for r in replies]))
    return path


WRITE = {"tool": "write_file", "arguments": {"path": "notes.txt", "content": "hello"}}


def host_window(
    make_window: Callable[..., MainWindow], tmp_path: Path, workspace: Path,
    sent: list[bytes], *replies: dict[str, Any],
) -> MainWindow:
    services = AppServices()
    services.set_workspace(workspace)
    factory = agent_host_factory(
        services,
        lambda: None,
        scripted_model=scripted(tmp_path, *replies),
        host_options={"transcript": lambda d, line: sent.append(line) if d == "sent" else None},
    )
    return make_window(services, factory)


def test_errand_through_the_gui_deny_reaches_the_agent(
    qtbot: Any, make_window: Callable[..., MainWindow], tmp_path: Path, workspace: Path
) -> None:
    sent: list[bytes] = []
    w = host_window(make_window, tmp_path, workspace, sent, WRITE, {"final": "I left it."})
    w.show()
    qtbot.wait_exposed(w)
    w.chat_view.task_edit.setPlainText("write hello into notes.txt")
    w.chat_view.run_task()
    qtbot.wait_until(lambda: w.permission_dialog is not None, timeout=60_000)
    dialog = w.permission_dialog
    assert isinstance(dialog, PermissionDialog)
    assert dialog.isModal() and dialog.isVisible()
    assert '"path": "notes.txt"' in dialog.arguments_view.toPlainText()
    assert dialog.rule_edit.text() == "write_file(notes.txt)"
    qtbot.keyClicks(dialog.reason_edit, "not today")
    with qtbot.wait_signal(w.errands.answerReady, timeout=60_000):
        qtbot.keyClick(dialog.reason_edit, Qt.Key.Key_Return)  # Enter = Deny, the default
    assert not (workspace / "notes.txt").exists()
    assert any(b"not today" in line for line in sent)
    rows = w.chat_view.tool_rows()
    assert rows[0][0] == "write_file" and rows[0][2] == "deny: not today"
    assert "Keyless: I left it." in w.chat_view.transcript.toPlainText()


def test_errand_through_the_gui_always_allow_saves_the_rule(
    qtbot: Any, make_window: Callable[..., MainWindow], tmp_path: Path, workspace: Path
) -> None:
    sent: list[bytes] = []
    w = host_window(make_window, tmp_path, workspace, sent, WRITE, {"final": "Written."})
    w.chat_view.task_edit.setPlainText("write hello into notes.txt")
    w.chat_view.run_task()
    qtbot.wait_until(lambda: w.permission_dialog is not None, timeout=60_000)
    dialog = w.permission_dialog
    assert isinstance(dialog, PermissionDialog)
    dialog.rule_edit.setText("write_file(*.txt)")
    with qtbot.wait_signal(w.errands.answerReady, timeout=60_000):
        qtbot.mouseClick(dialog.always_button, Qt.MouseButton.LeftButton)
    assert (workspace / "notes.txt").read_text() == "hello"
    store = w.services.rule_store(workspace)
    try:
        assert [str(r) for r in store.rules(workspace)] == ["write_file(*.txt)"]
    finally:
        store.close()


@pytest.mark.model
@pytest.mark.slow
def test_real_app_runs_one_errand_with_the_embedded_model(
    qtbot: Any, make_window: Callable[..., MainWindow], workspace: Path
) -> None:
    """The app as `keyless` builds it, with the real embedded model in the agent process."""
    from agent.protocol import ErrandLimits
    from app.gui import model_spec_for

    (workspace / "README.md").write_text("# demo\n\nA demo project.\n")
    services = AppServices()
    services.set_workspace(workspace)
    # Only the limits differ from `keyless`: a 135M model may wander, the test must end.
    factory = agent_host_factory(
        services,
        lambda: model_spec_for(services),
        host_options={"limits": ErrandLimits(max_steps=2, max_tokens_per_step=96)},
    )
    w = make_window(services, factory)
    w.show()
    qtbot.wait_exposed(w)
    asked: list[object] = []

    def deny_everything(q: object) -> None:
        asked.append(q)
        dialog = w.permission_dialog
        assert dialog is not None
        dialog.reason_edit.setText("this is a test")
        dialog.deny_button.click()

    w.errands.permissionRequested.connect(deny_everything, Qt.ConnectionType.QueuedConnection)
    tokens: list[str] = []
    w.errands.tokenReceived.connect(tokens.append)
    w.chat_view.task_edit.setPlainText("List the files in the workspace.")
    with qtbot.wait_signal(w.errands.errandFinished, timeout=240_000):
        w.chat_view.run_task()
    assert tokens, "the model streamed nothing"
    kinds = [k for k, _ in w.errands.session(w.errands.current_session).transcript]
    assert kinds[0] == "task"
    assert kinds[-1] in ("final", "error"), kinds
    assert w.chat_view.run_button.isEnabled()
    assert w.model.last_stats.get("n_generated", 0) >= len(tokens) > 0


def test_a_cancelled_errand_withdraws_its_open_question(
    qtbot: Any, make_window: Callable[..., MainWindow], tmp_path: Path, workspace: Path
) -> None:
    sent: list[bytes] = []
    w = host_window(make_window, tmp_path, workspace, sent, WRITE, {"final": "never"})
    w.chat_view.task_edit.setPlainText("write hello into notes.txt")
    w.chat_view.run_task()
    qtbot.wait_until(lambda: w.permission_dialog is not None, timeout=60_000)
    dialog = w.permission_dialog
    assert dialog is not None
    with qtbot.wait_signal(w.errands.errandFinished, timeout=60_000):
        w.errands.cancel()
    assert w.permission_dialog is None and not dialog.isVisible()
    assert not (workspace / "notes.txt").exists()


def test_closing_during_an_errand_asks_without_blocking(
    qtbot: Any, make_window: Callable[..., MainWindow], tmp_path: Path, workspace: Path
) -> None:
    from app.qt import QtWidgets

    sent: list[bytes] = []
    w = host_window(make_window, tmp_path, workspace, sent, WRITE, {"final": "never"})
    w.show()
    qtbot.wait_exposed(w)
    w.chat_view.task_edit.setPlainText("write hello into notes.txt")
    w.chat_view.run_task()
    qtbot.wait_until(lambda: w.permission_dialog is not None, timeout=60_000)
    assert w.errands.busy
    w.close()  # returns at once: the question is window-modal, not a nested loop
    box = w.quit_question
    assert box is not None and box.isVisible() and w.isVisible()
    box.button(QtWidgets.QMessageBox.StandardButton.No).click()
    qtbot.wait_until(lambda: w.quit_question is None)
    assert w.isVisible() and w.errands.busy
    w.close()
    box = w.quit_question
    assert box is not None
    box.button(QtWidgets.QMessageBox.StandardButton.Yes).click()
    qtbot.wait_until(lambda: not w.isVisible(), timeout=30_000)
    assert not (workspace / "notes.txt").exists()  # the pending write never ran


# -- a credential withheld from the agent, moved into the vault and granted -----------------

TOKEN = "ghp_" + "Zq3Vb8Nm1Lk4Jh7Gf2Ds5Ap9Ow6Ie0Ru3Ty8"
PASSPHRASE = "correct horse battery"
READ_ENV = {"tool": "read_file", "arguments": {"path": ".env"}}


def vault_page(services: AppServices, errands: ErrandController) -> QtWidgets.QWidget:
    """The vault screen as app.gui builds it, with a cheap KDF and no OS keyring."""
    from app.controllers.vault_controller import VaultController
    from app.views.vault_view import VaultView
    from vault._crypto import Argon2Params
    from vault.keystore import NoKeyring

    controller = VaultController(
        services.paths.vault_file,
        services.paths.database,
        session_id=errands.current_session,
        keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64),
    )
    errands.currentSessionChanged.connect(controller.set_session_id)
    return VaultView(controller)


def window_reading_env(
    qtbot: Any, make_window: Callable[..., MainWindow], tmp_path: Path, workspace: Path
) -> MainWindow:
    """A window whose errand reads a .env holding a GitHub token (asked, allowed once)."""
    (workspace / ".env").write_text(f"DEBUG=1\nSECRET_TOKEN={TOKEN}\n")
    services = AppServices()
    services.set_workspace(workspace)
    factory = agent_host_factory(
        services, lambda: None,
        scripted_model=scripted(tmp_path, READ_ENV, {"final": "It holds a token."}),
    )
    errands = ErrandController(factory, workspace=services.workspace)
    model = ModelController(services, gpu_probe=no_gpu)
    w = MainWindow(services, errands, model, [("Vault", lambda: vault_page(services, errands))])
    qtbot.add_widget(w)
    w.show()
    qtbot.wait_exposed(w)
    errands.permissionRequested.connect(
        lambda q: QtCore.QTimer.singleShot(0, lambda: click(qtbot, w.permission_dialog.once_button))
    )
    with qtbot.wait_signal(errands.credentialFound, timeout=60_000) as found:
        w.chat_view.task_edit.setPlainText("what is in .env?")
        w.chat_view.run_task()
    qtbot.wait_signal(errands.errandFinished, timeout=60_000).wait()
    notice = found.args[0]
    assert notice.name == "SECRET_TOKEN" and notice.where == ".env:2"
    return w


def click(qtbot: Any, button: QtWidgets.QAbstractButton) -> None:
    assert button.isVisible() and button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def dialog_ok(dialog: QtWidgets.QDialog) -> QtWidgets.QPushButton:
    box = dialog.findChild(QtWidgets.QDialogButtonBox)
    assert box is not None
    for role in (
        QtWidgets.QDialogButtonBox.StandardButton.Ok,
        QtWidgets.QDialogButtonBox.StandardButton.Save,
    ):
        button = box.button(role)
        if button is not None:
            return button
    raise AssertionError("no OK button")


def test_a_withheld_credential_is_offered_then_stored_in_a_new_vault_and_granted(
    qtbot: Any, make_window: Callable[..., MainWindow], tmp_path: Path, workspace: Path
) -> None:
    from app.dialogs.grant_editor import GrantEditorDialog
    from app.dialogs.secret_editor import SecretEditorDialog
    from app.dialogs.vault_setup import VaultSetupDialog
    from app.views.vault_view import VaultView
    from vault.grants import GrantStore
    from vault.keystore import NoKeyring
    from vault.store import Vault

    w = window_reading_env(qtbot, make_window, tmp_path, workspace)
    [banner] = w.chat_view.offer_banners.values()
    assert banner.isVisible()
    assert banner.text() == (
        "A credential (GitHub token) in .env:2 was withheld from the agent. "
        "Move SECRET_TOKEN into the vault?"
    )
    transcript = w.chat_view.transcript.toPlainText()
    assert TOKEN not in transcript
    assert "[WITHHELD: a credential (GitHub token) at .env:2" in transcript

    # No vault yet: the setup flow comes first.
    click(qtbot, banner.action_button)
    assert w.chat_view.offer_banners == {} and w.errands.pending_offers() == []
    view = w.page("Vault")
    assert isinstance(view, VaultView) and w.tabs.currentWidget() is w.lazy_pages["Vault"]
    qtbot.wait_until(lambda: isinstance(view.active_dialog, VaultSetupDialog), timeout=10_000)
    setup = view.active_dialog
    assert isinstance(setup, VaultSetupDialog)
    qtbot.keyClicks(setup.passphrase, PASSPHRASE)
    qtbot.keyClicks(setup.confirm, PASSPHRASE)
    click(qtbot, dialog_ok(setup))

    # Then the secret editor, pre-filled and masked.
    qtbot.wait_until(lambda: isinstance(view.active_dialog, SecretEditorDialog), timeout=10_000)
    editor = view.active_dialog
    assert isinstance(editor, SecretEditorDialog)
    assert editor.name.text() == "SECRET_TOKEN"
    assert editor.value.echoMode() == QtWidgets.QLineEdit.EchoMode.Password
    assert editor.value.text() == TOKEN
    assert ".env:2" in editor.note.text() and TOKEN not in editor.note.text()
    click(qtbot, dialog_ok(editor))
    assert editor.value.text() == ""

    # Then the grant editor for that secret, for this session.
    qtbot.wait_until(lambda: isinstance(view.active_dialog, GrantEditorDialog), timeout=10_000)
    grant = view.active_dialog
    assert isinstance(grant, GrantEditorDialog)
    assert grant.secret.currentText() == "SECRET_TOKEN"
    qtbot.keyClicks(grant.host, "api.github.com")
    with qtbot.wait_signal(view.controller.grant_created, timeout=10_000) as created:
        click(qtbot, dialog_ok(grant))

    vault = Vault.open(services_vault(w), keystore=NoKeyring())
    vault.unlock(PASSPHRASE)
    assert bytes(vault.get("SECRET_TOKEN")) == TOKEN.encode()
    record = GrantStore(w.services.paths.database).get(created.args[0])
    assert record is not None and record.grant.secret_name == "SECRET_TOKEN"
    assert record.grant.session_id == w.errands.current_session


def services_vault(w: MainWindow) -> Path:
    return w.services.paths.vault_file


def test_a_dismissed_offer_leaves_nothing_behind(
    qtbot: Any, make_window: Callable[..., MainWindow], tmp_path: Path, workspace: Path
) -> None:
    w = window_reading_env(qtbot, make_window, tmp_path, workspace)
    [banner] = w.chat_view.offer_banners.values()
    click(qtbot, banner.dismiss_button)
    assert w.chat_view.offer_banners == {} and w.errands.pending_offers() == []
    assert w.lazy_pages["Vault"].page is None  # nothing was opened
    assert not w.services.paths.vault_file.exists()


def test_closing_the_window_closes_the_session_and_then_the_store(
    qtbot: Any, tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.gui import SCRIPTED_MODEL_ENV
    from app.paths import default_paths
    from app.sessions import SessionStore, SessionStoreError
    from memory.frontmatter import Provenance
    from tests.agent.hostkit import final, write_script

    script = write_script(tmp_path / "script.json", [final("Noted.")])
    monkeypatch.setenv(SCRIPTED_MODEL_ENV, str(script))
    services = AppServices()
    services.set_workspace(workspace)
    window = build_main_window(services, with_extra_pages=False)
    qtbot.add_widget(window)
    store = window.errands.store
    assert store is not None
    try:
        window.chat_view.task_edit.setPlainText("note the build quirk")
        with qtbot.wait_signal(window.errands.errandFinished, timeout=60_000):
            window.chat_view.run_task()
        session = window.errands.current_session
        memory = services.memory_service(workspace=workspace, session_id=session,
                                         count_tokens=lambda t: len(t) // 4 + 1)
        try:
            memory.remember("Build quirk", "make needs GNU make 4.", level="session",
                            source=Provenance(tool="remember", trust="model"))
        finally:
            memory.close()
        assert window.close()
        with pytest.raises(SessionStoreError):
            store.sessions()
    finally:
        window.shutdown()
        services.close()
    reopened = SessionStore(default_paths().database)
    try:
        assert reopened.session(session).state == "closed"
    finally:
        reopened.close()
    topic = workspace / ".keyless" / "memory" / "topics" / "build-quirk.md"
    assert "make needs GNU make 4." in topic.read_text()
