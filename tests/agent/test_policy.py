"""The permission policy: rule syntax, matching, precedence, taint, persistence."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlite_utils
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import PolicyError
from agent.host.policy import (
    Action,
    PolicyEngine,
    Rule,
    RuleStore,
    ToolCallRequest,
    path_matches,
    suggest_rule,
)


def allow(text: str) -> Rule:
    return Rule.parse(text, action="allow")


def deny(text: str) -> Rule:
    return Rule.parse(text, action="deny")


def ask(text: str) -> Rule:
    return Rule.parse(text, action="ask")


def shell(command: str, *, sandbox: bool = True) -> ToolCallRequest:
    return ToolCallRequest(tool="shell", arguments={"command": command}, sandbox_available=sandbox)


def decide(rules: list[Rule], request: ToolCallRequest, *, tainted: bool = False) -> Action:
    return PolicyEngine(rules).decide(request, tainted=tainted).action


# -- rule syntax --------------------------------------------------------------------------------


def test_parse_and_str_round_trip() -> None:
    rule = Rule.parse("shell(npm run test:*)", action="allow", scope="workspace")
    assert (rule.tool, rule.pattern, rule.action, rule.scope) == (
        "shell", "npm run test:*", "allow", "workspace",
    )  # fmt: skip
    assert str(rule) == "shell(npm run test:*)"
    assert Rule.parse("read_file", action="allow").pattern == "*"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("rm_everything(*)", "rule 'rm_everything\\(\\*\\)' is invalid: unknown tool"),
        ("shell(echo 'unbalanced)", "shell pattern does not parse"),
        ("http_request(api.github.com)", "patterns look like 'domain:api.example.com'"),
        ("http_request(domain:api.*.com)", "is not a host name"),
        ("*(src/**)", "must have the pattern '\\*'"),
        ("read_file()", "pattern is empty"),
        ("finish(x)", "finish takes no pattern"),
        ("not a rule", "is not of the form tool\\(pattern\\)"),
    ],
)
def test_bad_rules_are_named(text: str, needle: str) -> None:
    with pytest.raises(PolicyError, match=needle):
        Rule.parse(text, action="allow")


# -- defaults and precedence ---------------------------------------------------------------------


def test_defaults_by_effect(workspace: Path) -> None:
    engine = PolicyEngine()
    expect = {
        "read_file": "allow", "list_dir": "allow", "search_files": "allow", "recall": "allow",
        "finish": "allow", "write_file": "ask", "edit_file": "ask", "shell": "ask",
        "http_request": "ask", "remember": "ask", "forget": "ask",
    }  # fmt: skip
    for tool, action in expect.items():
        decision = engine.decide(ToolCallRequest(tool=tool, arguments={}), tainted=False)
        assert decision.action == action, tool
        assert decision.rule is None and decision.reason.startswith("default for")


def test_deny_beats_ask_beats_allow_whatever_the_order() -> None:
    rules = [allow("shell(*)"), ask("shell(git push)"), deny("shell(git push --force)")]
    engine = PolicyEngine(rules)
    d = engine.decide(shell("git push --force origin main"), tainted=False)
    assert d.action == "deny" and d.rule == rules[2]
    assert d.reason == "denied by rule shell(git push --force)"
    assert engine.decide(shell("git push origin"), tainted=False).action == "ask"
    assert engine.decide(shell("ls"), tainted=False).action == "allow"


def test_first_match_wins_within_an_action() -> None:
    first, second = deny("read_file(secrets/**)"), deny("read_file(*.key)")
    d = PolicyEngine([first, second]).decide(
        ToolCallRequest(tool="read_file", arguments={"path": "secrets/a.key"}), tainted=False
    )
    assert d.rule == first


def test_unknown_tool_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="unknown tool 'nope'"):
        PolicyEngine().decide(ToolCallRequest(tool="nope"), tainted=False)


# -- shell patterns ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "command", "expected"),
    [
        ("git status", "git status", "allow"),
        ("git status", "git   status", "allow"),
        ("git status", "git status --short", "ask"),
        ("git status", "git statusx", "ask"),
        ("npm run test:*", "npm run test:unit --watch", "allow"),
        ("npm run test:*", "npm run testing", "ask"),
        ("npm run test:*", "npm run build", "ask"),
        ("git *", "git log -3", "allow"),
        ("git *", "gitk", "ask"),
        ("git status", "git status && rm -rf src", "ask"),
        ("git status", "git status; curl x", "ask"),
        ("git status", "git status | sh", "ask"),
        ("git status", "git status\nrm -rf src", "ask"),
        ("git status", "git status $(rm -rf src)", "ask"),
        ("git status", "git status `rm -rf src`", "ask"),
        ("git status", "git status > .bashrc", "ask"),
        ("git status", "GIT_EXTERNAL_DIFF=evil git status", "ask"),
        ("git status", "git status 'unbalanced", "ask"),
    ],
)
def test_shell_allow_patterns(pattern: str, command: str, expected: Action) -> None:
    assert decide([allow(f"shell({pattern})")], shell(command)) == expected


def test_chained_commands_each_matching_an_allow_rule_are_allowed() -> None:
    rules = [allow("shell(git status)"), allow("shell(npm run test:*)")]
    assert decide(rules, shell("git status && npm run test:unit")) == "allow"
    assert decide(rules, shell("git status && npm run build")) == "ask"


@pytest.mark.parametrize(
    "command",
    [
        "rm -rf src",
        "ls; rm -rf src",
        "ls && rm x",
        "ls | rm x",
        "FOO=1 rm x",
        "sudo rm x",
        "env A=1 rm x",
        "echo $(rm -rf src)",
        "echo `rm x`",
        "(rm x)",
        "ls\nrm x",
        "/bin/rm x",
        "'rm' x",
        "r\\m x",
        "bash -c 'ls; rm -rf src'",
        "sh -c \"sh -c 'rm x'\"",
        "timeout 5 rm x",
        "timeout -s KILL 5 nice -n 3 rm x",
        "eval rm x",
    ],
)
def test_shell_deny_patterns_see_through_chains_wrappers_and_substitutions(command: str) -> None:
    rules = [allow("shell(*)"), deny("shell(rm)")]
    assert decide(rules, shell(command)) == "deny"


def test_shell_star_allows_even_opaque_commands_but_unsandboxed_always_asks() -> None:
    rules = [allow("shell(*)")]
    assert decide(rules, shell("echo $(date)")) == "allow"
    # With a deny rule in force, a command that hides what it runs asks instead.
    for hidden in ("X=rm; $X -rf src", "echo $(date)", "eval \"$CMD\""):
        d = PolicyEngine([*rules, deny("shell(rm)")]).decide(shell(hidden), tainted=False)
        assert d.action == "ask" and "built at run time" in d.reason, hidden
    d = PolicyEngine(rules).decide(shell("ls", sandbox=False), tainted=False)
    assert d.action == "ask" and d.unsandboxed and "WITHOUT a sandbox" in d.reason
    d2 = PolicyEngine([deny("shell(ls)")]).decide(shell("ls", sandbox=False), tainted=False)
    assert d2.action == "deny" and not d2.unsandboxed


# -- path patterns -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("src/**", "src/a.py", True),
        ("src/**", "src/pkg/deep/a.py", True),
        ("src/**", "srcx/a.py", False),
        ("src/**", "lib/src/a.py", False),
        ("src", "src/pkg/a.py", True),
        ("*.py", "a.py", True),
        ("*.py", "pkg/deep/a.py", True),
        ("*.py", "a.pyc", False),
        ("/*.py", "pkg/a.py", False),
        ("docs/*.md", "docs/a.md", True),
        ("docs/*.md", "docs/sub/a.md", False),
        ("**/test_*.py", "tests/agent/test_x.py", True),
        ("**/test_*.py", "test_x.py", True),
        ("secret[0-9].txt", "secret7.txt", True),
        ("*", "anything/at/all", True),
    ],
)
def test_gitignore_style_globs(pattern: str, path: str, expected: bool) -> None:
    assert path_matches(pattern, path) is expected


def test_path_rules_match_the_resolved_path(workspace: Path) -> None:
    (workspace / "secrets").mkdir()
    (workspace / "secrets" / "k.txt").write_text("x")
    os.symlink("secrets", workspace / "innocent")
    rules = [allow("read_file(*)"), deny("read_file(secrets/**)")]
    absolute = str(workspace / "secrets/k.txt")
    for path in ("secrets/k.txt", "./secrets/k.txt", "innocent/k.txt", absolute):
        request = ToolCallRequest(tool="read_file", arguments={"path": path}, workspace=workspace)
        assert decide(rules, request) == "deny", path
    ok = ToolCallRequest(tool="read_file", arguments={"path": "README"}, workspace=workspace)
    assert decide(rules, ok) == "allow"


# -- network, taint, capabilities ----------------------------------------------------------------


def http(url: str, capability: str | None = None) -> ToolCallRequest:
    return ToolCallRequest(tool="http_request", arguments={"url": url, "capability": capability})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.github.com/user", "allow"),
        ("https://API.GitHub.com./user", "allow"),
        ("https://api.github.com.evil.example/", "ask"),
        ("https://api.github.com@evil.example/", "ask"),
        ("https://evil.example/?u=api.github.com", "ask"),
        ("not a url", "ask"),
    ],
)
def test_domain_rules(url: str, expected: Action) -> None:
    assert decide([allow("http_request(domain:api.github.com)")], http(url)) == expected


def test_subdomain_wildcard() -> None:
    rules = [allow("http_request(domain:*.github.com)")]
    assert decide(rules, http("https://raw.github.com/x")) == "allow"
    assert decide(rules, http("https://github.com.evil.example/")) == "ask"


def test_taint_turns_network_and_capability_use_into_ask() -> None:
    rules = [allow("http_request(*)"), deny("http_request(domain:evil.example)")]
    engine = PolicyEngine(rules)
    assert engine.decide(http("https://api.x.com/"), tainted=False).action == "allow"
    tainted = engine.decide(http("https://api.x.com/", "cap_1"), tainted=True)
    assert tainted.action == "ask" and tainted.rule is None
    assert tainted.reason == "untrusted content is in the context and this call uses a capability"
    assert engine.decide(http("https://evil.example/"), tainted=True).action == "deny"
    reads = PolicyEngine([allow("read_file(*)")])
    read = ToolCallRequest(tool="read_file", arguments={"path": "a"})
    assert reads.decide(read, tainted=True).action == "allow"


# -- property: precedence ------------------------------------------------------------------------

_PATHS = ["src/a.py", "src/b/c.py", "docs/x.md", "README"]
_PATTERNS = ["*", "src/**", "docs/**", "README", "zzz/**", "*.py"]


def _reference(rules: list[Rule], path: str) -> tuple[Action, Rule | None]:
    def hit(rule: Rule) -> bool:
        p = rule.pattern
        if p == "*":
            return True
        if p.endswith("/**"):
            return path.startswith(p[:-2])
        if p == "*.py":
            return path.endswith(".py")
        return p == path

    for action in ("deny", "ask", "allow"):
        for rule in rules:
            if rule.action == action and hit(rule):
                return action, rule
    return "allow", None  # read_file's default


@settings(max_examples=300, deadline=None)
@given(
    spec=st.lists(
        st.tuples(st.sampled_from(["allow", "ask", "deny"]), st.sampled_from(_PATTERNS)),
        max_size=8,
    ),
    path=st.sampled_from(_PATHS),
)
def test_property_precedence_matches_the_reference(
    spec: list[tuple[Action, str]], path: str
) -> None:
    rules = [Rule(tool="read_file", pattern=p, action=a) for a, p in spec]
    decision = PolicyEngine(rules).decide(
        ToolCallRequest(tool="read_file", arguments={"path": path}), tainted=False
    )
    action, rule = _reference(rules, path)
    assert (decision.action, decision.rule) == (action, rule)


@settings(max_examples=200, deadline=None)
@given(
    extra=st.lists(
        st.tuples(st.sampled_from(["allow", "ask"]), st.sampled_from(["*", "rm", "ls *", "git *"])),
        max_size=6,
    ),
    command=st.sampled_from(["rm -rf x", "ls; rm x", "echo $(rm x)", "sudo rm x"]),
    sandbox=st.booleans(),
    tainted=st.booleans(),
)
def test_property_deny_holds_in_every_mode(
    extra: list[tuple[Action, str]], command: str, sandbox: bool, tainted: bool
) -> None:
    rules = [Rule(tool="shell", pattern=p, action=a) for a, p in extra]
    rules.insert(len(rules) // 2, deny("shell(rm)"))
    d = PolicyEngine(rules).decide(shell(command, sandbox=sandbox), tainted=tainted)
    assert d.action == "deny"


# -- suggestions and persistence -----------------------------------------------------------------


def test_suggest_rule_is_exact(workspace: Path) -> None:
    assert str(suggest_rule(shell("npm run test:unit"))) == "shell(npm run test:unit)"
    assert str(suggest_rule(http("https://api.github.com/user?x=1"))) == (
        "http_request(domain:api.github.com)"
    )
    req = ToolCallRequest(tool="write_file", arguments={"path": "./src/a.py"}, workspace=workspace)
    rule = suggest_rule(req)
    assert str(rule) == "write_file(src/a.py)" and rule.scope == "workspace"


def test_rule_store_round_trip(tmp_path: Path, workspace: Path) -> None:
    db = tmp_path / "data" / "keyless.db"
    store = RuleStore(db, workspace=workspace)
    when = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    user_rule = Rule.parse("http_request(domain:api.github.com)", action="allow", scope="user")
    ws_rule = Rule.parse("shell(npm run test:*)", action="allow", scope="workspace")
    user_id = store.add(user_rule)
    ws_id = store.add(ws_rule, now=when)
    store.close()

    again = RuleStore(db)
    stored = again.stored(workspace)
    assert [(s.id, str(s.rule), s.rule.scope) for s in stored] == [
        (ws_id, "shell(npm run test:*)", "workspace"),
        (user_id, "http_request(domain:api.github.com)", "user"),
    ]
    assert stored[0].created_at == when
    assert [str(r) for r in again.rules(tmp_path)] == ["http_request(domain:api.github.com)"]
    again.remove(ws_id)
    assert [str(r) for r in again.rules(workspace)] == ["http_request(domain:api.github.com)"]
    with pytest.raises(PolicyError, match="no saved rule with id 999"):
        again.remove(999)
    again.close()


def test_rule_store_refuses_misfiled_rules(tmp_path: Path, workspace: Path) -> None:
    store = RuleStore(tmp_path / "keyless.db")
    with pytest.raises(PolicyError, match="scope 'session'; session rules are not saved"):
        store.add(Rule.parse("shell(ls)", action="allow"))
    with pytest.raises(PolicyError, match="scope 'workspace' but no workspace"):
        store.add(Rule.parse("shell(ls)", action="allow", scope="workspace"))
    with pytest.raises(PolicyError, match="scope 'user'; it applies to every workspace"):
        store.add(Rule.parse("shell(ls)", action="allow", scope="user"), workspace=workspace)
    store.close()


def test_rule_store_names_a_corrupt_row(tmp_path: Path) -> None:
    db = tmp_path / "keyless.db"
    RuleStore(db).close()
    raw = sqlite_utils.Database(db)
    raw["policy_rules"].insert(
        {"scope": "user", "workspace": "", "tool": "shell", "pattern": "echo 'x",
         "action": "allow", "created_at": "2026-11-27T06:00:00+00:00"}
    )  # fmt: skip
    raw.close()
    store = RuleStore(db)
    with pytest.raises(PolicyError, match="saved rule #1 shell\\(echo 'x\\) -> allow is invalid"):
        store.rules()
    store.close()


def test_unopenable_store_is_a_policy_error(tmp_path: Path) -> None:
    (tmp_path / "keyless.db").mkdir()
    with pytest.raises(PolicyError, match="cannot open the rule store"):
        RuleStore(tmp_path / "keyless.db")


def test_read_filter_carries_read_denials_to_search(workspace: Path) -> None:
    from agent.host.tools.base import ToolContext
    from agent.host.tools.registry import run_tool

    (workspace / "secrets").mkdir()
    (workspace / "secrets" / "db.txt").write_text("password = hunter2\n")
    (workspace / "app.txt").write_text("password = see vault\n")
    engine = PolicyEngine([deny("read_file(secrets/**)"), deny("write_file(*)")])
    may_read = engine.read_filter()
    assert not may_read("secrets/db.txt") and may_read("app.txt")
    ctx = ToolContext(workspace=workspace, session_id="s1", may_read=may_read)
    out = run_tool("search_files", {"query": "password"}, ctx)
    assert out.content == "app.txt:1: password = see vault"


def test_unresolved_paths_cannot_dodge_deny_rules(workspace: Path) -> None:
    rules = [allow("read_file(secrets/**)"), deny("read_file(secrets/k.txt)")]
    for path in ("/home/u/ws/secrets/k.txt", "x/../secrets/k.txt", "secrets/k.txt"):
        request = ToolCallRequest(tool="read_file", arguments={"path": path})
        assert decide(rules, request) == "deny", path
    only_allow = [allow("write_file(secrets/**)")]
    absolute = ToolCallRequest(tool="write_file", arguments={"path": "/elsewhere/secrets/a"})
    assert decide(only_allow, absolute) == "ask"
    # The engine's own workspace resolves requests that carry none.
    (workspace / "secrets").mkdir()
    os.symlink("secrets", workspace / "innocent")
    engine = PolicyEngine([deny("read_file(secrets/**)")], workspace=workspace)
    request = ToolCallRequest(tool="read_file", arguments={"path": "innocent/k.txt"})
    assert engine.decide(request, tainted=False).action == "deny"


@pytest.mark.parametrize(
    "command",
    [
        "git status#x; rm -rf .",  # '#' inside a word is no comment for sh
        "git status #x; rm -rf .",
    ],
)
def test_hash_does_not_hide_a_chained_command(command: str) -> None:
    assert decide([allow("shell(git status)")], shell(command)) != "allow"
    assert decide([deny("shell(rm)"), allow("shell(*)")], shell(command)) == "deny"


@pytest.mark.parametrize("command", ["$0 -c 'rm -rf .'", "echo x; $0 -c 'rm -rf .'", "$1 x"])
def test_positional_and_special_parameters_are_dynamic(command: str) -> None:
    # $0 is /bin/sh itself: it runs a command no deny rule can see.
    assert decide([deny("shell(rm)"), allow("shell(*)")], shell(command)) == "ask"
    assert decide([allow("shell(echo *)")], shell(command)) != "allow"


@pytest.mark.parametrize("command", ["sh -ec 'rm -rf .'", "bash -xc 'rm -rf .'", "sh -e -c 'rm x'"])
def test_deny_sees_inside_sh_with_combined_flags(command: str) -> None:
    assert decide([deny("shell(rm)"), allow("shell(*)")], shell(command)) == "deny"


@pytest.mark.parametrize("url", ["https://ｅｖｉｌ.example/x", "https://EVIL.example。/x"])
def test_domain_deny_sees_the_host_the_broker_will_call(url: str) -> None:
    # The broker maps full-width letters and dots to ASCII (IDNA): so must the rule.
    rules = [allow("http_request(*)"), deny("http_request(domain:evil.example)")]
    assert decide(rules, http(url)) == "deny"


# -- credential files ---------------------------------------------------------------------------


def read(path: str, workspace: Path | None = None) -> ToolCallRequest:
    return ToolCallRequest(tool="read_file", arguments={"path": path}, workspace=workspace)


@pytest.mark.parametrize(
    "path",
    [
        ".env", ".env.local", "config/.env.production", "certs/server.pem", "tls/site.key",
        "home/.ssh/id_rsa", "id_ed25519.pub", ".npmrc", "sub/.netrc", ".pypirc",
        "aws/credentials", "credentials.json", "passwords.kdbx",
    ],
)  # fmt: skip
def test_reading_a_credential_file_asks_by_default(path: str) -> None:
    decision = PolicyEngine([]).decide(read(path), tainted=False)
    assert decision.action == "ask"
    assert "credentials" in decision.reason


@pytest.mark.parametrize(
    "path", ["README.md", "src/id_utils.py", "environment.py", "docs/keys.md", "env/settings.toml"]
)
def test_ordinary_files_are_still_read_without_asking(path: str) -> None:
    assert decide([], read(path)) == "allow"


def test_a_rule_for_the_path_decides_a_credential_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("X=1\n")
    assert decide([allow("read_file(.env)")], read(".env", tmp_path)) == "allow"
    assert decide([deny("read_file(.env*)")], read(".env", tmp_path)) == "deny"
    # A resolved path counts: "./sub/../.env" is still .env.
    (tmp_path / "sub").mkdir()
    assert decide([], read("./sub/../.env", tmp_path)) == "ask"


def test_writing_and_listing_keep_their_defaults() -> None:
    assert decide([], ToolCallRequest(tool="list_dir", arguments={"path": ".env"})) == "allow"
    assert decide([], ToolCallRequest(tool="write_file", arguments={"path": ".env"})) == "ask"
