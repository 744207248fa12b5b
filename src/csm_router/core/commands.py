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
# Quote marks and the spaces around them, however deep: "> > #close" is still a command line.
_QUOTE_MARKS = re.compile(r"^[ \t>]+", re.MULTILINE)


@dataclass(frozen=True)
class Command:
    name: str
    argument: str = ""

    @property
    def line(self) -> str:
        """The command as one normalised line, to compare with lines found elsewhere."""
        return f"#{self.name} {self.argument}".rstrip()


def _command(match: re.Match[str]) -> Command:
    return Command(match.group(1).lower(), match.group(2).strip("<>").lower())


def find_command(fresh_text: str) -> Command | None:
    """The first command line in what the sender wrote now, if any."""
    match = _COMMAND.search(fresh_text)
    return None if match is None else _command(match)


def command_lines(text: str) -> frozenset[str]:
    """Every command line anywhere in `text`, quoted or not, as `Command.line`.

    Read from a customer's mail: a CSM's command that repeats one of these may be the
    customer's own words, quoted in a way the reply splitter did not recognise.
    """
    return frozenset(_command(m).line for m in _COMMAND.finditer(_QUOTE_MARKS.sub("", text)))


def quoted_from_customer(line: str) -> str:
    """The error for a command that repeats a line of the customer's mail."""
    return (f"{line} was not carried out: the customer's mail has the same line, so it may "
            "be their words quoted rather than yours")
