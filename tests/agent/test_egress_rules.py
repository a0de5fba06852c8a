"""``net(...)`` rules and the host hooks that decide proxied requests."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import PolicyError
from agent.host.egress.hooks import PolicyEgressHooks
from agent.host.egress.proxy import EgressRequest
from agent.host.policy import Decision, PolicyEngine, Rule, ToolCallRequest, suggest_rule


def _request(host: str, method: str = "GET", capability: str | None = None) -> EgressRequest:
    return EgressRequest("git push", "https", host, 443, method, "/x", capability)


def _hooks(rules: list[Rule], *, answer: bool = False, tainted: bool = False) -> tuple[
    PolicyEgressHooks, list[dict[str, Any]], list[str]
]:
    asked: list[dict[str, Any]] = []
    kinds: list[str] = []

    def ask(call: ToolCallRequest, decision: Decision) -> bool:
        asked.append({**call.arguments, "reason": decision.reason,
                      "rule": str(suggest_rule(call))})
        return answer

    hooks = PolicyEgressHooks(
        PolicyEngine(rules), ask=ask, record=lambda kind, **_: kinds.append(kind),
        tainted=lambda: tainted,
    )
    return hooks, asked, kinds


def test_net_rules_parse_and_refuse_bad_patterns() -> None:
    assert str(Rule.parse("net(*.pypi.org, GET)", action="allow")) == "net(*.pypi.org, GET)"
    with pytest.raises(PolicyError, match="not a host name"):
        Rule.parse("net(http://x)", action="allow")
    with pytest.raises(PolicyError, match="not an HTTP method"):
        Rule.parse("net(x.com, G3T)", action="allow")


def test_deny_beats_allow_and_methods_narrow_a_rule() -> None:
    rules = [
        Rule.parse("net(*.pypi.org, GET)", action="allow"),
        Rule.parse("net(evil.pypi.org)", action="deny"),
    ]
    hooks, asked, kinds = _hooks(rules)
    assert hooks.decide(_request("files.pypi.org")).allowed
    assert not hooks.decide(_request("evil.pypi.org")).allowed
    # POST is not in the rule: the default asks; the user says no.
    assert not hooks.decide(_request("files.pypi.org", "POST")).allowed
    assert asked and asked[0]["method"] == "POST" and asked[0]["command"] == "git push"
    assert kinds == ["egress_decision"] * 3


def test_taint_makes_a_capability_ask_even_when_a_rule_allows() -> None:
    hooks, asked, _ = _hooks([Rule.parse("net(github.com)", action="allow")], tainted=True)
    assert hooks.decide(_request("github.com")).allowed  # no capability: the rule holds
    assert not hooks.decide(_request("github.com", capability="cap_" + "0" * 32)).allowed
    assert "untrusted content" in asked[0]["reason"]


def test_net_is_a_rule_kind_of_the_registry_never_a_tool_the_model_gets() -> None:
    from agent.errors import UnknownToolError
    from agent.host.tools import registry
    from agent.host.tools.net import NET_RULE

    assert registry.rule_spec(NET_RULE) is registry.RULE_KINDS[NET_RULE]
    assert NET_RULE in registry.rule_names()  # the settings screen offers it
    assert NET_RULE not in registry.ALL_TOOLS and NET_RULE not in registry.default_tools()
    with pytest.raises(UnknownToolError):
        registry.offers([NET_RULE])
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.RULE_KINDS[NET_RULE])


def test_the_policy_reads_the_request_pattern_kind_not_the_name() -> None:
    # A rule kind under another name, with net's data: the same rules hold for it.
    from dataclasses import replace

    from agent.host.tools import registry

    spec = replace(registry.RULE_KINDS["net"], name="net_copy")
    registry.RULE_KINDS[spec.name] = spec
    try:
        with pytest.raises(PolicyError, match="not an HTTP method"):
            Rule.parse("net_copy(x.com, G3T)", action="allow")
        engine = PolicyEngine([Rule.parse("net_copy(*.pypi.org, GET)", action="allow")])
        host = "files.pypi.org"
        get = ToolCallRequest(tool="net_copy", arguments={"host": host, "method": "GET"})
        post = get.model_copy(update={"arguments": {"host": host, "method": "POST"}})
        assert engine.decide(get, tainted=True).action == "allow"  # no capability
        assert engine.decide(post, tainted=False).action == "ask"
        assert str(suggest_rule(post)) == "net_copy(files.pypi.org)"
    finally:
        del registry.RULE_KINDS[spec.name]
