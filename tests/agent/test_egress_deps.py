"""mitmproxy is installed without its dependencies (see the Makefile): we list what it needs.

Its metadata pins h11<=0.14 (request smuggling) and cryptography<44.1, so
``make`` installs it with ``--no-deps`` and pyproject.toml lists, with safe
versions, the dependencies the proxy really imports. These tests start the
proxy and check that every mitmproxy dependency it loaded is in that list, so
a mitmproxy upgrade that needs another package fails here, not on a user's
machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_canonical(Requirement(r).name): Requirement(r) for r in project["dependencies"]}


def _mitmproxy_requirements() -> set[str]:
    names = set()
    for text in metadata.requires("mitmproxy") or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.add(_canonical(req.name))
    return names


# In a fresh interpreter: in the suite's own process, modules other tests
# loaded (hypothesis loads sortedcontainers) would count as the proxy's.
_PROBE = """
import sys
from agent.host.egress.proxy import EgressProxy, EgressVerdict

class Hooks:
    def decide(self, request):
        return EgressVerdict(False, "test")

    def record(self, kind, **fields):
        return None

proxy = EgressProxy(Hooks(), None, session_id="deps")
proxy.start()
try:
    print("\\n".join(sorted(sys.modules)))
finally:
    proxy.close()
"""


def test_every_mitmproxy_dependency_the_proxy_loads_is_listed() -> None:
    result = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE], cwd=ROOT, capture_output=True, text=True,
        check=True, timeout=60,
    )
    loaded = {name.partition(".")[0] for name in result.stdout.split()}
    assert "mitmproxy" in loaded  # the probe itself worked
    owners = metadata.packages_distributions()
    used = {_canonical(dist) for top in loaded for dist in owners.get(top, [])}
    needed = used & _mitmproxy_requirements()
    assert needed, "the proxy loaded none of mitmproxy's dependencies: this test saw nothing"
    missing = sorted(needed - set(_project_requirements()))
    assert not missing, f"mitmproxy needs {missing}: list them in pyproject.toml"


def test_listed_versions_are_installed_and_h11_is_not_the_vulnerable_one() -> None:
    listed = _project_requirements()
    assert "mitmproxy" not in listed  # installed with --no-deps by the Makefile
    for name in sorted(listed.keys() & _mitmproxy_requirements()):
        version = metadata.version(name)
        assert listed[name].specifier.contains(version, prereleases=True), (name, version)
    assert Version(metadata.version("h11")) >= Version("0.16")
    assert metadata.version("mitmproxy") == "11.0.2"
