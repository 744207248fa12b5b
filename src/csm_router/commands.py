"""Commands a CSM or Support writes on a line of its own: #support, #close, #reassign, #success."""

from __future__ import annotations

import re
from dataclasses import dataclass

CSM_COMMANDS = ("support", "close", "reassign")
SUPPORT_COMMANDS = ("success",)

# A line of its own, case-insensitive; `>`-quoted lines are excluded by reading only the
# text the sender wrote now (Inbound.fresh_text).
_COMMAND = re.compile(r"^[ \t]*#(support|close|reassign|success)\b[ \t]*(\S*)[ \t]*$",
                      re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Command:
    name: str
    argument: str = ""


def find_command(fresh_text: str) -> Command | None:
    """The first command line in what the sender wrote now, if any."""
    match = _COMMAND.search(fresh_text)
    if match is None:
        return None
    return Command(match.group(1).lower(), match.group(2).strip("<>").lower())
