"""The agent process's OS isolation, probed with the exact command line the host uses.

A probe program is wrapped by :meth:`AgentHost.agent_command` (the same
bubblewrap arguments, binds and hidden paths as the worker gets) and started
with the scrubbed environment; it reports what it can reach.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.host.errand import AgentHost
from agent.host.policy import PolicyEngine
from agent.host.sandbox import Sandbox, scrubbed_env
from tests.agent.hostkit import ScriptedAnswerer, final, make_rig

PROBE = r"""
import json, os, socket, sys
vault, port, workspace = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {}
def attempt(name, fn):
    try:
        out[name] = ("ok", fn())
    except Exception as e:
        out[name] = ("refused", type(e).__name__)
attempt("vault", lambda: len(open(vault, "rb").read()))
attempt("home", lambda: sorted(os.listdir(sys.argv[4])))
attempt("workspace", lambda: os.listdir(workspace))
attempt("loopback", lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close())
attempt("dns", lambda: socket.getaddrinfo("pypi.org", 443)[0][4][0])
attempt("run", lambda: [p for p in os.listdir("/run") if p])
attempt("host_init_environ", lambda: open("/proc/1/environ", "rb").read().decode("latin-1"))
out["env"] = sorted(os.environ)
out["uid_home"] = os.environ.get("HOME")
print(json.dumps(out))
"""

needs_bwrap = pytest.mark.skipif(not Sandbox.detect().available, reason="bubblewrap unavailable")


@pytest.fixture
def listener() -> Iterator[int]:
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join()
    srv.close()


def host_for(workspace: Path, *, isolate: bool, hidden: tuple[Path, ...] = ()) -> AgentHost:
    return AgentHost(
        None,
        workspace=workspace,
        broker=None,
        memory=None,
        policy=PolicyEngine(),
        prompt=ScriptedAnswerer(),
        audit=None,
        session_id="s",
        isolate=isolate,
        hidden_paths=hidden,
    )


def probe(host: AgentHost, vault: Path, port: int, workspace: Path) -> dict[str, object]:
    home = str(Path.home().resolve())
    argv = host.agent_command(
        [sys.executable, "-I", "-c", PROBE, str(vault), str(port), str(workspace), home]
    )
    done = subprocess.run(
        argv, env=scrubbed_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("KEYLESS_TEST_API_KEY", "sk-should-never-be-seen")
    return "KEYLESS_TEST_API_KEY"


@pytest.mark.bwrap
@needs_bwrap
def test_the_isolated_agent_cannot_read_the_vault_or_reach_the_network(
    tmp_path: Path, workspace: Path, listener: int, secret_env: str
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    vault = data_dir / "vault.kls"
    vault.write_bytes(b"KLSV encrypted bytes")
    host = host_for(workspace, isolate=True, hidden=(data_dir,))
    seen = probe(host, vault, listener, workspace)
    assert seen["vault"][0] == "refused"  # type: ignore[index]
    # The home directory shows at most the directories that lead to the
    # read-only Python installation (pyenv lives under $HOME on this machine).
    home = Path.home().resolve()
    leads = {
        Path(p).resolve().relative_to(home).parts[0]
        for p in (sys.base_prefix, sys.prefix, Path(__file__).parents[2])
        if Path(p).resolve().is_relative_to(home)
    }
    status, listing = seen["home"]  # type: ignore[misc]
    assert status == "refused" or set(listing) <= leads
    assert seen["workspace"][0] == "refused"  # type: ignore[index]
    assert seen["loopback"][0] == "refused"  # type: ignore[index]
    assert seen["dns"][0] == "refused"  # type: ignore[index]
    assert seen["run"] in (["ok", []], ["refused", "FileNotFoundError"])
    # /proc is the sandbox's own: pid 1 is bwrap's init, not the host's.
    assert secret_env not in str(seen["host_init_environ"])
    assert secret_env not in seen["env"]  # type: ignore[operator]
    assert seen["uid_home"] == "/tmp/home"


def test_without_isolation_the_agent_still_gets_a_scrubbed_environment(
    tmp_path: Path, workspace: Path, listener: int, secret_env: str
) -> None:
    vault = tmp_path / "vault.kls"
    vault.write_bytes(b"KLSV encrypted bytes")
    host = host_for(workspace, isolate=False)
    seen = probe(host, vault, listener, workspace)
    assert secret_env not in seen["env"]  # type: ignore[operator]
    assert "DBUS_SESSION_BUS_ADDRESS" not in seen["env"]  # type: ignore[operator]
    # Plain process: nothing else is contained (the probe does see the files and
    # the network it is refused under bubblewrap), which is why the host says so.
    assert seen["vault"] == ["ok", len(b"KLSV encrypted bytes")]
    assert seen["loopback"][0] == "ok"  # type: ignore[index]
    assert seen["workspace"][0] == "ok"  # type: ignore[index]


@pytest.mark.bwrap
@needs_bwrap
def test_the_worker_runs_an_errand_inside_bubblewrap(tmp_path: Path, workspace: Path) -> None:
    rig = make_rig(tmp_path, workspace, [final("from inside")])
    try:
        result = rig.host.run_errand("x")
    finally:
        rig.host.close()
    assert result.text == "from inside"
    isolation = next(e for e in rig.events if e.kind == "os_isolation")
    assert isolation.text == "on" and rig.host.os_isolation
