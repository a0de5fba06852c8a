"""The errand benchmark's harness and checkers, end to end with the scripted model.

The real host, agent process, vault, broker and local HTTPS API run; only the
model is scripted, so each test knows what the errand did and can check that
the harness reports it: a solved task succeeds, a model that repeats one call
until the step limit is a loop, a task left undone fails its checker.
"""

from __future__ import annotations

import json

import pytest

from agent.protocol import ErrandLimits
from bench.bench_errands import (
    API_QUOTE,
    TASKS,
    ModelChoice,
    TaskRun,
    classify,
    run_all,
    select_tasks,
)


def call(tool: str, **arguments: object) -> str:
    return json.dumps({"tool": tool, "arguments": arguments})


def final(text: str) -> str:
    return json.dumps({"final": text})


def scripted(**replies: list[str]) -> ModelChoice:
    return ModelChoice("scripted", scripted=replies)


def run(pattern: str, model: ModelChoice, *, max_steps: int = 12) -> list[TaskRun]:
    tasks = select_tasks(TASKS, pattern=pattern)
    return run_all(tasks, model, limits=ErrandLimits(max_steps=max_steps))


def test_the_suite_has_twenty_tasks_over_three_tiers_and_a_capability_task() -> None:
    assert len(TASKS) >= 20
    assert len({t.name for t in TASKS}) == len(TASKS)
    assert {t.tier for t in TASKS} == {1, 2, 3}
    assert any(t.needs_api for t in TASKS)


def test_a_model_that_fixes_the_bug_succeeds_with_an_answer() -> None:
    model = scripted(
        fix_add=[
            call("read_file", path="calc.py"),
            call(
                "edit_file", path="calc.py", old_text="return a - b  # BUG", new_text="return a + b"
            ),  # fmt: skip
            final("add now returns the sum."),
        ]
    )
    [r] = run("fix_add", model)
    assert (r.success, r.ending, r.outcome) == (True, "answer", "final"), r.reason
    assert (r.steps, r.tool_calls) == (3, 2)
    assert [(c["tool"], c["decision"], c["ok"]) for c in r.calls] == [
        ("read_file", "allow", True),
        ("edit_file", "allow", True),
    ]
    assert r.evaluated_tokens > r.generated_tokens > 0
    assert r.wall_s > 0


def test_a_model_that_answers_without_fixing_fails_the_checker() -> None:
    [r] = run("fix_add", scripted(fix_add=[final("Fixed it.")]))
    assert (r.success, r.ending) == (False, "answer")
    assert "calc.add(2, 3) is not 5" in r.reason


def test_a_repeated_call_is_sampled_again_and_the_errand_does_not_loop() -> None:
    # The scripted model is held to each step's schema, as the grammar holds a
    # real one: after the rejected repeat, list_dir is not offered.
    model = scripted(version=[call("list_dir", path=".")] * 2 + [final("3.1.4")])
    [r] = run("version", model, max_steps=4)
    assert (r.ending, r.outcome, r.steps, r.tool_calls) == ("answer", "final", 2, 1)


def test_the_capability_task_reaches_the_local_api_through_the_broker() -> None:
    model = scripted(
        api_quote_file=[
            call("http_request", url="{api}/api/quote", capability="{cap}"),
            call("write_file", path="quote.txt", content=API_QUOTE["quote"]),
            final("Saved."),
        ]
    )
    [r] = run("api_quote_file", model)
    assert r.success, r.reason
    # The API answers only the right Bearer token: the broker injected the secret.
    http = r.calls[0]
    assert (http["tool"], http["decision"], http["ok"]) == ("http_request", "allow", True)
    assert API_QUOTE["quote"] in http["result"]


@pytest.mark.parametrize(
    ("outcome", "replies", "ending"),
    [
        ("final", [], "answer"),
        ("finish", [call("finish", answer="x")], "answer"),
        ("max_steps", [call("list_dir", path="a")] * 3, "loop"),
        ("max_tokens", [call("read_file", path="a")] * 5, "loop"),
        (
            "max_steps",
            [call("list_dir", path="a")] * 2 + [call("list_dir", path="b")],
            "step limit",
        ),
        ("max_steps", [call("list_dir", path="a")] * 2, "step limit"),
        ("max_steps", ["not json"] * 3, "step limit"),
        ("max_tokens", ['{"tool": "read'] * 3, "token limit"),
        ("crashed", [], "error"),
        ("error", [], "error"),
        ("cancelled", [], "error"),
    ],
)
def test_classify(outcome: str, replies: list[str], ending: str) -> None:
    assert classify(outcome, replies) == ending


def test_the_same_arguments_in_another_order_are_the_same_call() -> None:
    a = json.dumps({"tool": "search_files", "arguments": {"query": "x", "glob": "*.py"}})
    b = json.dumps({"tool": "search_files", "arguments": {"glob": "*.py", "query": "x"}})
    assert classify("max_steps", [a, b, a]) == "loop"


def _model_args(*argv: str):  # type: ignore[no-untyped-def]
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--backend", default="llama.cpp")
    for name in ("--base-url", "--model-name", "--threads"):
        parser.add_argument(name)
    parser.add_argument("--allow-local", action="store_true")
    parser.add_argument("--n-ctx", type=int, default=2048)
    return parser.parse_args(list(argv))


def test_the_model_options_are_read_through_the_backend_registry(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bench.bench_errands import model_from_args

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    local = model_from_args(_model_args("--model", str(gguf)))
    assert local.spec is not None and local.spec.settings.path == gguf.resolve()
    remote = model_from_args(_model_args("--backend", "openai", "--base-url",
                                         "http://127.0.0.1:8080/v1", "--model-name", "m",
                                         "--allow-local"))  # fmt: skip
    assert remote.spec is not None and remote.spec.backend == "openai"
    assert remote.spec.settings.model_name == "m"
    with pytest.raises(SystemExit, match="needs --base-url"):
        model_from_args(_model_args("--backend", "openai", "--model-name", "m"))
    with pytest.raises(SystemExit, match="takes no --model"):
        model_from_args(_model_args("--backend", "openai", "--base-url", "http://x/v1",
                                    "--model-name", "m", "--model", str(gguf)))  # fmt: skip


def test_auroc_is_the_chance_a_positive_outscores_a_negative() -> None:
    from bench.bench_errands import auroc

    assert auroc([3.0, 2.0, 1.0], [True, True, False]) == 1.0
    assert auroc([1.0, 2.0], [True, False]) == 0.0
    assert auroc([2.0, 2.0], [True, False]) == 0.5
    assert auroc([1.0], [True]) is None
