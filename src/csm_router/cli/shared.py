"""What the commands share: the console, logging set-up, the runtime, times in and out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from csm_router import logs
from csm_router.config import Settings, load_settings
from csm_router.config.teams import current_team
from csm_router.core.threads import format_ref
from csm_router.runtime import Runtime
from csm_router.state import pool

out = Console(highlight=False)
if not out.is_terminal:
    out.width = 120  # piped into a file or a ticket: 80 columns would wrap every table


def _setup_logging(settings: Settings | None = None) -> None:
    if settings is None:
        logs.setup()
    else:
        logs.setup(settings.log_level, settings.log_format, current_team())


def _runtime() -> Runtime:
    return Runtime.from_settings(load_settings())


def _parse_until(text: str, option: str = "--until") -> float:
    """A command line's date or time (UTC unless given); a bad one is named by `option`."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise pool.PoolError(
            f"{option} {text!r}: use a date or time like 2026-12-01 or 2026-12-01T09:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


_TIMES = frozenset({"created", "due", "first_response", "last_activity", "opened",
                    "overdue_at", "dead_at"})


def for_json(record: dict[str, Any]) -> dict[str, Any]:
    """One convention for every `--json`: `CS-1007`, ISO 8601 UTC times, null when unset."""
    found: dict[str, Any] = {}
    for name, value in record.items():
        if value in ("", None):
            found[name] = None
        elif name == "ref":
            found[name] = format_ref(int(value))
        elif name in _TIMES:
            found[name] = datetime.fromtimestamp(float(value), UTC).isoformat(timespec="seconds")
        elif isinstance(value, dict):
            found[name] = for_json(value)
        else:
            found[name] = value
    return found
