"""Templates: shipped in templates/, overridden by an admin's folder, rendered in a sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from jinja2.exceptions import SecurityError, UndefinedError

from csm_router.outbound import check_templates, render, use_templates


@pytest.fixture
def override(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    use_templates(None)


def test_an_override_replaces_one_template_and_leaves_the_others(override: Path) -> None:
    (override / "notice.txt.j2").write_text("Acme says: {{ text }}\n")
    use_templates(override)
    assert render("notice.txt.j2", text="done") == "Acme says: done\n"
    assert "Reference: CS-1001" in render("overflow.txt.j2", ref="CS-1001", customer="c@c.com",
                                 subject_line="s")


def test_a_broken_override_is_named_with_its_line(override: Path) -> None:
    (override / "notice.txt.j2").write_text("Hello\n{{ text }\n")
    (override / "notise.txt.j2").write_text("{{ text }}\n")
    problems = check_templates(override)
    assert problems[0].startswith("notice.txt.j2 line 2: ")
    assert problems[1].startswith("notise.txt.j2: no such template")


def test_an_override_cannot_reach_python_internals(override: Path) -> None:
    (override / "notice.txt.j2").write_text("{{ text.__class__.__mro__[1].__subclasses__() }}\n")
    use_templates(override)
    with pytest.raises((SecurityError, UndefinedError)):
        render("notice.txt.j2", text="x")
