"""`keyless --self-test`: every step for real, and a failing step exits 1."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from app import selftest
from app.cli import main


@pytest.mark.model
@pytest.mark.slow
def test_self_test_passes_on_a_working_installation() -> None:
    out = io.StringIO()
    assert selftest.run_self_test(out) == 0, out.getvalue()
    text = out.getvalue()
    assert "ok   model" in text and "evicted" in text
    assert "ok   vault" in text and "ok   agent" in text
    assert text.rstrip().endswith("self-test passed")


def test_a_failing_step_is_named_and_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(tmp: Path) -> str:
        raise selftest.SelfTestError("the widget is missing")

    monkeypatch.setattr(selftest, "STEPS", (("vault", selftest._check_vault), ("widget", broken)))
    out = io.StringIO()
    assert selftest.run_self_test(out) == 1
    assert "ok   vault" in out.getvalue()
    assert "FAIL widget: SelfTestError: the widget is missing" in out.getvalue()


def test_cli_flag_runs_the_self_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selftest, "STEPS", (("vault", selftest._check_vault),))
    assert main(["--self-test"]) == 0
