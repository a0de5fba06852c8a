from __future__ import annotations

from pathlib import Path

import pytest

from memory.frontmatter import Provenance
from memory.loader import HEADER, expand_imports, fit_to_budget
from memory.service import MemoryService
from memory.store import MemoryLayout
from tests.memory.helpers import SECRETS, ServiceFactory, count_words


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_levels_load_user_then_project_then_session(
    service: MemoryService, user_dir: Path, workspace: Path
) -> None:
    write(user_dir / "USER.md", "Indent with tabs.\n")
    write(workspace / "KEYLESS.md", "Indent with 4 spaces here.\n")
    write(workspace / ".keyless" / "memory" / "MEMORY.md", "Tests live in tests/.\n")
    write(workspace / ".keyless" / "sessions" / "s1.md", "Today: 2 spaces for YAML.\n")
    write(workspace / ".keyless" / "sessions" / "other.md", "another session's notes\n")
    ctx = service.load_context()
    text = ctx.text
    assert text.startswith(HEADER) and "the later (nearer) level wins" in text
    order = [text.index(s) for s in ("tabs", "4 spaces", "tests/", "2 spaces for YAML")]
    assert order == sorted(order)
    assert text.index("## User memory") < text.index("## Project memory") < text.index(
        "## Session notes"
    )
    assert "### KEYLESS.md" in text and "### .keyless/memory/MEMORY.md" in text
    assert "another session" not in text
    assert [u.level for u in ctx.levels] == ["user", "project", "session"]
    assert all(not u.truncated and 0 < u.tokens <= u.capacity for u in ctx.levels)


def test_empty_memory_loads_nothing(service: MemoryService) -> None:
    ctx = service.load_context()
    assert ctx.text == ""
    assert [u.tokens for u in ctx.levels] == [0, 0, 0]


def test_each_level_is_cut_to_its_budget_with_a_marker(
    make_service: ServiceFactory, user_dir: Path, workspace: Path
) -> None:
    svc = make_service(budgets=(60, 800, 600))
    lines = [f"- preference number {i} is important" for i in range(100)]
    write(user_dir / "USER.md", "\n".join(lines) + "\n")
    write(workspace / "KEYLESS.md", "Short project note.\n")
    ctx = svc.load_context()
    user = ctx.levels[0]
    assert user.truncated and user.tokens <= 60 and user.capacity == 60
    assert "cut here" in ctx.text and "use recall" in ctx.text
    assert "preference number 0 " in ctx.text and "preference number 99" not in ctx.text
    # cut at a line boundary: no half line before the marker
    before_marker = ctx.text.split("[… cut here")[0].rstrip("\n").splitlines()[-1]
    assert before_marker in lines
    assert not ctx.levels[1].truncated and "Short project note." in ctx.text


def test_fit_to_budget_cuts_inside_a_single_huge_line() -> None:
    text = "word " * 500
    kept, tokens, cut = fit_to_budget(text, 40, "[cut]\n", count_words)
    assert cut and tokens <= 40 and kept.endswith("[cut]\n") and kept.startswith("word word")
    same, n, cut2 = fit_to_budget("small\n", 40, "[cut]\n", count_words)
    assert (same, n, cut2) == ("small\n", 1, False)


def test_index_lines_of_active_topics_load_and_archived_ones_do_not(
    service: MemoryService,
) -> None:
    src = Provenance(trust="model")
    service.remember("Deploy", "Run the deploy script from CI only.", level="project", source=src)
    service.remember("Old habit", "Use tabs everywhere.", level="project", source=src)
    service.forget("project", "old-habit", reason="outdated")
    text = service.load_context().text
    assert "[Deploy](topics/deploy.md): Run the deploy script from CI only." in text
    assert "Old habit" not in text
    assert "keyless:topics" not in text  # the marker comments never reach the prompt


def layout_for(tmp_path: Path) -> MemoryLayout:
    return MemoryLayout(user_dir=tmp_path / "u", workspace=tmp_path / "ws", session_id="s")


def expand(layout: MemoryLayout, file: Path, problems: list[str]) -> str:
    return expand_imports(
        file, file.read_text(), layout=layout, max_depth=3, max_bytes=10_000, problems=problems
    )


def test_imports_are_relative_and_nest(tmp_path: Path) -> None:
    layout = layout_for(tmp_path)
    ws = tmp_path / "ws"
    root = write(ws / "KEYLESS.md", "top\n@docs/a.md\nend\n")
    write(ws / "docs" / "a.md", "in a\n@sub/b.md\n")
    write(ws / "docs" / "sub" / "b.md", "in b\n@../../c.md\n")
    write(ws / "c.md", "in c\n")
    problems: list[str] = []
    assert expand(layout, root, problems) == "top\nin a\nin b\nin c\nend\n"
    assert problems == []


def test_imports_deeper_than_three_levels_are_skipped(tmp_path: Path) -> None:
    layout = layout_for(tmp_path)
    ws = tmp_path / "ws"
    root = write(ws / "r.md", "@1.md\n")
    write(ws / "1.md", "one\n@2.md\n")
    write(ws / "2.md", "two\n@3.md\n")
    write(ws / "3.md", "three\n@4.md\n")
    write(ws / "4.md", "four\n")
    problems: list[str] = []
    out = expand(layout, root, problems)
    assert "one\ntwo\nthree\n" in out and "four" not in out
    assert "[import @4.md skipped: imports nest deeper than 3 levels]" in out
    assert len(problems) == 1 and "deeper than 3" in problems[0]


def test_import_cycles_are_broken(tmp_path: Path) -> None:
    layout = layout_for(tmp_path)
    ws = tmp_path / "ws"
    a = write(ws / "a.md", "A\n@b.md\n")
    write(ws / "b.md", "B\n@a.md\n@b.md\n")
    problems: list[str] = []
    out = expand(layout, a, problems)
    assert out.startswith("A\nB\n")
    assert out.count("import cycle") == 2 and len(problems) == 2


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("@/etc/passwd", "only paths relative"),
        ("@~/.ssh/id_rsa", "only paths relative"),
        ("@../../outside.md", "outside the memory folders"),
        ("@missing.md", "no such file"),
        ("@docs", "not a file"),
        ("@link.md", "outside the memory folders"),
    ],
)
def test_imports_that_escape_or_fail_are_refused(tmp_path: Path, line: str, reason: str) -> None:
    layout = layout_for(tmp_path)
    ws = tmp_path / "ws"
    write(tmp_path / "outside.md", "SECRET-ish outside text\n")
    (ws / "docs").mkdir(parents=True)
    (ws / "link.md").symlink_to(tmp_path / "outside.md")
    root = write(ws / "KEYLESS.md", f"before\n{line}\nafter\n")
    problems: list[str] = []
    out = expand(layout, root, problems)
    assert "outside text" not in out
    assert reason in out and out.startswith("before\n") and out.endswith("after\n")
    assert len(problems) == 1 and str(root) in problems[0]


def test_imports_between_user_memory_and_workspace_are_allowed(tmp_path: Path) -> None:
    layout = layout_for(tmp_path)
    write(tmp_path / "u" / "shared.md", "user shared\n")
    root = write(tmp_path / "ws" / "KEYLESS.md", "@../u/shared.md\n")
    assert expand(layout, root, []) == "user shared\n"


def test_import_lines_in_code_fences_and_mentions_are_left_alone(tmp_path: Path) -> None:
    layout = layout_for(tmp_path)
    write(tmp_path / "ws" / "x.md", "IMPORTED\n")
    text = "```\n@x.md\n```\nmail me @ home, ask @alice about it\n@x.md\n"
    root = write(tmp_path / "ws" / "r.md", text)
    out = expand(layout, root, [])
    assert out == "```\n@x.md\n```\nmail me @ home, ask @alice about it\nIMPORTED\n"


def test_imported_topic_front_matter_is_stripped_and_archived_topics_refused(
    service: MemoryService, workspace: Path
) -> None:
    src = Provenance(trust="model")
    service.remember("Build", "Use the Makefile.", level="project", source=src)
    service.remember("Gone", "Old text.", level="project", source=src)
    service.forget("project", "gone", reason="stale")
    topics = "@.keyless/memory/topics/"
    write(workspace / "KEYLESS.md", f"{topics}build.md\n{topics}gone.md\n")
    ctx = service.load_context()
    assert "Use the Makefile." in ctx.text and "title:" not in ctx.text
    assert "Old text." not in ctx.text and "the topic is archived" in ctx.text


def test_a_load_file_symlinked_outside_the_roots_is_not_read(
    service: MemoryService, workspace: Path, tmp_path: Path
) -> None:
    secret = write(tmp_path / "elsewhere" / "id_rsa", "PRIVATE KEY MATERIAL\n")
    (workspace / "KEYLESS.md").symlink_to(secret)
    ctx = service.load_context()
    assert "PRIVATE KEY" not in ctx.text
    assert any("leads outside the memory folders" in p for p in ctx.problems)


def test_only_markdown_and_text_files_can_be_imported(tmp_path: Path) -> None:
    layout = layout_for(tmp_path)
    write(tmp_path / "ws" / ".env", "API_KEY=abc\n")
    write(tmp_path / "ws" / "notes.txt", "plain notes\n")
    root = write(tmp_path / "ws" / "KEYLESS.md", "@.env\n@notes.txt\n")
    problems: list[str] = []
    out = expand(layout, root, problems)
    assert "API_KEY" not in out and "plain notes" in out
    assert "only .md, .markdown, .txt files can be imported" in out


def test_memory_holding_a_vault_secret_is_withheld_from_the_prompt(
    service: MemoryService, workspace: Path, user_dir: Path
) -> None:
    write(user_dir / "USER.md", "I like short answers.\n")
    write(workspace / "notes.md", f"token: {SECRETS['GITHUB_TOKEN']}\n")
    write(workspace / "KEYLESS.md", "Project rules.\n@notes.md\n")
    ctx = service.load_context()
    assert SECRETS["GITHUB_TOKEN"] not in ctx.text and "Project rules." not in ctx.text
    assert "I like short answers." in ctx.text
    assert any("GITHUB_TOKEN" in p and "withheld" in p for p in ctx.problems)


def test_nothing_loads_when_the_secret_scan_cannot_run(
    make_service: ServiceFactory, user_dir: Path
) -> None:
    def locked(text: str) -> list[str]:
        raise RuntimeError("vault is locked")

    svc = make_service(scan=locked)
    write(user_dir / "USER.md", "I like short answers.\n")
    ctx = svc.load_context()
    assert ctx.text == "" and "could not be checked" in ctx.problems[0]
