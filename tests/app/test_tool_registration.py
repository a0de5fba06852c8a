"""Adding a tool is one module plus one registration: everything else follows from the registry.

The tool below lives in the test tree. Once registered it is in the grammar the
agent process decodes against (the agent process never imports it: it learns
it from the host's offer), in the policy's rules and defaults, in the
permission prompt, in the host's default tools and in the settings screen.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import Field
from pytestqt.qtbot import QtBot

from agent.host.errand import AgentHost
from agent.host.permission import PermissionAnswer
from agent.host.policy import PolicyEngine, Rule, ToolCallRequest, suggest_rule
from agent.host.tools import registry
from agent.host.tools.base import ArgsModel, ToolContext, ToolOutput, ToolSpec
from agent.protocol import step_schema
from app.controllers.settings_controller import SettingsController
from app.paths import default_paths
from app.settings import AppSettings
from app.terminal_prompt import TerminalPrompt
from app.views.settings_view import SettingsView
from tests.agent.hostkit import call, final, make_rig


class StampArgs(ArgsModel):
    """Arguments of ``stamp``."""

    path: str = Field(description="The workspace file to stamp.")


def _stamp(args: StampArgs, ctx: ToolContext) -> ToolOutput:
    del ctx
    return ToolOutput(content=f"stamped {args.path}", untrusted=False)


STAMP = ToolSpec(
    name="stamp",
    description="Stamp a file as reviewed.",
    args_model=StampArgs,
    effect="write",
    run=_stamp,
    main_argument="path",
    pattern="path",
)


@pytest.fixture
def stamp() -> Iterator[ToolSpec]:
    registry.register(STAMP)
    try:
        yield STAMP
    finally:
        registry.ALL_TOOLS.pop(STAMP.name)


def test_a_name_is_registered_once(stamp: ToolSpec) -> None:
    with pytest.raises(ValueError, match="'stamp' is already registered"):
        registry.register(stamp)


def test_a_registered_tool_is_in_the_grammar_and_the_defaults(stamp: ToolSpec) -> None:
    schema = step_schema(registry.offers(["stamp"]))
    [option] = [o for o in schema["anyOf"] if o["properties"].get("tool") == {"const": "stamp"}]
    assert option["properties"]["arguments"] == StampArgs.model_json_schema()
    assert "stamp" in registry.default_tools()
    assert "finish" not in registry.default_tools()


def test_the_policy_reads_the_tools_data(stamp: ToolSpec, workspace: Path) -> None:
    policy = PolicyEngine([Rule.parse("stamp(secret/**)", action="deny", scope="workspace")])

    def decide(path: str) -> str:
        request = ToolCallRequest(tool="stamp", arguments={"path": path}, workspace=workspace)
        return policy.decide(request, tainted=False).action

    assert decide("secret/plan.md") == "deny"  # a path rule, matched like the file tools'
    assert decide("notes.md") == "ask"  # the default for a write
    request = ToolCallRequest(
        tool="stamp", arguments={"path": "./notes.md"}, workspace=workspace
    )
    assert str(suggest_rule(request)) == "stamp(notes.md)"  # resolved, as for file tools


def test_an_errand_calls_it_through_the_agent_process_and_the_prompt(
    stamp: ToolSpec, tmp_path: Path, workspace: Path
) -> None:
    rig = make_rig(
        tmp_path,
        workspace,
        [call("stamp", path="notes.md"), final("stamped")],
        answers=[PermissionAnswer(choice="once")],
        tools=("stamp",),
    )
    try:
        result = rig.host.run_errand("stamp the notes")
    finally:
        rig.host.close()
    assert (result.outcome, result.text) == ("final", "stamped")
    [record] = result.tool_calls
    assert (record.tool, record.ok, record.summary) == ("stamp", True, "stamped notes.md")
    [asked] = rig.prompt.asked
    assert (asked.tool, asked.effect, str(asked.suggested_rule)) == (
        "stamp",
        "write",
        "stamp(notes.md)",
    )
    out = io.StringIO()
    assert TerminalPrompt(io.StringIO("o\n"), out).ask(asked).choice == "once"
    assert "Permission needed: stamp (write)" in out.getvalue()


def test_a_host_offers_it_by_default(stamp: ToolSpec, tmp_path: Path, workspace: Path) -> None:
    host = AgentHost(
        None,
        workspace=workspace,
        broker=None,
        memory=None,
        policy=PolicyEngine(),
        prompt=TerminalPrompt(io.StringIO(), io.StringIO()),
        audit=None,
        session_id="s",
    )
    offered = [offer.name for offer in host._task("x").tools]
    assert offered == [*registry.default_tools(), "finish"] and "stamp" in offered


def test_the_settings_screen_offers_it_for_rules(
    stamp: ToolSpec, qtbot: QtBot, workspace: Path
) -> None:
    controller = SettingsController(default_paths().ensure(), AppSettings(workspace=str(workspace)))
    with qtbot.wait_signals([controller.rules_loaded, controller.sandbox_detected], timeout=20_000):
        view = SettingsView(controller)
        qtbot.add_widget(view)
    try:
        tools = [view.tool.itemText(i) for i in range(view.tool.count())]
        assert "stamp" in tools and "finish" not in tools
    finally:
        controller.wait()
