"""Templates: shipped in templates/, overridden by an admin's folder, rendered in a sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from jinja2.exceptions import SecurityError, UndefinedError

from csm_router.config import ConfigError
from csm_router.errors import UnsendableError
from csm_router.mail.outbound import check_templates, render, require_templates, use_templates


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
    assert problems[0].startswith("notise.txt.j2: no such template")
    assert problems[1].startswith(f"{override / 'notice.txt.j2'} line 2: ")
    assert len(problems) == 2  # the shipped ones all compile


def test_require_templates_stops_with_one_line_naming_the_variable_file_and_line(
    override: Path,
) -> None:
    (override / "reminder.txt.j2").write_text("Hi\n\n{% for x in y %}\n")
    with pytest.raises(ConfigError) as caught:
        require_templates(override)
    said = str(caught.value)
    assert "\n" not in said
    assert said.startswith(f"ROUTER_TEMPLATES_DIR: {override / 'reminder.txt.j2'} line ")
    require_templates(None)  # the shipped ones


def test_a_template_failing_at_render_time_makes_the_mail_unsendable_naming_its_line(
    override: Path,
) -> None:
    # Compiles (the filter is looked up only when the branch runs), fails for one value.
    (override / "notice.txt.j2").write_text(
        'Hi\n{% if text == "x" %}{{ text | no_such_filter }}{% endif %}\n')
    assert check_templates(override) == []
    use_templates(override)
    assert render("notice.txt.j2", text="y") == "Hi\n\n"
    with pytest.raises(UnsendableError) as caught:
        render("notice.txt.j2", text="x")
    assert str(caught.value).startswith(f"template {override / 'notice.txt.j2'} line 2 ")
    assert "no_such_filter" in str(caught.value)


def test_an_override_cannot_reach_python_internals(override: Path) -> None:
    (override / "notice.txt.j2").write_text("{{ text.__class__.__mro__[1].__subclasses__() }}\n")
    use_templates(override)
    with pytest.raises(UnsendableError) as caught:
        render("notice.txt.j2", text="x")
    assert isinstance(caught.value.__cause__, SecurityError | UndefinedError)
