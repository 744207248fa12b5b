"""Settings from the environment and `.env`, validated once at start-up and passed down:
`load_settings` reads them (a team's own over the shared ones), names every problem at
once, and checks what single values cannot show."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import ValidationError

from csm_router.config.settings import Settings
from csm_router.config.teams import (
    TeamError,
    ambiguous,
    configured_teams,
    current_team,
    team_values,
    team_variables,
)
from csm_router.config.values import (
    ENV_PREFIX,
    ConfigError,
    dotenv_names,
    unknown_settings,
    wants_token,
)
from csm_router.oauth.providers import tokens_for


def load_settings(*needs: str, **overrides: Any) -> Settings:
    """Build Settings; every missing or invalid value is named in one ConfigError, with
    the optional settings this command `needs` (e.g. "imap_url") among the required."""
    problems = unknown_names([*os.environ, *dotenv_names()])
    given = _team_overrides(overrides)
    try:
        settings = Settings(**{**{f: value for f, (_, value) in given.items()}, **overrides})
    except ValidationError as exc:
        named = {name for name, _ in problems}
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            variable = (given[field][0] if field in given else
                        ENV_PREFIX + field.upper() if field else "configuration")
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "missing":
                message = "is required but not set"
            if variable not in named:  # one line a variable, its first problem
                named.add(variable)
                problems.append((variable, message))
        for field in needs:
            variable = ENV_PREFIX + field.upper()
            if variable not in named and not _given(field, overrides):
                problems.append((variable, "is required but not set"))
        raise ConfigError.of(problems) from None
    problems += [(ENV_PREFIX + field.upper(), "is required but not set")
                 for field in needs if getattr(settings, field) is None]
    problems += _cross_checks(settings)
    if problems:
        raise ConfigError.of(problems)
    return _with_tokens(settings)


def _with_tokens(settings: Settings) -> Settings:
    """The URLs log in with this process's OAuth tokens, when OAuth is set."""
    oauth = settings.oauth()
    if oauth is None:
        return settings
    tokens = tokens_for(oauth)
    update = {name: replace(url, token=tokens) for name in ("imap_url", "smtp_url")
              if (url := getattr(settings, name)) is not None and wants_token(url)}
    return settings.model_copy(update=update)


def _team_overrides(overrides: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The team in hand's own settings (ROUTER_<TEAM>_<NAME>) not given in `overrides`:
    field -> (variable, value)."""
    team = current_team()
    if not team:
        return {}
    found = team_values(team, Settings.model_fields)
    return {f: given for f, given in found.items() if f not in overrides and f != "teams"}


def _given(field: str, overrides: dict[str, Any]) -> bool:
    """Whether a setting has a value somewhere (when the others failed validation)."""
    variable = ENV_PREFIX + field.upper()
    dotenv = dotenv_values(".env") if Path(".env").is_file() else {}
    found = overrides.get(field) or os.environ.get(variable) or dotenv.get(variable)
    return bool(str(found or "").strip())


def _cross_checks(settings: Settings) -> list[tuple[str, str]]:
    """What single values cannot show: addresses that must be in the pool, and so on."""
    problems = []
    members = {m.address for m in settings.pool}
    for variable, named in (("ROUTER_AWAY", settings.away),
                            ("ROUTER_PREMIUM_POOL", set(settings.premium_pool)),
                            ("ROUTER_LANGUAGES", set(settings.languages))):
        if unknown := set(named) - members:
            problems.append((variable, f"{', '.join(sorted(unknown))} not in ROUTER_POOL"))
    # The lead's hours give only the time zone of the digest and the figures, never routing.
    leads = {a.address for a in (settings.digest_address, settings.overflow_address) if a}
    if unknown := set(settings.hours) - members - leads:
        problems.append(("ROUTER_HOURS", f"{', '.join(sorted(unknown))} not in ROUTER_POOL "
                         "(nor ROUTER_DIGEST_ADDRESS or ROUTER_OVERFLOW_ADDRESS)"))
    if (oauth := settings.oauth()) is not None:
        problems += oauth.problems()
        urls = [url for url in (settings.imap_url, settings.smtp_url) if url is not None]
        if urls and not any(wants_token(url) for url in urls):
            problems.append(("ROUTER_OAUTH_PROVIDER", "is set, but neither ROUTER_IMAP_URL nor "
                             "ROUTER_SMTP_URL logs in with a token: name the mailbox user and "
                             "leave out the password in the URL that should"))
    if clash := ambiguous(settings.teams, Settings.model_fields):
        problems.append(("ROUTER_TEAMS", f"{', '.join(clash)}: a team of that name would make "
                         "another setting's name mean two things; choose another name"))
    if (team := current_team()) and team not in settings.teams:
        problems.append(("--team", f"{team} is not among ROUTER_TEAMS "
                         f"({', '.join(settings.teams) or 'not set'})"))
    if settings.premium_pool and not settings.premium:
        problems.append(("ROUTER_PREMIUM_POOL", "is set but ROUTER_PREMIUM names no account"))
    return problems


def unknown_names(names: list[str]) -> list[tuple[str, str]]:
    """Every ROUTER_* variable that is no setting: a typo would be ignored in silence.
    With ROUTER_TEAMS, `ROUTER_<TEAM>_<NAME>` is a setting too."""
    known = {name.upper() for name in Settings.model_fields}
    try:
        teams = configured_teams()
    except TeamError as exc:
        return [(ENV_PREFIX + "TEAMS", str(exc))]
    return unknown_settings(names, known | team_variables(teams, Settings.model_fields))


def check_names(names: list[str]) -> None:
    """Refuse ROUTER_* variables that are no setting, all named at once."""
    if problems := unknown_names(names):
        raise ConfigError.of(problems)
