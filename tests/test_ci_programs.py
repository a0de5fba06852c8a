"""The suite starts only programs that `.ci/run` installs or the venv holds.

The session-wide check (every program the pytest process actually started)
runs at the end of the session, from ``tests/conftest.py``; these tests check
the code's literal program names and that the checker itself catches a gap.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests import ci_programs

needs_dpkg = pytest.mark.skipif(
    not ci_programs.dpkg_available(), reason="package ownership needs dpkg (Debian)"
)


def test_the_package_list_is_read_from_ci_run() -> None:
    packages = ci_programs.ci_packages()
    assert {"bubblewrap", "xvfb", "xdotool", "gnome-keyring"} <= packages
    assert not any(p.startswith(("#", "(", ")")) for p in packages)


@needs_dpkg
def test_every_program_the_code_names_comes_from_ci_run_or_the_venv() -> None:
    named = ci_programs.scan()
    assert {"bwrap", "Xvfb", "xdotool", "dbus-run-session"} <= named.keys()
    problems = ci_programs.check(named, ci_programs.ci_packages())
    assert not problems, "\n".join(map(str, problems))


def test_the_scan_finds_a_program_behind_a_skip() -> None:
    source = """
import shutil, subprocess, os
pytestmark = pytest.mark.skipif(not shutil.which("import"), reason="no ImageMagick")
def shoot():
    subprocess.run(["import", "-window", "root", "x.png"], check=False)
    subprocess.check_output("xwd -root -silent", shell=True)
    os.execvp("convert", ["convert"])
    subprocess.run([sys.executable, "-c", "pass"])
"""
    found = sorted(ci_programs.programs_in_python(source), key=lambda hit: hit[1])
    assert found == [("import", 3), ("import", 5), ("xwd", 6), ("convert", 7)]
    assert list(ci_programs.programs_in_shell("if command -v xwd >/dev/null; then")) == [
        ("xwd", 1)
    ]


@needs_dpkg
def test_a_program_that_is_not_installed_is_flagged_with_what_to_do() -> None:
    [problem] = ci_programs.check(
        {"no-such-program-kl": "tests/app/test_e2e_xvfb.py:97"}, ci_programs.ci_packages()
    )
    assert problem.program == "no-such-program-kl"
    assert "not installed" in str(problem) and ".ci/run" in str(problem)


@needs_dpkg
@pytest.mark.skipif(not shutil.which("Xvfb"), reason="needs an installed program to own")
def test_a_program_from_a_package_ci_run_does_not_install_is_flagged() -> None:
    # As ImageMagick's `import` was: installed here by hand, absent from the list.
    xvfb = shutil.which("Xvfb")
    assert xvfb is not None
    packages = ci_programs.ci_packages() - {"xvfb"}
    [problem] = ci_programs.check({"Xvfb": xvfb}, packages)
    assert "comes from xvfb, which .ci/run does not install" in str(problem)
    assert ci_programs.check({"Xvfb": xvfb}, ci_programs.ci_packages()) == []


@needs_dpkg
def test_essential_programs_and_the_venv_need_no_listing() -> None:
    assert ci_programs.check({"sh": "/bin/sh", "python": sys.executable}, set()) == []


def test_the_session_recorder_sees_every_program_started() -> None:
    true = shutil.which("true", path=ci_programs.FRESH_PATH)
    assert true is not None
    subprocess.run(["true"], check=True)
    assert ci_programs.RECORDER.active
    assert ci_programs.RECORDER.started.get("true") == shutil.which("true")
