from __future__ import annotations

import os
from pathlib import Path

from memory.frontmatter import Provenance
from memory.service import MemoryService
from tests.memory.helpers import ServiceFactory

MODEL = Provenance(trust="model")


def test_search_spans_every_level_and_names_file_and_level(
    service: MemoryService, user_dir: Path, workspace: Path
) -> None:
    service.remember("Editor", "I use vim keybindings everywhere.", level="user", source=MODEL)
    service.remember("CI", "CI runs on GitHub actions; keybindings n/a.", level="project",
                     source=MODEL)
    service.remember("Today", "Fixing the vim plugin build.", level="session", source=MODEL)
    (workspace / "KEYLESS.md").write_text("Shared: the vim config lives in dotfiles/.\n")
    service.rescan()
    hits = service.recall("vim")
    by_level = {(h.level, Path(h.path).name) for h in hits}
    assert by_level == {
        ("user", "editor.md"),
        ("session", "today.md"),
        ("project", "KEYLESS.md"),
    }
    editor = next(h for h in hits if h.name == "editor")
    assert editor.title == "Editor" and "[vim]" in editor.snippet and not editor.archived
    assert Path(editor.path) == user_dir / "topics" / "editor.md"


def test_archived_topics_are_found_after_active_ones(service: MemoryService) -> None:
    service.remember("Old db", "We used postgres 12 with postgres tuning.", level="project",
                     source=MODEL)
    service.remember("New db", "Postgres 16 now.", level="project", source=MODEL)
    service.forget("project", "old-db", reason="upgraded")
    hits = service.recall("postgres")
    assert [(h.name, h.archived) for h in hits] == [("new-db", False), ("old-db", True)]


def test_stemming_and_any_word_matching(service: MemoryService) -> None:
    service.remember("Deploys", "Deploying happens on Fridays.", level="project", source=MODEL)
    assert [h.name for h in service.recall("deploy")] == ["deploys"]
    assert [h.name for h in service.recall("zebra friday")] == ["deploys"]
    assert service.recall("zebra") == []


def test_fts_syntax_in_the_query_is_harmless(service: MemoryService) -> None:
    service.remember("Quotes", "He said NEAR the end.", level="user", source=MODEL)
    for query in ('"unbalanced', "NEAR(a b", "a OR", "*", "title:x", "-", ""):
        service.recall(query)  # no error
    assert [h.name for h in service.recall('NEAR( "end')] == ["quotes"]


def test_hand_edits_and_deletions_are_picked_up(
    service: MemoryService, workspace: Path
) -> None:
    topics = workspace / ".keyless" / "memory" / "topics"
    topics.mkdir(parents=True)
    (topics / "manual.md").write_text("---\ntitle: Manual\n---\nwritten in an editor: kiwi\n")
    assert [h.name for h in service.recall("kiwi")] == ["manual"]
    # an in-place edit does not touch the directory; rescan sees it
    path = topics / "manual.md"
    path.write_text("---\ntitle: Manual\n---\nnow about mango\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    service.rescan()
    assert service.recall("kiwi") == [] and [h.name for h in service.recall("mango")] == ["manual"]
    path.unlink()
    assert service.recall("mango") == []


def test_search_is_limited_to_this_workspace_and_session(
    make_service: ServiceFactory, service: MemoryService, tmp_path: Path
) -> None:
    service.remember("Mine", "banana project", level="project", source=MODEL)
    service.remember("Mine too", "banana session", level="session", source=MODEL)
    service.remember("Everyone", "banana user", level="user", source=MODEL)
    other_ws = tmp_path / "other"
    other_ws.mkdir()
    other = make_service(workspace=other_ws, session_id="s2")
    assert {h.level for h in other.recall("banana")} == {"user"}
    same_ws_new_session = make_service(session_id="s3")
    assert {h.level for h in same_ws_new_session.recall("banana")} == {"user", "project"}


def test_hits_showing_a_vault_secret_are_withheld(service: MemoryService, workspace: Path) -> None:
    from tests.memory.helpers import SECRETS

    topics = workspace / ".keyless" / "memory" / "topics"
    topics.mkdir(parents=True)
    (topics / "creds.md").write_text(f"hand-typed deploy key {SECRETS['CANARY_1']}\n")
    [hit] = service.recall("deploy key")
    assert SECRETS["CANARY_1"] not in hit.snippet + hit.title
    assert hit.snippet == "[withheld: contains the vault secret(s) CANARY_1]"
