"""The Settings model: every variable an admin can set, each parsed and validated; loaded
by `config.load_settings` (a team's own values over the shared ones)."""

from __future__ import annotations

import functools
import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from csm_router.config.teams import TeamError, parse_teams
from csm_router.config.values import (
    ENV_PREFIX,
    SENTINEL_SCHEME,
    Address,
    ConfigError,
    PoolMember,
    ServerUrl,
    language_name,
    parse_address,
    parse_bind,
    parse_domains,
    parse_duration,
    parse_languages,
    parse_pool,
    parse_sentinel_url,
    parse_server_url,
    split_list,
    wants_token,
    with_holidays,
)
from csm_router.core.hours import HoursError, Schedule, Shift, parse_hours
from csm_router.oauth.settings import OAuthSettings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(BaseSettings):
    """Everything an admin can set; see `deploy/.env.example` for the documented list."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    # Before the URLs: their validator reads it.
    allow_plaintext: bool = False
    imap_url: Annotated[ServerUrl | None, NoDecode] = None
    smtp_url: Annotated[ServerUrl | None, NoDecode] = None
    redis_url: str = "redis://localhost:6379/0"
    alias: Annotated[Address, NoDecode]
    pool: Annotated[tuple[PoolMember, ...], NoDecode]
    max_open_per_csm: int = Field(default=0, ge=0)
    away: Annotated[frozenset[str], NoDecode] = frozenset()
    support_address: Annotated[Address | None, NoDecode] = None
    onboarding_days: int = Field(default=90, ge=0)
    affinity_days: int = Field(default=0, ge=0)
    first_response_minutes: int = Field(default=60, ge=1)
    overflow_address: Annotated[Address | None, NoDecode] = None
    poll_seconds: float = Field(default=30, gt=0)
    trusted_authserv_id: str | None = None
    # Proves CSMs' replies where the mail server writes no Authentication-Results.
    reply_secret: SecretStr | None = None
    support_rules: Path | None = None
    support_handler: str = "csm_router.support:mail_support"
    remind_minutes: int | None = Field(default=None, ge=1)
    quarantine_folder: str = "Quarantine"
    max_message_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    # Days, fractions allowed (a soak compresses a month into minutes).
    retention_days: float = Field(default=400, gt=0)
    # An answered thread with no new mail for this long closes by itself (seconds).
    close_after: Annotated[int, NoDecode] = 14 * 86400
    # Seconds between a failed send's attempts, e.g. "5,15,30" (empty: outbox.RETRY_DELAYS).
    retry_delays: str = ""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    templates_dir: Path | None = None
    web_address: str = "127.0.0.1:8025"
    lmtp_address: str = "127.0.0.1:2424"
    web_user: str = "admin"
    web_password: SecretStr | None = None
    digest_address: Annotated[Address | None, NoDecode] = None
    hours: Annotated[dict[str, Shift], NoDecode] = Field(default_factory=dict)
    premium: Annotated[frozenset[str], NoDecode] = frozenset()
    premium_pool: Annotated[tuple[str, ...], NoDecode] = ()
    # Several teams, each with its own alias, mailbox and pool (teams.py).
    teams: Annotated[tuple[str, ...], NoDecode] = ()
    # CSM -> the languages they read (ISO 639-1): new threads go to a reader of theirs.
    languages: Annotated[dict[str, frozenset[str]], NoDecode] = Field(default_factory=dict)
    premium_first_response_minutes: int | None = Field(default=None, ge=1)
    # OAuth 2.0 instead of passwords in the URLs (oauth/settings.py says what each needs).
    oauth_provider: Literal["microsoft", "google", "generic"] | None = None
    oauth_tenant: str = ""
    oauth_client_id: str = ""
    oauth_client_secret: SecretStr | None = None
    oauth_token_url: str = ""
    oauth_scope: str = ""
    oauth_service_account_file: Path | None = None
    oauth_token_file: Path | None = None
    # Microsoft's national clouds log in elsewhere, e.g. login.microsoftonline.us.
    oauth_authority_host: str = "login.microsoftonline.com"

    @field_validator("hours", mode="before")
    @classmethod
    def _hours(cls, value: Any) -> dict[str, Shift]:
        if isinstance(value, dict):
            return value
        try:
            return with_holidays(parse_hours(str(value)))
        except HoursError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("close_after", mode="before")
    @classmethod
    def _close_after(cls, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        return parse_duration(str(value))

    @field_validator("premium", mode="before")
    @classmethod
    def _premium(cls, value: Any) -> frozenset[str]:
        if isinstance(value, frozenset | set | list | tuple):
            return frozenset(str(v).lower() for v in value)
        return parse_domains(str(value))

    @field_validator("teams", mode="before")
    @classmethod
    def _teams(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, tuple | list):
            return tuple(value)
        try:
            return parse_teams(str(value))
        except TeamError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("languages", mode="before")
    @classmethod
    def _languages(cls, value: Any) -> dict[str, frozenset[str]]:
        if isinstance(value, dict):
            return value
        return parse_languages(str(value))

    @field_validator("premium_pool", mode="before")
    @classmethod
    def _premium_pool(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, tuple | list):
            return tuple(str(v).lower() for v in value)
        return tuple(parse_address(item).address for item in split_list(str(value)))

    @functools.cached_property
    def readers(self) -> dict[str, list[str]]:
        """Language -> the pool CSMs who read it, in pool order."""
        found: dict[str, list[str]] = {}
        for member in self.pool:
            for code in sorted(self.languages.get(member.address, ())):
                found.setdefault(code, []).append(member.address)
        return found

    @functools.cached_property
    def language_names(self) -> dict[str, str]:
        """Each language the pool reads, by name: `de` -> `German`."""
        return {code: language_name(code) for code in self.readers}

    @property
    def lead(self) -> Address | None:
        """Who gets the digest: ROUTER_DIGEST_ADDRESS, else ROUTER_OVERFLOW_ADDRESS."""
        return self.digest_address or self.overflow_address

    @property
    def report_zone(self) -> ZoneInfo:
        """Whose days the figures count in (see `report_zone_reason`)."""
        return self.report_zone_reason()[0]

    def report_zone_reason(self) -> tuple[ZoneInfo, str]:
        """The lead's time zone and why: the ROUTER_HOURS zone of ROUTER_DIGEST_ADDRESS,
        else of ROUTER_OVERFLOW_ADDRESS, else UTC."""
        for variable, address in (("ROUTER_DIGEST_ADDRESS", self.digest_address),
                                  ("ROUTER_OVERFLOW_ADDRESS", self.overflow_address)):
            shift = self.hours.get(address.address) if address else None
            if address and shift:
                return shift.zone, f"the ROUTER_HOURS of {address.address} ({variable})"
        return ZoneInfo("UTC"), ("neither ROUTER_DIGEST_ADDRESS nor ROUTER_OVERFLOW_ADDRESS "
                                 "has ROUTER_HOURS")

    @property
    def schedule(self) -> Schedule:
        """The pool's working hours (everyone always on shift without ROUTER_HOURS)."""
        return Schedule(self.hours, tuple(m.address for m in self.pool))

    @property
    def retention_seconds(self) -> int:
        """ROUTER_RETENTION_DAYS in whole seconds (what Redis expiries take)."""
        return max(1, round(self.retention_days * 86400))

    def kept(self, seconds: float) -> int:
        """`seconds`, but never past the retention: nothing in Redis outlives it."""
        return max(1, min(int(seconds), self.retention_seconds))

    def first_response_seconds(self, account: str = "") -> float:
        """The first-response target for a thread of `account`, in working seconds."""
        minutes = self.first_response_minutes
        if account in self.premium and self.premium_first_response_minutes is not None:
            minutes = self.premium_first_response_minutes
        return minutes * 60.0

    @property
    def web_bind(self) -> tuple[str, int]:
        """`ROUTER_WEB_ADDRESS` as the host and port to listen on."""
        return parse_bind(self.web_address)

    @property
    def lmtp_bind(self) -> tuple[str, int]:
        """`ROUTER_LMTP_ADDRESS` as the host and port `csm-router lmtp` listens on."""
        return parse_bind(self.lmtp_address)

    @field_validator("web_address", "lmtp_address")
    @classmethod
    def _bind_address(cls, value: str) -> str:
        parse_bind(value)
        return value

    @field_validator("imap_url", "smtp_url", mode="before")
    @classmethod
    def _server(cls, value: Any, info: ValidationInfo) -> ServerUrl | None:
        if value is None or isinstance(value, ServerUrl) or not str(value).strip():
            return value or None
        allow = bool(info.data.get("allow_plaintext"))
        if info.field_name == "smtp_url":
            return replace(parse_server_url(str(value), ("smtp", "smtps")), allow_plaintext=allow)
        url = parse_server_url(str(value), ("imap", "imaps"))
        return replace(url, path=url.path or "INBOX", allow_plaintext=allow)

    @field_validator("templates_dir")
    @classmethod
    def _templates_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{str(value)!r} is not a folder")
        return value

    @field_validator("retry_delays")
    @classmethod
    def _retry_delays(cls, value: str) -> str:
        parts = [x.strip() for x in value.split(",")] if value.strip() else []
        if not all(re.fullmatch(r"\d+(\.\d+)?", x) for x in parts):
            raise ValueError(f"expected seconds like 5,15,30, got {value!r}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> str:
        level = str(value).strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("remind_minutes")
    @classmethod
    def _remind(cls, value: int | None, info: ValidationInfo) -> int | None:
        target = info.data.get("first_response_minutes")
        if value is not None and target is not None and value >= target:
            raise ValueError(f"must be shorter than ROUTER_FIRST_RESPONSE_MINUTES ({target})")
        return value

    @field_validator("reply_secret", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        if value is None or isinstance(value, SecretStr):
            return value
        text = str(value).strip()
        if not text:
            return None
        if len(text) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 16`)")
        return text

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis(cls, value: Any) -> str:
        text = str(value).strip()
        if text.startswith(SENTINEL_SCHEME):
            parse_sentinel_url(text)
        elif not re.match(r"^(redis|rediss|unix)://", text):
            raise ValueError("must start with redis://, rediss://, unix:// or redis+sentinel://")
        return text

    @field_validator("alias", "support_address", "overflow_address", "digest_address",
                     mode="before")
    @classmethod
    def _address(cls, value: Any) -> Address | None:
        if value is None or isinstance(value, Address):
            return value
        if not str(value).strip():
            return None
        return parse_address(str(value))

    @field_validator("support_rules", mode="after")
    @classmethod
    def _rules_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("support_handler", mode="after")
    @classmethod
    def _handler(cls, value: str) -> str:
        if not re.fullmatch(r"[\w.]+:[\w]+", value):
            raise ValueError("must look like package.module:function")
        return value

    @field_validator("pool", mode="before")
    @classmethod
    def _pool(cls, value: Any) -> tuple[PoolMember, ...]:
        return value if isinstance(value, tuple) else parse_pool(str(value))

    @field_validator("away", mode="before")
    @classmethod
    def _away(cls, value: Any) -> frozenset[str]:
        if isinstance(value, frozenset | set | list | tuple):
            return frozenset(str(v).lower() for v in value)
        return frozenset(parse_address(item).address for item in split_list(str(value)))

    @property
    def remind_before_seconds(self) -> float:
        """How long before the first-response target the owner is reminded."""
        if self.remind_minutes is not None:
            return self.remind_minutes * 60.0
        return self.first_response_minutes * 60 / 4

    def member(self, address: str) -> PoolMember | None:
        """The pool member with this address, if any."""
        address = address.lower()
        return next((m for m in self.pool if m.address == address), None)

    def oauth(self) -> OAuthSettings | None:
        """The OAuth login for the mailbox user the URLs name, if one is set."""
        if self.oauth_provider is None:
            return None
        urls = [url for url in (self.imap_url, self.smtp_url) if url is not None]
        url = next((u for u in urls if wants_token(u)), urls[0] if urls else None)
        secret = self.oauth_client_secret.get_secret_value() if self.oauth_client_secret else ""
        return OAuthSettings(
            self.oauth_provider, url.username if url else "", self.oauth_tenant.strip(),
            self.oauth_client_id.strip(), secret, self.oauth_token_url.strip(),
            self.oauth_scope.strip(), self.oauth_service_account_file, self.oauth_token_file,
            self.oauth_authority_host.strip())

    def required_imap(self) -> ServerUrl:
        if self.imap_url is None:
            raise ConfigError("ROUTER_IMAP_URL", "is not set")
        return self.imap_url

    def required_smtp(self) -> ServerUrl:
        if self.smtp_url is None:
            raise ConfigError("ROUTER_SMTP_URL", "is not set")
        return self.smtp_url
