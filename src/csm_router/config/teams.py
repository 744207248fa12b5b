"""Several teams in one deployment (`ROUTER_TEAMS=eu,us`): which team a process or a
request serves, and each team's settings.

Any setting can be given per team as `ROUTER_<TEAM>_<NAME>`, falling back to
`ROUTER_<NAME>`. The team in hand is a context variable: a team's router or worker process
sets it once at start for all its threads (`use_team`), the web server per request
(`in_team`), and the Redis keys (state/keys.py) and the settings (config.load_settings)
follow it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path

from dotenv import dotenv_values

from csm_router.config.values import ENV_PREFIX

# A request's team (the web server's); None: the process's team, which every thread of a
# team's process shares (a thread started later would not inherit a context variable).
TEAM: ContextVar[str | None] = ContextVar("csm_router_team", default=None)
_process_team = ""
TEAM_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}$")


class TeamError(ValueError):
    """`ROUTER_TEAMS` or `--team` names a team that cannot be."""


def current_team() -> str:
    """The team in hand ("" without ROUTER_TEAMS)."""
    team = TEAM.get()
    return _process_team if team is None else team


def use_team(team: str) -> None:
    """Serve `team` for the rest of this process, in every thread."""
    global _process_team
    _process_team = team


@contextlib.contextmanager
def in_team(team: str) -> Iterator[None]:
    """Serve `team` within the block (a web request, a test)."""
    token = TEAM.set(team)
    try:
        yield
    finally:
        TEAM.reset(token)


def parse_teams(text: str) -> tuple[str, ...]:
    """`eu,us` -> ("eu", "us"): short lower-case names, each once."""
    teams = tuple(t.strip().lower() for t in text.replace(";", ",").split(",") if t.strip())
    for team in teams:
        if not TEAM_NAME.match(team):
            raise TeamError(f"{team!r} is not a team name: a letter, then up to 15 letters "
                            "or digits (eu, us, apac2)")
    if len(set(teams)) != len(teams):
        raise TeamError(f"{text!r} names a team twice")
    return teams


def _environment() -> dict[str, str]:
    """ROUTER_* from .env, overridden by the process's environment (as Settings reads)."""
    found = {k: v for k, v in dotenv_values(".env").items() if v is not None} \
        if Path(".env").is_file() else {}
    found.update(os.environ)
    return found


def configured_teams() -> tuple[str, ...]:
    """The teams ROUTER_TEAMS names (read before the settings: they depend on it)."""
    return parse_teams(_environment().get(ENV_PREFIX + "TEAMS", ""))


def team_values(team: str, fields: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Each setting `team` gives itself: field -> (its variable, its value)."""
    environment = _environment()
    found = {}
    for field in fields:
        variable = f"{ENV_PREFIX}{team.upper()}_{field.upper()}"
        if variable in environment:
            found[field] = (variable, environment[variable])
    return found


def team_variables(teams: Iterable[str], fields: Iterable[str]) -> set[str]:
    """The per-team names (without the prefix) these teams may set."""
    fields = list(fields)
    return {f"{team.upper()}_{field.upper()}" for team in teams for field in fields}


def ambiguous(teams: Iterable[str], fields: Iterable[str]) -> list[str]:
    """Teams whose per-team variables would read as another setting: a team `premium`
    would make ROUTER_PREMIUM_POOL mean two things."""
    names = {f.upper() for f in fields}
    return [t for t in teams if any(n.startswith(t.upper() + "_") and
                                     n[len(t) + 1:] in names for n in names)]
