"""AppServices: lazy, tolerant construction of the host's services."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.services import AppServices, optional_module
from app.settings import load_settings
from vault.errors import GrantRefused


def test_a_broken_settings_file_falls_back_to_defaults_and_says_so() -> None:
    services = AppServices()
    services.paths.settings_file.write_text('{"model": {"n_ctx": "lots"}}')
    again = AppServices()
    assert again.settings.model.n_ctx == 2048
    assert "settings" in again.problems and "invalid" in again.problems["settings"]
    # The broken file is left for the user to look at until new settings are saved.
    assert services.paths.settings_file.read_text() == '{"model": {"n_ctx": "lots"}}'


def test_set_workspace_checks_and_remembers(workspace: Path, tmp_path: Path) -> None:
    services = AppServices()
    services.set_workspace(workspace)
    assert load_settings(services.paths).workspace == str(workspace.resolve())
    assert load_settings(services.paths).recent_workspaces == [str(workspace.resolve())]
    with pytest.raises(NotADirectoryError, match="not an existing directory"):
        services.set_workspace(tmp_path / "nope")


def test_without_a_vault_the_live_broker_offers_nothing_and_refuses_calls() -> None:
    services = AppServices()
    assert services.vault is None and services.broker is None
    broker = services.live_broker()
    assert broker.capabilities("s1") == []
    assert broker.redact("nothing secret", session_id="s1") == ("nothing secret", [])
    assert broker.scan("text") == []
    stream = broker.redact_stream(session_id="s1")
    assert stream.feed("nothing ") + stream.feed("secret") + stream.finish() == "nothing secret"
    with pytest.raises(GrantRefused, match="no vault exists yet"):
        broker.call("cap_x", object(), session_id="s1", now=None)


def test_the_live_broker_streams_tokens_through_the_vaults_redactor() -> None:
    from vault._crypto import Argon2Params
    from vault.keystore import NoKeyring
    from vault.store import Vault

    services = AppServices()
    key = "sk-live-" + "5d41402abc4b2a76b9719d91"
    vault = Vault.create(
        services.paths.vault_file, passphrase="pw", use_keyring=False, keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64),
    )  # fmt: skip
    vault.add("API_KEY", key.encode())
    vault.lock()
    broker = services.live_broker()  # over the vault as opened from disk: locked
    assert services.vault is not None and services.vault.is_locked
    stream = broker.redact_stream(session_id="s1")
    pieces = ["here is the key you asked for: ", key[:9], key[9:20], key[20:], " (keep it safe)."]
    shown = "".join(stream.feed(p) for p in pieces) + stream.finish()
    assert key[:15] not in shown and key[-15:] not in shown and "WITHHELD" in shown
    assert shown.startswith("here is the ")


def test_the_live_broker_grants_and_revokes_an_mcp_servers_secret() -> None:
    from datetime import UTC, datetime

    from vault._crypto import Argon2Params
    from vault.errors import VaultLockedError
    from vault.grants import CapabilityGrant, HeaderInjection
    from vault.keystore import NoKeyring
    from vault.store import Vault

    grant = CapabilityGrant(
        secret_name="API_KEY", injection=HeaderInjection(header="Authorization",
        template="Bearer {}"), host="api.example.com", session_id="s1/mcp-api",
        approved_by="mcp server api", approved_at=datetime.now(UTC),
    )  # fmt: skip
    services = AppServices()
    with pytest.raises(VaultLockedError, match="no vault is open"):
        services.live_broker().grant(grant)
    assert services.live_broker().revoke("cap_" + "0" * 32) is False
    vault = Vault.create(
        services.paths.vault_file, passphrase="pw", use_keyring=False, keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64),
    )  # fmt: skip
    vault.add("API_KEY", b"sk-live-0123456789abcdef")
    services.set_vault(vault)
    broker = services.live_broker()
    info = broker.grant(grant)
    assert [c.handle for c in broker.capabilities("s1/mcp-api")] == [info.handle]
    assert broker.revoke(info.handle) is True
    assert broker.capabilities("s1/mcp-api") == []


def test_rule_store_is_opened_per_caller(workspace: Path) -> None:
    services = AppServices()
    first, second = services.rule_store(workspace), services.rule_store(workspace)
    try:
        assert first is not second
        assert first.rules(workspace) == []
    finally:
        first.close()
        second.close()


def test_audit_log_is_built_once_and_closed() -> None:
    services = AppServices()
    assert services.audit is services.audit
    services.audit.record("test_event")
    assert [e.kind for e in services.audit.entries()] == ["test_event"]
    services.close()


def test_optional_module_hides_only_a_missing_module() -> None:
    assert optional_module("app.no_such_module") is None
    assert optional_module("app.paths") is not None


def test_remote_model_with_a_key_needs_an_unlocked_vault() -> None:
    from models.factory import ModelSpec
    from models.remote import OpenAIChatModel
    from vault.errors import VaultLockedError

    services = AppServices()
    spec = ModelSpec(
        backend="openai", base_url="http://127.0.0.1:9/v1", model_name="m", allow_local=True
    )
    services.settings.model.remote_key_secret = "SERVER_KEY"
    with pytest.raises(VaultLockedError, match="'SERVER_KEY' is in the vault, which is locked"):
        services.remote_model(spec)
    services.settings.model.remote_key_secret = None
    model = services.remote_model(spec)
    try:
        assert isinstance(model, OpenAIChatModel) and model.info.backend == "openai"
    finally:
        model.close()


def test_memory_capacities_come_from_the_settings(workspace: Path) -> None:
    services = AppServices()
    services.settings.memory.project = 777
    svc = services.memory_service(
        workspace=workspace, session_id="s", count_tokens=lambda t: len(t.split())
    )
    try:
        usage = {u.level: u.capacity for u in svc.capacity_usage()}
        assert usage["project"] == 777
    finally:
        close = getattr(svc, "close", None)
        if close:
            close()


def test_the_unlocked_vault_keys_the_audit_log_and_seals_what_was_written_locked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vault._crypto import Argon2Params
    from vault.keystore import NoKeyring
    from vault.store import Vault

    monkeypatch.setenv("KEYLESS_NO_KEYRING", "1")
    services = AppServices()
    vault = Vault.create(
        services.paths.vault_file, passphrase="pw", use_keyring=False, keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64), idle_timeout=None,
    )
    vault.lock()
    audit = services.audit
    assert audit.mode == "locked"  # the vault file exists but nobody unlocked it
    audit.record("errand_started")
    vault.unlock("pw")
    services.set_vault(vault)
    assert audit.mode == "vault"
    check = audit.verify()
    assert check.ok and check.status == "keyed"
    assert audit.entries(kind="audit.sealed")[0].details["entries"] == 1


def test_protected_paths_and_the_workspace_warning(tmp_path: Path, workspace: Path) -> None:
    services = AppServices()
    protected = services.protected_paths()
    assert services.paths.data_dir in protected and services.paths.config_dir in protected
    assert any(p.name == "keyrings" for p in protected)  # the Secret Service's files
    assert services.workspace_warning(workspace) is None
    inside = services.paths.data_dir / "project"
    inside.mkdir(parents=True)
    assert "lies inside" in (services.workspace_warning(inside) or "")
    holder = Path(os.path.commonpath([services.paths.data_dir, services.paths.config_dir]))
    assert "contains" in (services.workspace_warning(holder) or "")


def test_the_experimental_eviction_setting_reaches_the_model_spec() -> None:
    services = AppServices()
    assert services.model_spec().settings.eviction == "sinks"
    services.paths.settings_file.write_text('{"model": {"eviction": "h2o"}}')
    assert AppServices().model_spec().settings.eviction == "h2o"
    services.paths.settings_file.write_text('{"model": {"eviction": "lru"}}')
    again = AppServices()
    assert again.model_spec().settings.eviction == "sinks"
    assert "eviction" in again.problems["settings"]


def test_a_pinned_host_the_proxy_could_never_match_is_named_in_the_settings_problem() -> None:
    services = AppServices()
    text = '{"auto_lock_minutes": 5, "egress_pinned_hosts": ["https://bank.example/"]}'
    services.paths.settings_file.write_text(text)
    again = AppServices()
    assert "egress_pinned_hosts" in again.problems["settings"]
    assert "pin a host name, not a URL" in again.problems["settings"]
    assert services.paths.settings_file.read_text() == text  # left for the user to correct
    services.paths.settings_file.write_text(
        '{"egress_pinned_hosts": ["Bank.Example.", "bank.example", "[::1]"]}'
    )
    assert load_settings(services.paths).egress_pinned_hosts == ["bank.example", "::1"]


def test_errands_get_the_egress_proxy_with_the_users_pinned_hosts() -> None:
    services = AppServices()
    services.settings.egress_pinned_hosts = ["bank.example"]
    settings = services.egress_settings()
    assert settings is not None and settings.pinned_hosts == ("bank.example",)
    broker = services.live_broker()  # no vault yet: nothing to redact, no handle usable
    assert broker.egress_redactor("s1") is None
    with pytest.raises(GrantRefused, match="no vault exists yet"):
        broker.redeem_egress("cap_" + "0" * 32, method="GET", url="https://x.example/",
                             session_id="s1", command="curl")


def test_closing_the_services_stops_the_shared_egress_proxy() -> None:
    from agent.host.egress.proxy import EgressProxy, EgressRequest, EgressVerdict

    class Hooks:
        def decide(self, request: EgressRequest) -> EgressVerdict:
            return EgressVerdict(False, "test")

        def record(self, kind: str, **fields: object) -> None:
            return None

    services = AppServices()
    proxy = EgressProxy(Hooks(), services.live_broker(), session_id="s1")
    proxy.start()
    server = proxy._server
    assert server is not None and server.running
    proxy.close()
    assert server.running  # kept for the next session
    services.close()
    assert not server.running
