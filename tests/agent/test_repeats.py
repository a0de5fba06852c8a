"""The repeat guard: a call made since the last write cannot be produced again."""

from __future__ import annotations

import json
import re

import pytest

from agent.host.tools.registry import default_tools, offers
from agent.worker.repeats import RepeatGuard, canonical_call, excluding_pattern, main_argument

OFFERS = offers(default_tools())
BY_NAME = {offer.name: offer for offer in OFFERS}


def options(schema: dict) -> dict[str, dict]:
    return {
        o["properties"]["tool"]["const"]: o["properties"]["arguments"]
        for o in schema["anyOf"]
        if "tool" in o["properties"]
    }


@pytest.mark.parametrize(
    "values", [["."], [".", "./"], ["calc.py", "a]b\\c-^"], ["src/a.py", "src/b.py", "src"]]
)
def test_excluding_pattern_matches_all_but_the_values(values: list[str]) -> None:
    pattern = re.compile(excluding_pattern(values))
    for value in values:
        if '"' not in value and "\\" not in value:
            assert pattern.fullmatch(value) is None, value
    for other in ["", "x", "calc.py2", "ca", ".git", "src/", "src/c.py", "./x", "a]b"]:
        if other not in values:
            assert pattern.fullmatch(other), other


def test_main_argument_is_the_first_required_string_else_a_defaulted_one() -> None:
    assert main_argument(BY_NAME["list_dir"].parameters) == "path"
    assert main_argument(BY_NAME["read_file"].parameters) == "path"
    assert main_argument(BY_NAME["search_files"].parameters) == "query"
    assert main_argument(BY_NAME["shell"].parameters) == "command"


def test_defaults_make_calls_equal() -> None:
    offer = BY_NAME["list_dir"]
    assert canonical_call(offer, {}) == canonical_call(offer, {"path": "."})


def test_read_calls_accumulate_and_a_write_starts_afresh() -> None:
    guard = RepeatGuard(OFFERS)
    guard.record("list_dir", {"path": "."})
    guard.record("read_file", {"path": "calc.py"})
    assert guard.is_repeat("list_dir", {})
    assert guard.is_repeat("read_file", {"path": "calc.py"})
    assert not guard.is_repeat("read_file", {"path": "other.py"})
    guard.record("write_file", {"path": "calc.py", "content": "x"})
    assert not guard.is_repeat("read_file", {"path": "calc.py"})
    # Writing the very same content again would change nothing.
    assert guard.is_repeat("write_file", {"path": "calc.py", "content": "x"})


def test_the_step_schema_excludes_the_used_values() -> None:
    guard = RepeatGuard(OFFERS)
    assert options(guard.step_schema())["list_dir"] == BY_NAME["list_dir"].parameters
    guard.record("list_dir", {})
    guard.record("list_dir", {"path": "src"})
    narrowed = options(guard.step_schema())["list_dir"]
    assert "path" in narrowed["required"]
    pattern = re.compile(narrowed["properties"]["path"]["pattern"])
    assert not pattern.fullmatch(".") and not pattern.fullmatch("src")
    assert pattern.fullmatch("docs")
    # The other tools are offered as they were.
    assert options(guard.step_schema())["read_file"] == BY_NAME["read_file"].parameters


def test_the_narrowed_schema_compiles_to_a_llama_grammar() -> None:
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    guard = RepeatGuard(OFFERS)
    guard.record("list_dir", {"path": "."})
    guard.record("read_file", {"path": "calc.py"})
    gbnf = llama_grammar.json_schema_to_gbnf(json.dumps(guard.step_schema()))
    llama_grammar.LlamaGrammar.from_string(gbnf, verbose=False)


@pytest.mark.model
@pytest.mark.slow
def test_the_embedded_model_cannot_repeat_an_excluded_call() -> None:
    from agent.protocol import step_schema
    from models.factory import ModelSpec, open_model
    from models.interface import Message, complete_chat

    ask = [
        Message(role="system", content="Reply with one JSON object."),
        Message(
            role="user",
            content='Reply with exactly this: {"tool": "list_dir", "arguments": {"path": "."}}',
        ),
    ]
    offered = offers(["list_dir", "read_file"])
    guard = RepeatGuard(offered)
    guard.record("list_dir", {"path": "."})
    model = open_model(ModelSpec(n_ctx=1024))
    try:
        free = complete_chat(model, ask, max_tokens=48, json_schema=step_schema(offered)).text
        narrowed = complete_chat(model, ask, max_tokens=48, json_schema=guard.step_schema()).text
    finally:
        model.close()
    # Unconstrained, the model does produce the call; excluded, it cannot.
    assert guard.is_repeat(**json.loads(free))
    reply = json.loads(narrowed)
    assert "final" in reply or not guard.is_repeat(reply["tool"], reply["arguments"])


LISTING = "workspace: 4 entries\nsrc/\nVERSION  7 bytes\nlink -> (symlink)\nREADME.md  20 bytes"


def test_closed_paths_take_only_what_the_errand_has_seen() -> None:
    guard = RepeatGuard(OFFERS, closed_paths=True)
    # Before anything is listed, paths are free.
    assert "enum" not in options(guard.step_schema())["read_file"]["properties"]["path"]
    guard.record("list_dir", {"path": "app.ini"}, ok=False, content="not a directory")
    assert options(guard.step_schema())["list_dir"]["properties"]["path"]["enum"] == ["."]
    guard.record("list_dir", {"path": "."}, content=LISTING)
    step = options(guard.step_schema())
    assert step["list_dir"]["properties"]["path"]["enum"] == ["src"]
    assert step["read_file"]["properties"]["path"]["enum"] == ["README.md", "VERSION"]
    guard.record("list_dir", {"path": "src"}, content="src: 1 entries\nmain.py  3 bytes")
    guard.record("read_file", {"path": "VERSION"}, content="3.1\n")
    step = options(guard.step_schema())
    assert "list_dir" not in step  # every directory seen is listed
    assert step["read_file"]["properties"]["path"]["enum"] == ["README.md", "src/main.py"]


def test_search_hits_and_written_files_are_seen() -> None:
    guard = RepeatGuard(OFFERS, closed_paths=True)
    guard.record("search_files", {"query": "TODO"}, content="docs/a.md:3: TODO x\nb.py:1: TODO")
    guard.record("write_file", {"path": "out/c.txt", "content": "x"})
    step = options(guard.step_schema())
    assert step["read_file"]["properties"]["path"]["enum"] == ["b.py", "docs/a.md", "out/c.txt"]
    assert step["list_dir"]["properties"]["path"]["enum"] == [".", "docs", "out"]


@pytest.mark.parametrize(
    ("task", "question"),
    [
        ("What version number is written in the file VERSION?", True),
        ("How many items are on the list in todo.md?", True),
        ("Can you fix the bug in calc.py?", False),
        ("List the names of the .txt files in the workspace.", False),
        ("Could you call the status API and tell me the status?", False),
    ],
)
def test_a_question_is_a_task_that_asks_and_changes_nothing(task: str, question: bool) -> None:
    from agent.worker.repeats import is_question

    assert is_question(task) is question


def test_a_question_is_answered_from_reads_and_then_only_the_answer_is_left() -> None:
    guard = RepeatGuard(offers(["list_dir", "read_file", "write_file"]), closed_paths=True,
                        answer_only=True)  # fmt: skip
    assert set(options(guard.step_schema())) == {"list_dir", "read_file", "finish"}
    guard.record("list_dir", {"path": "."}, content="ws: 1 entries\nVERSION  7 bytes")
    guard.record("read_file", {"path": "VERSION"}, content="3.14.2\n")
    schema = guard.step_schema()
    assert set(options(schema)) == {"finish"}
    assert any("final" in o["properties"] for o in schema["anyOf"])


def test_with_closed_paths_a_free_text_tool_is_offered_twice_until_a_write() -> None:
    guard = RepeatGuard(OFFERS, closed_paths=True)
    guard.record("search_files", {"query": "list_dir"}, content="no match")
    assert "search_files" in options(guard.step_schema())
    guard.record("search_files", {"query": "list_dir_2"}, content="no match")
    guard.record("list_dir", {"path": "."}, content="ws: 0 entries")
    assert "search_files" not in options(guard.step_schema())
    guard.record("write_file", {"path": "a", "content": "x"})
    assert "search_files" in options(guard.step_schema())
    # Free paths (a scripted or remote model): no cap.
    free = RepeatGuard(OFFERS)
    free.record("search_files", {"query": "a"})
    free.record("search_files", {"query": "b"})
    assert "search_files" in options(free.step_schema())


def test_a_question_gets_no_free_text_tool_once_a_file_was_read() -> None:
    guard = RepeatGuard(OFFERS, closed_paths=True, answer_only=True)
    guard.record("list_dir", {"path": "."}, content="ws: 2 entries\nA  1 bytes\nB  1 bytes")
    assert "search_files" in options(guard.step_schema())
    guard.record("read_file", {"path": "A"}, content="a")
    assert set(options(guard.step_schema())) == {"read_file", "finish"}


def test_the_exact_repeat_of_a_write_is_excluded_and_a_new_content_is_not() -> None:
    import jsonschema

    guard = RepeatGuard(OFFERS)
    guard.record("write_file", {"path": "calc.py", "content": "1.0.0"})
    schema = guard.step_schema()
    check = jsonschema.Draft202012Validator(schema).is_valid
    assert not check({"tool": "write_file", "arguments": {"path": "calc.py", "content": "1.0.0"}})
    assert check({"tool": "write_file", "arguments": {"path": "calc.py", "content": "2"}})
    assert check({"tool": "write_file", "arguments": {"path": "b.py", "content": "1.0.0"}})
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    gbnf = llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    llama_grammar.LlamaGrammar.from_string(gbnf, verbose=False)
    assert check({"tool": "write_file",
                  "arguments": {"path": "calc.py", "content": "1.0.0", "create_dirs": False}})
    # An argument that cannot be excluded (a number, an object) leaves the call as offered.
    guard.record("http_request", {"url": "https://x.example/"})
    assert options(guard.step_schema())["http_request"] == BY_NAME["http_request"].parameters
    # A value the pattern alphabet cannot hold leaves the write as offered.
    guard.record("write_file", {"path": "calc.py", "content": "line\n"})
    assert options(guard.step_schema())["write_file"] == BY_NAME["write_file"].parameters
