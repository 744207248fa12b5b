"""The demo's embedded servers are the `demo` extra: production code runs without them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from csm_router.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
DEMO_PACKAGES = ("pymap", "fakeredis")
PRODUCTION_MODULES = ("csm_router.cli.main", "csm_router.app.router", "csm_router.app.worker",
                      "csm_router.app.web")
MISSING_LINE = ("csm-router: the demo needs its embedded servers: "
                "pip install 'csm-router[demo]' (./scripts/demo does this)")


def project() -> dict[str, object]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(data, dict)
    return data


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return match.group(0).lower().replace("_", "-")


def test_runtime_dependencies_leave_out_the_demo_servers() -> None:
    names = {requirement_name(r) for r in project()["dependencies"]}  # type: ignore[attr-defined]
    assert names, "no runtime dependencies read"
    assert not names & set(DEMO_PACKAGES)


def test_demo_extra_has_the_servers_and_test_extra_pulls_in_the_demo() -> None:
    extras = project()["optional-dependencies"]
    assert isinstance(extras, dict)
    assert {requirement_name(r) for r in extras["demo"]} == set(DEMO_PACKAGES)
    assert "csm-router[demo]" in extras["test"]


def test_production_modules_import_none_of_the_demo_servers() -> None:
    # A fresh interpreter: this one has imported fakeredis for other tests already.
    code = (f"import sys\nfor m in {PRODUCTION_MODULES!r}: __import__(m)\n"
            "import json\nprint(json.dumps(sorted(m.partition('.')[0] for m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert "csm_router" in loaded
    assert not loaded & set(DEMO_PACKAGES), sorted(loaded & set(DEMO_PACKAGES))


def test_demo_without_its_extra_says_how_to_install_it_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules makes an import fail as if the package were not installed; the
    # demo's own modules are imported afresh, so that they meet that failure.
    for name in DEMO_PACKAGES:
        monkeypatch.setitem(sys.modules, name, None)
    for name in [m for m in sys.modules if m.startswith(("csm_router.demo",))]:
        monkeypatch.delitem(sys.modules, name)
    code = main(["demo"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err == MISSING_LINE + "\n"
    assert captured.out == ""


def test_demo_reraises_a_missing_module_that_is_not_the_extras(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A module missing from the product itself is a bug to show, not an install to advise.
    monkeypatch.setitem(sys.modules, "csm_router.demo.run", None)
    with pytest.raises(ModuleNotFoundError):
        main(["demo"])
