"""Logging: one line per event, readable by default, one JSON object a line on request."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

# Fields an event may carry (`log.info(..., extra={"ref": ...})`); JSON lines show them.
FIELDS = ("ref", "message_id", "rule", "csm", "entry", "kind")


class JsonFormatter(logging.Formatter):
    """`{"time": ..., "level": ..., "logger": ..., "message": ..., "ref": ...}` a line."""

    def __init__(self, team: str = "") -> None:
        super().__init__()
        self.team = team

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.team:
            event["team"] = self.team
        for name in FIELDS:
            value = getattr(record, name, None)
            if value not in (None, ""):
                event[name] = value
        if record.exc_info:
            event["error"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


def setup(level: str = "INFO", fmt: str = "text", team: str = "") -> None:
    """Log to stderr at `level`, as text or JSON; RQ's own lines follow the same handler.
    A team's process says which team on every line."""
    handler = logging.StreamHandler(sys.stderr)
    named = f"[{team}] " if team else ""
    handler.setFormatter(JsonFormatter(team) if fmt == "json" else logging.Formatter(
        f"%(asctime)s %(levelname)s {named}%(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
