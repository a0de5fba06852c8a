from __future__ import annotations

from datetime import UTC, datetime

from memory.frontmatter import UNPARSED_MARK, Provenance, TopicMeta, parse_topic, render_topic

NOW = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)


def test_round_trip_keeps_every_field() -> None:
    meta = TopicMeta(
        title="Deploy steps",
        created=NOW,
        updated=NOW,
        source=Provenance(session="s1", tool="remember", trust="model"),
        uses=3,
        last_used=NOW,
        status="archived",
        replaced_by="deploy",
    )
    text = render_topic(meta, "Run `make deploy`.\n\nThen check.")
    parsed = parse_topic(text, fallback_title="x", now=NOW)
    assert parsed.repairs == []
    assert parsed.meta == meta
    assert parsed.body == "Run `make deploy`.\n\nThen check.\n"
    assert render_topic(parsed.meta, parsed.body) == text


def test_missing_front_matter_gets_defaults_and_keeps_the_body() -> None:
    parsed = parse_topic("# Notes\nplain text\n", fallback_title="notes", now=NOW)
    assert parsed.meta.title == "notes"
    assert parsed.meta.created == NOW and parsed.meta.status == "active"
    assert parsed.meta.source.trust == "user"  # a person wrote it by hand
    assert parsed.body == "# Notes\nplain text\n"
    assert parsed.repairs == ["no front matter; added defaults"]


def test_broken_yaml_is_kept_as_a_comment_not_lost() -> None:
    text = "---\ntitle: [unclosed\nuses: 2 -->\n---\nbody line\n"
    parsed = parse_topic(text, fallback_title="fallback", now=NOW)
    assert parsed.meta.title == "fallback"
    assert parsed.body.startswith(UNPARSED_MARK)
    assert "title: [unclosed" in parsed.body and "body line" in parsed.body
    # the comment is not closed early by a "-->" inside the broken block
    assert parsed.body.count("-->") == 1
    assert "not valid YAML" in parsed.repairs[0]
    # and the repaired file parses cleanly next time
    again = parse_topic(render_topic(parsed.meta, parsed.body), fallback_title="y", now=NOW)
    assert again.repairs == [] and again.body == parsed.body.rstrip("\n") + "\n"


def test_bad_field_values_are_reset_one_by_one_and_unknown_keys_kept() -> None:
    text = (
        "---\ntitle: Keep me\ncreated: not-a-date\nuses: lots\nstatus: deleted\n"
        "source: {trust: root, session: s9}\ncolour: blue\n---\nbody\n"
    )
    parsed = parse_topic(text, fallback_title="x", now=NOW)
    assert parsed.meta.title == "Keep me"
    assert parsed.meta.created == NOW
    assert parsed.meta.uses == 0
    assert parsed.meta.status == "active"
    assert parsed.meta.source == Provenance(session="s9", trust="user")
    assert parsed.meta.model_extra == {"colour": "blue"}
    assert set(parsed.repairs) == {
        "created is not a date; reset",
        "source is invalid; reset to trust 'user'",
        "uses is invalid; reset",
        "status is invalid; reset",
    }
    assert "colour: blue" in render_topic(parsed.meta, parsed.body)


def test_non_mapping_front_matter_and_bare_dates_are_repaired() -> None:
    parsed = parse_topic("---\n- a\n- b\n---\ntext\n", fallback_title="t", now=NOW)
    assert "- a" in parsed.body and "not a mapping" in parsed.repairs[0]
    dated = parse_topic("---\ntitle: T\ncreated: 2025-01-02\n---\nx\n", fallback_title="t", now=NOW)
    assert dated.meta.created == datetime(2025, 1, 2, tzinfo=UTC)
    assert dated.meta.updated == dated.meta.created
