"""terminal.inert: customer text for Rich markup, with no markup and no control sequences."""

from __future__ import annotations

import pytest
from rich.console import Console

from csm_router.terminal import inert, strip_controls


@pytest.mark.parametrize(("raw", "clean"), [
    ("Bug [/] here", "Bug [/] here"),
    ("x\x1b]0;pwned\x07y", "xy"),  # a window title, sequence and all
    ("x\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\y", "xlinky"),  # an OSC 8 hyperlink
    ("\x1b[31mred\x1b[0m", "red"),
    ("a\x9b2Jb", "ab"),  # the 8-bit CSI
    ("a\x9d0;t\x9cb", "ab"),  # the 8-bit OSC with its 8-bit terminator
    ("bell\x07 and\x08 back", "bell and back"),
    ("tab\tnew\nline\rcr", "tab new line cr"),
    ("admin\u202egpj.exe", "admingpj.exe"),  # right-to-left override
    ("half \x1b[", "half "),  # cut off mid-sequence
    ("Grüße \u2013 日本", "Grüße \u2013 日本"),
])
def test_control_sequences_go_whole_and_text_stays(raw: str, clean: str) -> None:
    assert strip_controls(raw) == clean


@pytest.mark.parametrize("subject", [
    "[/]", "[link=http://x]click[/link]", "[black on black]hidden[/]", "[bold", "\\[/]",
    "[@click=app.quit]x[/]",
])
def test_markup_prints_as_written(subject: str) -> None:
    console = Console(record=True, width=200, force_terminal=True, color_system="truecolor")
    console.print(f"[bold]CS-1001[/] {inert(subject)}")
    assert console.export_text().rstrip("\n") == f"CS-1001 {subject}"
    assert "\x1b]8;" not in console.export_text(styles=True)
