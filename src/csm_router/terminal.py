"""Customer text made inert for the terminal: no Rich markup, no control characters.

A subject is the customer's to write: `[/]` made `csm-router threads` fail with Rich's
MarkupError, `[link=...]` printed a clickable link, `[black on black]` hid text, and an
encoded ESC sequence retitled the admin's window. What the command line prints of it goes
through `inert` first.
"""

from __future__ import annotations

import re

from rich.markup import escape

# ESC sequences whole (CSI with its parameters, OSC up to its terminator, two-character
# ones), and their 8-bit C1 forms, so no remnant such as `]0;title` is left to read.
_SEQUENCES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"  # CSI: colours, cursor moves, erasing
    r"|(?:\x1b[\]PX^_]|[\x90\x9d\x98\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS...
    r"|\x1b[ -/]*[0-~]?"  # the rest: ESC and what it selects
)
# C0 and C1 controls, DEL, and the bidirectional overrides that make text read otherwise.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def strip_controls(text: str) -> str:
    """`text` without escape sequences or control characters (whitespace kept as spaces)."""
    text = _SEQUENCES.sub("", text)
    return _CONTROLS.sub(lambda m: " " if m.group() in "\t\n\r" else "", text)


def inert(value: object) -> str:
    """`value` as text to interpolate into Rich markup: controls gone, markup escaped."""
    return escape(strip_controls("" if value is None else str(value)))
