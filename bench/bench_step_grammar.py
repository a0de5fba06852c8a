"""Step-grammar benchmark: what one errand step costs under each way of excluding repeats.

One step of the embedded model (greedy, the default tools, a question after
one ``list_dir(".")``), generated under three schemas:

- ``plain``: :func:`agent.protocol.step_schema` of the offers, as it is;
- ``pattern``: the reverted design, where each read-only tool already called
  got a ``pattern`` on its main argument that matches every string but the
  values used (``list_dir``'s ``"."``, two ``search_files`` queries, one
  ``recall``), and ``write_file``'s path one excluding its last path;
- ``enum``: what :mod:`agent.worker.scaffold` builds instead: ``list_dir`` and
  ``read_file`` take one of the few paths seen (an ``enum``), nothing else
  changes;
- ``none``: no grammar at all (what sampling costs without one).

Reported per schema: the time to build the grammar sampler (schema to GBNF
and llama.cpp's parse), the time per generated token, and the whole step,
median of ``--repeat`` runs after one that fills the prompt cache; each with
the grammar checked against the whole vocabulary at every token (llama.cpp's
sampler chain) and with the greedy token checked first
(``models.runtime._GreedyTokenFirst``, the same tokens).

    .venv/bin/python -m bench step_grammar [--repeat 3] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

from agent.host.tools.registry import default_tools, offers
from agent.protocol import Task, ToolOffer, ToolResult, step_schema
from agent.worker.prompt import initial_messages, wrap_tool_result
from agent.worker.scaffold import StepScaffold
from models.factory import ModelSpec, open_model
from models.interface import Finished, Message

_SPECIAL = '"\\'


def excluding_pattern(values: Sequence[str]) -> str:
    """The reverted design's regular expression: every quote-free string but ``values``."""
    return "^" + _node(set(values)) + "$"


def _char_class(chars: set[str], *, negate: bool = False) -> str:
    body = "".join("\\" + c if c in "]\\^-[" else c for c in sorted(chars))
    return "[" + ("^" if negate else "") + body + "]"


def _node(suffixes: set[str]) -> str:
    firsts = {s[0] for s in suffixes if s}
    anything = _char_class(set(_SPECIAL), negate=True) + "*"
    alternatives = [_char_class(set(_SPECIAL) | firsts, negate=True) + anything]
    for c in sorted(firsts):
        alternatives.append(_char_class({c}) + _node({s[1:] for s in suffixes if s and s[0] == c}))
    group = "(" + "|".join(alternatives) + ")"
    return group if "" in suffixes else group + "?"


def _with_pattern(offer: ToolOffer, argument: str, used: Sequence[str]) -> ToolOffer:
    parameters = copy.deepcopy(offer.parameters)
    parameters["properties"][argument].pop("default", None)
    parameters["properties"][argument]["pattern"] = excluding_pattern(used)
    parameters["required"] = sorted({*parameters.get("required", ()), argument})
    return offer.model_copy(update={"parameters": parameters})


LISTING = "ws: 3 entries\napp.ini  20 bytes\nREADME.md  120 bytes\nsrc/\n"


def schemas(tools: Sequence[ToolOffer]) -> dict[str, dict[str, Any] | None]:
    """The step schemas compared, after ``list_dir(".")`` showed :data:`LISTING`."""
    patterned = []
    for offer in tools:
        if offer.name == "list_dir":
            offer = _with_pattern(offer, "path", ["."])
        elif offer.name == "search_files":
            offer = _with_pattern(offer, "query", ["port", "port ="])
        elif offer.name == "recall":
            offer = _with_pattern(offer, "query", ["port"])
        elif offer.name == "write_file":
            offer = _with_pattern(offer, "path", ["notes.txt"])
        patterned.append(offer)
    scaffold = StepScaffold(tools, closed_paths=True)
    scaffold.record("list_dir", {"path": "."}, ok=True, content=LISTING)
    return {
        "plain": step_schema(tools),
        "pattern": step_schema(patterned),
        "enum": scaffold.step_schema(),
        "none": None,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the table; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    tools = offers(default_tools())
    task = Task(task="Which port does app.ini set?", tools=tools)
    messages: list[Message] = initial_messages(task, tools)
    messages.append(Message(role="assistant", content='{"tool": "list_dir", "arguments": {}}'))
    result = ToolResult(call_id="c1", ok=True, content=LISTING, untrusted=False)
    messages.append(wrap_tool_result("list_dir", result, max_chars=4000))
    model: Any = open_model(ModelSpec.of("llama.cpp", n_ctx=4096))
    import models.runtime as runtime

    token_first = runtime._GreedyTokenFirst.sample  # noqa: SLF001 - measured both ways

    def every_token(self: Any, ctx: Any, idx: int) -> int:
        return int(self._chain.sample(ctx, idx))  # noqa: SLF001 - the whole chain each token

    modes = {"whole vocabulary": every_token, "greedy token first": token_first}
    print("| schema | GBNF chars | sampler build ms | grammar check | ms / token | step ms "
          "| tokens | reply |")  # fmt: skip
    print("|---|---:|---:|---|---:|---:|---:|---|")
    try:
        for name, schema in schemas(tools).items():
            gbnf = "" if schema is None else json_schema_to_gbnf(json.dumps(schema))
            builds = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                model._make_sampler(schema, 0.0, False).close()  # noqa: SLF001 - timed apart
                builds.append(time.perf_counter() - t0)
            for mode, sample in modes.items():
                if schema is None and mode != "whole vocabulary":
                    continue
                runtime._GreedyTokenFirst.sample = sample  # type: ignore[method-assign]  # noqa: SLF001
                per_token, steps = [], []
                finished: Finished | None = None
                for _ in range(args.repeat + 1):  # the first run fills the prompt cache
                    t0 = time.perf_counter()
                    for event in model.stream_chat(
                        messages, max_tokens=args.max_tokens, json_schema=schema
                    ):
                        if isinstance(event, Finished):
                            finished = event
                    steps.append(time.perf_counter() - t0)
                    assert finished is not None
                    if finished.stats.tokens_per_second:
                        per_token.append(1 / finished.stats.tokens_per_second)
                assert finished is not None
                check = "none" if schema is None else mode
                print(
                    f"| {name} | {len(gbnf)} | {statistics.median(builds) * 1000:.0f} | {check} "
                    f"| {statistics.median(per_token[1:]) * 1000:.1f} "
                    f"| {statistics.median(steps[1:]) * 1000:.0f} | {finished.stats.n_generated} "
                    f"| `{finished.text[:60]}` |",
                    flush=True,
                )
    finally:
        runtime._GreedyTokenFirst.sample = token_first  # type: ignore[method-assign]  # noqa: SLF001
        model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
