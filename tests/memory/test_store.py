from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memory.errors import InvalidMemoryError, MemoryStoreError
from memory.store import (
    INDEX_END,
    INDEX_START,
    TEMP_PREFIX,
    MemoryLayout,
    atomic_write,
    check_session_id,
    check_topic_name,
    clean_stale_temps,
    render_index,
    topic_slug,
)

ROOT = Path(__file__).resolve().parents[2]


def test_layout_puts_each_level_where_the_design_says(tmp_path: Path) -> None:
    layout = MemoryLayout(user_dir=tmp_path / "u", workspace=tmp_path / "ws", session_id="abc")
    assert layout.level("user").index_file == tmp_path / "u" / "USER.md"
    assert layout.level("user").topics_dir == tmp_path / "u" / "topics"
    project = layout.level("project")
    assert project.load_files == (
        tmp_path / "ws" / "KEYLESS.md",
        tmp_path / "ws" / ".keyless" / "memory" / "MEMORY.md",
    )
    assert project.topics_dir == tmp_path / "ws" / ".keyless" / "memory" / "topics"
    sessions = tmp_path / "ws" / ".keyless" / "sessions"
    assert layout.level("session").index_file == sessions / "abc.md"


@pytest.mark.parametrize(
    ("title", "slug"),
    [("Python style", "python-style"), ("  Deploy: prod/EU!! ", "deploy-prod-eu"),
     ("../../etc/passwd", "etc-passwd"), ("x" * 80, "x" * 64)],
)
def test_topic_slug(title: str, slug: str) -> None:
    assert topic_slug(title) == slug


def test_topic_names_that_could_escape_are_refused() -> None:
    for bad in ("../x", "a/b", "", "UPPER", ".hidden", "a" * 65, "x.md"):
        with pytest.raises(InvalidMemoryError, match="invalid topic name"):
            check_topic_name(bad)
    with pytest.raises(InvalidMemoryError, match="no letters or digits"):
        topic_slug("?!")
    for bad_id in ("", "../s", "a/b", ".x", "s" * 65):
        with pytest.raises(InvalidMemoryError, match="invalid session id"):
            check_session_id(bad_id)
    assert check_topic_name("deploy~2") == "deploy~2"


def test_render_index_keeps_the_persons_text(tmp_path: Path) -> None:
    mine = "# My project\nWe deploy on Fridays.\n"
    first = render_index(mine, ["- [A](topics/a.md)"])
    assert first.startswith(mine) and INDEX_START in first and first.endswith(INDEX_END + "\n")
    edited = first.replace("Fridays", "Mondays") + "Trailing note\n"
    second = render_index(edited, ["- [B](topics/b.md)"])
    assert "Mondays" in second and "Trailing note" in second
    assert "topics/a.md" not in second and "topics/b.md" in second
    assert second.count(INDEX_START) == 1


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "d" / "f.md"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.md"]


def test_atomic_write_failure_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f.md"
    atomic_write(target, b"old")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(MemoryStoreError, match="No space left on device"):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.md"]


def test_stale_temp_files_are_cleaned(tmp_path: Path) -> None:
    (tmp_path / f"{TEMP_PREFIX}abc.tmp").write_text("half")
    (tmp_path / "keep.md").write_text("x")
    clean_stale_temps(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.md"]


WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from memory.frontmatter import Provenance
    from memory.service import MemoryService
    from memory.settings import LevelTokens, MemorySettings
    from memory.store import TEMP_PREFIX

    root = Path(sys.argv[1])
    svc = MemoryService(
        user_dir=root / "u", workspace=root / "ws", db_path=root / "k.db", session_id="s1",
        count_tokens=lambda t: len(t.split()), scan_secrets=lambda t: [],
        settings=MemorySettings(
            max_content_chars=1_000_000,
            capacities=LevelTokens(user=1500, project=1_000_000, session=1000),
        ),
    )
    armed = False
    real_fsync = os.fsync

    def fsync(fd):
        # Stop inside the write, once the new bytes are on disk in the temp file.
        name = os.readlink(f"/proc/self/fd/{fd}")
        if armed and Path(name).name.startswith(TEMP_PREFIX):
            real_fsync(fd)
            print("mid-write", name, flush=True)
            sys.stdin.readline()  # the parent kills us here
        return real_fsync(fd)

    os.fsync = fsync
    for i in range(4):
        svc.remember(f"topic {i % 2}", f"version {i} " + "lorem ipsum " * 20000,
                     level="project", source=Provenance(trust="model"))
    print("armed", flush=True)
    sys.stdin.readline()
    armed = True
    svc.remember("topic 0", "version 4 " + "lorem ipsum " * 20000,
                 level="project", source=Provenance(trust="model"))
    """
)


@pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="the writer finds its temp file through /proc"
)
def test_sigkill_during_a_write_leaves_the_old_files(tmp_path: Path, make_service) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    memory = tmp_path / "ws" / ".keyless" / "memory"
    try:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline() == "armed\n"
        before = {p.name: p.read_bytes() for p in memory.rglob("*.md")}
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line.startswith("mid-write"), line
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the killed write left its temp file; every real file is exactly as before
    assert any(p.name.startswith(TEMP_PREFIX) for p in memory.rglob("*"))
    assert {p.name: p.read_bytes() for p in memory.rglob("*.md")} == before
    svc = make_service(
        user_dir=tmp_path / "u", workspace=tmp_path / "ws", db_path=tmp_path / "k.db"
    )
    for name in ("topic-0", "topic-1"):
        topic = svc.read_topic("project", name)
        assert topic.repairs == [], f"{name} was left broken: {topic.repairs}"
    assert svc.read_topic("project", "topic-0").body.startswith("version 2 ")
    # the service's start removed the temp file the killed write left behind
    assert not any(p.name.startswith(TEMP_PREFIX) for p in memory.rglob("*"))
    index = (memory / "MEMORY.md").read_text()
    assert index.count(INDEX_START) == 1 and index.count(INDEX_END) == 1
