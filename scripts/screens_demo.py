"""Screenshots of the vault, memory, audit and settings screens with realistic content.

    Xvfb :98 -screen 0 1400x900x24 & DISPLAY=:98 .venv/bin/python scripts/screens_demo.py [OUT]

Every screen runs on the real components (vault, broker, grants, audit log,
memory service, rule store, sandbox detection) filled with demo data in a
throwaway directory; nothing of the user's is read or written. Writes
vault.png, vault-setup.png, grant-editor.png, memory.png, audit.png and
settings.png (default: docs/screenshots).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots"
TMP = Path(tempfile.mkdtemp(prefix="keyless-screens-"))
os.environ["KEYLESS_DATA_DIR"] = str(TMP / "data")
os.environ["KEYLESS_CONFIG_DIR"] = str(TMP / "config")
sys.path.insert(0, str(ROOT))

from app.paths import default_paths  # noqa: E402
from app.qt import QtCore, QtWidgets  # noqa: E402

SIZE = (1180, 720)
PASSPHRASE = "demo passphrase 1"


def wait_for(signal: Any, action: Callable[[], None], timeout_ms: int = 30_000) -> None:
    """Run ``action`` and spin the event loop until ``signal`` fires."""
    loop = QtCore.QEventLoop()
    signal.connect(loop.quit)
    QtCore.QTimer.singleShot(timeout_ms, loop.quit)
    action()
    loop.exec()
    signal.disconnect(loop.quit)


def settle(ms: int = 400) -> None:
    loop = QtCore.QEventLoop()
    QtCore.QTimer.singleShot(ms, loop.quit)
    loop.exec()


def shoot(widget: QtWidgets.QWidget, name: str, size: tuple[int, int] = SIZE) -> None:
    widget.resize(*size)
    widget.show()
    settle()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    if not widget.grab().save(str(path)):
        raise OSError(f"could not write {path}")
    print(f"wrote {path}")


def vault_screen(paths: Any, session: str) -> QtWidgets.QWidget:
    from app.controllers.vault_controller import GrantRequest, VaultController
    from app.views.vault_view import VaultView
    from vault.keystore import NoKeyring

    controller = VaultController(
        paths.vault_file, paths.database, keystore=NoKeyring(), session_id=session
    )
    view = VaultView(controller)
    wait_for(controller.state_changed, lambda: None)
    wait_for(
        controller.names_changed,
        lambda: controller.create(use_keyring=False, passphrase=bytearray(PASSPHRASE.encode())),
    )
    for name, value in (("GITHUB_TOKEN", b"ghp_demo"), ("OPENAI_KEY", b"sk-demo"),
                        ("WEATHER_API", b"wx-demo")):
        wait_for(controller.names_changed, lambda n=name, v=value: controller.add_secret(
            n, bytearray(v)))
    now = datetime.now(UTC)
    for secret, host, methods, path, uses, ttl in (
        ("GITHUB_TOKEN", "api.github.com", ("GET", "POST"), "/repos/acme/*", 20, 60),
        ("WEATHER_API", "api.weather.example", ("GET",), "/v1/forecast", None, 0),
        ("OPENAI_KEY", "api.openai.com", ("POST",), "/v1/chat/completions", 5, 30),
    ):
        request = GrantRequest(
            secret_name=secret,
            injection_kind="header" if secret != "WEATHER_API" else "query",
            injection_detail="Authorization: Bearer {}" if secret != "WEATHER_API" else "key",
            methods=methods,
            host=host,
            path_pattern=path,
            expires_at=now + timedelta(minutes=ttl) if ttl else None,
            max_uses=uses,
        )
        wait_for(controller.grants_changed, lambda r=request: controller.create_grant(r))
    last = view.grant_table.rowCount() - 1
    view.grant_table.selectRow(0)
    handle = view.grant_table.item(0, 0).text()
    wait_for(controller.grants_changed, lambda: controller.revoke_grant(handle))
    view.grant_table.selectRow(last)
    view.secret_list.setCurrentRow(0)
    view.show_info("")
    return view


def vault_dialogs(paths: Any) -> None:
    """The first-run setup on a machine without a keyring, and the grant editor."""
    from app.dialogs.grant_editor import GrantEditorDialog
    from app.dialogs.vault_setup import VaultSetupDialog

    setup = VaultSetupDialog(keyring_available=False)
    setup.passphrase.setText(PASSPHRASE)
    setup.confirm.setText(PASSPHRASE)
    shoot(setup, "vault-setup", size=(520, 300))
    grant = GrantEditorDialog(["GITHUB_TOKEN", "OPENAI_KEY", "WEATHER_API"])
    grant.host.setText("api.github.com")
    grant.method_boxes["POST"].setChecked(True)
    grant.path.setText("/repos/acme/*")
    shoot(grant, "grant-editor", size=(560, 400))


def memory_screen(paths: Any, workspace: Path, session: str) -> QtWidgets.QWidget:
    from app.controllers.memory_controller import MemoryController
    from app.views.memory_view import MemoryView
    from memory.frontmatter import Provenance
    from memory.service import MemoryService
    from memory.settings import LevelTokens, MemorySettings

    def make() -> MemoryService:
        return MemoryService(
            user_dir=paths.memory_dir,
            workspace=workspace,
            db_path=paths.database,
            session_id=session,
            count_tokens=lambda text: max(1, len(text) // 4),
            scan_secrets=lambda text: [],
            settings=MemorySettings(capacities=LevelTokens(user=400, project=300, session=200)),
        )

    seed = make()
    user = Provenance(trust="user")
    seed.remember("writing-style", "Answer in short paragraphs. Prefer British spelling.",
                  level="user", source=user)
    seed.remember("tools", "Use `rg` rather than grep. The editor is Helix.", level="user",
                  source=user)
    seed.remember(
        "build",
        "# Build and test\n\n* `make test` runs ruff, mypy and pytest.\n"
        "* Benchmarks live in `bench/`; run them with `make bench`.\n\n"
        "Never push without a **green** `make test`.",
        level="project",
        source=user,
    )
    seed.remember("release", "Tag releases as `vX.Y.Z`; the changelog is in CHANGES.md.",
                  level="project", source=Provenance(trust="model", tool="remember"))
    seed.remember("build", "# Build and test\n\n* `make test` runs ruff, mypy and pytest.\n"
                  "* Benchmarks live in `bench/`; run them with `make bench`.\n\n"
                  "Never push without a **green** `make test`. CI mirrors it.",
                  level="project", source=user)
    seed.remember("today", "Working on the vault screen's grant editor.", level="session",
                  source=Provenance(trust="model", tool="remember"))
    seed.remember("api-limits", "The weather API allows 60 requests a minute.",
                  level="project", source=Provenance(trust="untrusted", tool="http_request"))
    seed.close()

    controller = MemoryController(make, model_factory=lambda: _no_model())
    view = MemoryView(controller)
    wait_for(controller.snapshot_loaded, lambda: None)
    wait_for(controller.topic_loaded, lambda: view.open_topic("project", "build"))
    view.history_list.setCurrentRow(0)
    view.tabs.setCurrentIndex(0)
    return view


def _no_model() -> Any:
    raise RuntimeError("not used for the screenshot")


def audit_screen(paths: Any, session: str) -> QtWidgets.QWidget:
    from app.controllers.audit_controller import AuditController
    from app.views.audit_view import AuditView
    from vault.audit import AuditLog

    log = AuditLog(paths.database)
    for kind, tool, decision, reason in (
        ("decision", "list_dir", "allow", "rule list_dir(*) (default: reads in the workspace)"),
        ("decision", "read_file", "allow", "rule read_file(src/**)"),
        ("decision", "shell", "ask", "no rule decides shell(pytest -q)"),
        ("decision", "shell", "allow", "allowed once by the user"),
        ("decision", "http_request", "ask", "tainted context: network always asks"),
        ("refuse", "http_request", "deny", "host: api.evil.example is not in the grant's scope"),
        ("decision", "shell", "deny", "rule shell(rm -rf *) → deny"),
        ("decision", "write_file", "allow", "allowed for this session"),
    ):
        log.record(kind, session_id=session, tool=tool, decision=decision, reason=reason)
    controller = AuditController(log)
    view = AuditView(controller)
    wait_for(controller.chain_checked, lambda: None)
    return view


def settings_screen(paths: Any, workspace: Path) -> QtWidgets.QWidget:
    from agent.host.policy import Rule, RuleStore
    from app.controllers.settings_controller import SettingsController
    from app.settings import AppSettings, save_settings
    from app.views.settings_view import SettingsView

    settings = AppSettings(workspace=str(workspace), egress_pinned_hosts=["updates.vendor.example"])
    save_settings(paths, settings)
    store = RuleStore(paths.database)
    for tool, pattern, action, scope in (
        ("shell", "rm -rf *", "deny", "user"),
        ("http_request", "domain:*.internal.example", "deny", "user"),
        ("shell", "git push *", "ask", "user"),
        ("write_file", "*", "ask", "user"),
        ("read_file", "*", "allow", "user"),
        ("shell", "git status", "allow", "user"),
        ("shell", "npm run test:*", "allow", "workspace"),
        ("net", "github.com", "allow", "user"),
        ("net", "*.pypi.org, GET", "allow", "user"),
        ("net", "paste.example", "deny", "user"),
    ):
        rule = Rule(tool=tool, pattern=pattern, action=action, scope=scope)
        store.add(rule, workspace=workspace if scope == "workspace" else None)
    store.close()
    from models import kvstate

    states = kvstate.StateStore(paths.kvstate_dir, 0)
    binding = kvstate.Binding("ab" * 32, 4096, "rope=none", kvstate.tokens_digest([1]))
    for session, size in (("s-monday", 38), ("s-deploy", 112), ("s-readme", 9)):
        kvstate.write(states.path_for(session), binding, {}, bytes(size * 1024 * 1024))
    from agent.host.mcpserver.store import McpServerConfig, McpStore
    from app.controllers.mcp_controller import McpController
    from app.services import AppServices

    servers = McpStore(paths.database)
    servers.add(
        McpServerConfig(
            name="github", command="github-mcp-server", args=["stdio"], hosts=["api.github.com"]
        )
    )
    servers.add(McpServerConfig(name="docs", url="https://docs.example.com/mcp"))
    controller = SettingsController(paths, settings)
    view = SettingsView(controller, mcp=McpController(AppServices(paths, settings)))
    wait_for(controller.kv_states_measured, lambda: None)  # queued after the sandbox check
    return view


def main() -> int:
    """Build each screen, let it load, and save its picture."""
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv)
    app.setApplicationName("Keyless")
    paths = default_paths().ensure()
    workspace = TMP / "acme-site"
    workspace.mkdir()
    (workspace / "KEYLESS.md").write_text("# acme-site\n\nStatic site: `make deploy`.\n")
    session = "2026-11-27-errand"
    screens = (
        ("vault", lambda: vault_screen(paths, session)),
        ("memory", lambda: memory_screen(paths, workspace, session)),
        ("audit", lambda: audit_screen(paths, session)),
        ("settings", lambda: settings_screen(paths, workspace)),
    )
    vault_dialogs(paths)
    keep = []
    for name, build in screens:
        widget = build()
        keep.append(widget)
        shoot(widget, name)
    for widget in keep:
        widget.controller.wait()  # type: ignore[attr-defined]
        widget.close()
        widget.deleteLater()
    settle(100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
