"""The step scaffold: repeats rejected, closed paths, questions answered from reads."""

from __future__ import annotations

import json

import pytest

from agent.host.tools.registry import default_tools, offers
from agent.worker.scaffold import (
    MAX_CHOICES,
    StepScaffold,
    canonical_call,
    is_question,
    named_paths,
)

OFFERS = offers(default_tools())
BY_NAME = {offer.name: offer for offer in OFFERS}


def options(schema: dict) -> dict[str, dict]:
    return {
        o["properties"]["tool"]["const"]: o["properties"]["arguments"]
        for o in schema["anyOf"]
        if "tool" in o["properties"]
    }


def test_defaults_and_spelling_of_a_path_make_calls_equal() -> None:
    offer = BY_NAME["list_dir"]
    assert canonical_call(offer, {}) == canonical_call(offer, {"path": "."})
    assert canonical_call(offer, {"path": "./src/"}) == canonical_call(offer, {"path": "src"})


def test_read_calls_accumulate_and_a_write_starts_afresh() -> None:
    guard = StepScaffold(OFFERS)
    guard.record("list_dir", {"path": "."})
    guard.record("read_file", {"path": "calc.py"})
    assert guard.is_repeat("list_dir", {})
    assert guard.is_repeat("read_file", {"path": "calc.py"})
    assert not guard.is_repeat("read_file", {"path": "other.py"})
    guard.record("write_file", {"path": "calc.py", "content": "x"})
    assert not guard.is_repeat("read_file", {"path": "calc.py"})
    # Writing the very same content again would change nothing.
    assert guard.is_repeat("write_file", {"path": "calc.py", "content": "x"})
    assert not guard.is_repeat("write_file", {"path": "calc.py", "content": "y"})


def test_the_schema_has_no_pattern_and_leaves_out_only_the_excluded_tool() -> None:
    guard = StepScaffold(OFFERS)
    guard.record("list_dir", {"path": "."})
    guard.record("search_files", {"query": "port"})
    schema = guard.step_schema()
    assert "pattern" not in json.dumps(schema)
    assert options(schema)["list_dir"] == BY_NAME["list_dir"].parameters
    again = options(guard.step_schema(exclude="list_dir"))
    assert "list_dir" not in again and "search_files" in again and "finish" in again


def test_the_schema_with_closed_paths_compiles_to_a_llama_grammar() -> None:
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    guard = StepScaffold(OFFERS, closed_paths=True)
    guard.record("list_dir", {"path": "."}, content=LISTING)
    gbnf = llama_grammar.json_schema_to_gbnf(json.dumps(guard.step_schema()))
    llama_grammar.LlamaGrammar.from_string(gbnf, verbose=False)


def test_a_long_listing_offers_only_the_latest_paths() -> None:
    guard = StepScaffold(OFFERS, closed_paths=True)
    names = [f"f{i:03}.txt" for i in range(MAX_CHOICES + 10)]
    listing = "ws: many\n" + "\n".join(f"{n}  1 bytes" for n in names)
    guard.record("list_dir", {"path": "."}, content=listing)
    choices = options(guard.step_schema())["read_file"]["properties"]["path"]["enum"]
    assert choices == names[-MAX_CHOICES:]


LISTING = "workspace: 4 entries\nsrc/\nVERSION  7 bytes\nlink -> (symlink)\nREADME.md  20 bytes"


def test_closed_paths_take_only_what_the_errand_has_seen() -> None:
    guard = StepScaffold(OFFERS, closed_paths=True)
    # Before anything is listed, there is no file to read, and the directory
    # to list is the workspace (the model took the worked example's file for one).
    assert "read_file" not in options(guard.step_schema())
    assert options(guard.step_schema())["list_dir"]["properties"]["path"]["enum"] == ["."]
    guard.record("list_dir", {"path": "app.ini"}, ok=False, content="not a directory")
    guard.record("list_dir", {"path": "."}, content=LISTING)
    step = options(guard.step_schema())
    assert step["list_dir"]["properties"]["path"]["enum"] == ["src"]
    assert step["read_file"]["properties"]["path"]["enum"] == ["VERSION", "README.md"]
    guard.record("list_dir", {"path": "src"}, content="src: 1 entries\nmain.py  3 bytes")
    guard.record("read_file", {"path": "VERSION"}, content="3.1\n")
    step = options(guard.step_schema())
    assert "list_dir" not in step  # every directory seen is listed
    assert step["read_file"]["properties"]["path"]["enum"] == ["README.md", "src/main.py"]


def test_search_hits_and_written_files_are_seen() -> None:
    guard = StepScaffold(OFFERS, closed_paths=True)
    guard.record("search_files", {"query": "TODO"}, content="docs/a.md:3: TODO x\nb.py:1: TODO")
    guard.record("write_file", {"path": "out/c.txt", "content": "x"})
    step = options(guard.step_schema())
    assert step["read_file"]["properties"]["path"]["enum"] == ["docs/a.md", "b.py", "out/c.txt"]
    assert step["list_dir"]["properties"]["path"]["enum"] == [".", "docs", "out"]


@pytest.mark.parametrize(
    ("task", "question"),
    [
        ("What version number is written in the file VERSION?", True),
        ("How many items are on the list in todo.md?", True),
        ("Can you fix the bug in calc.py?", False),
        ("List the names of the .txt files in the workspace.", True),
        ("List the files, then delete the empty ones.", False),
        ("Could you call the status API and tell me the status?", False),
    ],
)
def test_a_question_is_a_task_that_asks_and_changes_nothing(task: str, question: bool) -> None:
    assert is_question(task) is question


def test_a_question_is_answered_from_reads_and_then_only_the_answer_is_left() -> None:
    guard = StepScaffold(offers(["list_dir", "read_file", "write_file"]), closed_paths=True,
                        answer_only=True)  # fmt: skip
    assert set(options(guard.step_schema())) == {"list_dir", "finish"}  # no file seen yet
    guard.record("list_dir", {"path": "."}, content="ws: 1 entries\nVERSION  7 bytes")
    guard.record("read_file", {"path": "VERSION"}, content="3.14.2\n")
    schema = guard.step_schema()
    assert set(options(schema)) == {"finish"}
    assert any("final" in o["properties"] for o in schema["anyOf"])


def test_with_closed_paths_a_free_text_tool_is_offered_twice_until_a_write() -> None:
    guard = StepScaffold(OFFERS, closed_paths=True)
    guard.record("search_files", {"query": "list_dir"}, content="no match")
    assert "search_files" in options(guard.step_schema())
    guard.record("search_files", {"query": "list_dir_2"}, content="no match")
    guard.record("list_dir", {"path": "."}, content="ws: 0 entries")
    assert "search_files" not in options(guard.step_schema())
    guard.record("write_file", {"path": "a", "content": "x"})
    assert "search_files" in options(guard.step_schema())
    # Free paths (a scripted or remote model): no cap.
    free = StepScaffold(OFFERS)
    free.record("search_files", {"query": "a"})
    free.record("search_files", {"query": "b"})
    assert "search_files" in options(free.step_schema())


def test_a_question_gets_no_free_text_tool_once_a_file_was_read() -> None:
    guard = StepScaffold(OFFERS, closed_paths=True, answer_only=True)
    guard.record("list_dir", {"path": "."}, content="ws: 2 entries\nA  1 bytes\nB  1 bytes")
    assert "search_files" in options(guard.step_schema())
    guard.record("read_file", {"path": "A"}, content="a")
    assert set(options(guard.step_schema())) == {"read_file", "finish"}


@pytest.mark.parametrize(
    ("task", "paths"),
    [
        ("Read calc.py and fix the bug in add.", ["calc.py"]),
        ("What version number is written in the file VERSION?", ["VERSION"]),
        ("Run `python3 check.py`, fix src/limits.py.", ["check.py", "src/limits.py"]),
        ("List the names of the .txt files in the workspace.", []),
        ("Call https://api.example.com/v1/status and tell me.", []),
    ],
)
def test_named_paths_are_the_files_a_task_names(task: str, paths: list[str]) -> None:
    assert named_paths(task) == paths


def test_a_named_file_is_offered_first_and_a_question_about_it_ends_once_it_is_read() -> None:
    guard = StepScaffold(offers(["list_dir", "read_file", "search_files"]), closed_paths=True,
                         answer_only=True, named=["config.toml"])  # fmt: skip
    assert options(guard.step_schema())["read_file"]["properties"]["path"]["enum"] == [
        "config.toml"
    ]
    guard.record("read_file", {"path": "config.toml"}, content="port = 8080")
    assert set(options(guard.step_schema())) == {"finish"}
    assert guard.files_read() == [("config.toml", "port = 8080")]


def test_a_failed_read_of_a_named_file_does_not_end_the_question() -> None:
    guard = StepScaffold(offers(["list_dir", "read_file"]), closed_paths=True,
                         answer_only=True, named=["VERSION"])  # fmt: skip
    guard.record("read_file", {"path": "VERSION"}, ok=False, content="no such file")
    assert set(options(guard.step_schema())) == {"list_dir", "finish"}
    guard.record("list_dir", {"path": "."}, content="ws: 1 entries\nversion.txt  5 bytes")
    assert guard.files_read() == [("listing of .", "ws: 1 entries\nversion.txt  5 bytes")]


def test_a_question_reads_the_files_it_names_before_any_other_and_answers_from_them() -> None:
    guard = StepScaffold(offers(["list_dir", "read_file"]), closed_paths=True,
                         answer_only=True, named=["VERSION"])  # fmt: skip
    listing = "ws: 2 entries\nREADME.md  9 bytes\nVERSION  7 bytes"
    guard.record("list_dir", {"path": "."}, content=listing)
    assert options(guard.step_schema())["read_file"]["properties"]["path"]["enum"] == ["VERSION"]
    guard.record("read_file", {"path": "VERSION"}, content="3.14.2")
    assert guard.files_read() == [("VERSION", "3.14.2")]
