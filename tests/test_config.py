"""Configuration: the contract's variables, their syntax, and one clear error per mistake."""

from __future__ import annotations

import subprocess
import sys

import pytest

from csm_router.config import (
    ConfigError,
    PoolMember,
    format_duration,
    load_settings,
    parse_pool,
    redact_url,
)
from csm_router.config.values import SentinelUrl, parse_sentinel_url

BASE = {
    "ROUTER_ALIAS": "Acme Customer Success <success@acme.com>",
    "ROUTER_POOL": "Alice Smith <alice@acme.com>*2, Bob Jones <bob@acme.com>, carol@acme.com",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]  # no stray .env
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_pool_syntax_with_names_and_weights() -> None:
    assert parse_pool(BASE["ROUTER_POOL"]) == (
        PoolMember("alice@acme.com", "Alice Smith", 2),
        PoolMember("bob@acme.com", "Bob Jones", 1),
        PoolMember("carol@acme.com", "", 1),
    )


def test_pool_names_may_hold_commas_in_quotes() -> None:
    (member,) = parse_pool('"Smith, Alice" <Alice@Acme.com> * 3')
    assert member == PoolMember("alice@acme.com", "Smith, Alice", 3)


@pytest.mark.parametrize(
    ("pool", "problem"),
    [
        ("", "empty"),
        ("alice@acme.com*0", "at least 1"),
        ("alice@acme.com*x", "whole number"),
        ("alice@acme.com, ALICE@acme.com", "listed twice"),
        ("not an address", "not an email address"),
    ],
)
def test_bad_pool_names_the_problem(pool: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_pool(pool)


def test_every_documented_variable_is_read(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_IMAP_URL", "imaps://success%40acme.com:s3cr%2Ft@imap.acme.com/INBOX")
    env.setenv("ROUTER_SMTP_URL", "smtp://mailer:secret@smtp.acme.com:2525")
    env.setenv("ROUTER_REDIS_URL", "redis://localhost:6379/3")
    env.setenv("ROUTER_MAX_OPEN_PER_CSM", "40")
    env.setenv("ROUTER_AWAY", "bob@acme.com")
    env.setenv("ROUTER_SUPPORT_ADDRESS", "support@acme.com")
    env.setenv("ROUTER_ONBOARDING_DAYS", "30")
    env.setenv("ROUTER_FIRST_RESPONSE_MINUTES", "45")
    env.setenv("ROUTER_OVERFLOW_ADDRESS", "cs-lead@acme.com")
    env.setenv("ROUTER_POLL_SECONDS", "5")
    s = load_settings()
    assert s.imap_url is not None and s.smtp_url is not None
    assert (s.imap_url.scheme, s.imap_url.port, s.imap_url.username, s.imap_url.password) == (
        "imaps", 993, "success@acme.com", "s3cr/t")
    assert s.imap_url.path == "INBOX" and s.imap_url.tls
    assert (s.smtp_url.port, s.smtp_url.tls) == (2525, False)
    assert s.redis_url.endswith("/3")
    assert s.max_open_per_csm == 40 and s.away == {"bob@acme.com"}
    assert s.support_address is not None and s.support_address.address == "support@acme.com"
    assert s.onboarding_days == 30 and s.first_response_minutes == 45 and s.poll_seconds == 5
    assert s.overflow_address is not None and s.overflow_address.address == "cs-lead@acme.com"
    assert s.alias.name == "Acme Customer Success"


def test_dotenv_file_is_read(env: pytest.MonkeyPatch, tmp_path: object) -> None:
    env.delenv("ROUTER_POOL")
    (tmp_path / ".env").write_text("ROUTER_POOL=dora@acme.com*4\n")  # type: ignore[operator]
    assert load_settings().pool == (PoolMember("dora@acme.com", "", 4),)


def test_passwords_never_show(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_IMAP_URL", "imap://u:hunter2@imap.acme.com")
    s = load_settings()
    assert "hunter2" not in str(s.imap_url) and "hunter2" not in repr(s.imap_url)
    assert "hunter2" not in redact_url("redis://:hunter2@localhost:6379/0")


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("ROUTER_IMAP_URL", "http://imap.acme.com", "scheme must be one of imap://"),
        ("ROUTER_SMTP_URL", "smtp://", "no host"),
        ("ROUTER_MAX_OPEN_PER_CSM", "-1", "greater than or equal to 0"),
        ("ROUTER_POLL_SECONDS", "soon", "valid number"),
        ("ROUTER_AWAY", "dave@acme.com", "not in ROUTER_POOL"),
        ("ROUTER_REDIS_URL", "localhost:6379", "redis://"),
        # Values a process would otherwise trip over later, refused at start.
        ("ROUTER_LOG_LEVEL", "verbose", "is not a log level"),
        ("ROUTER_REMIND_MINUTES", "60", "shorter than ROUTER_FIRST_RESPONSE_MINUTES"),
        ("ROUTER_REPLY_SECRET", "short", "at least 16 characters"),
    ],
)
def test_bad_value_names_its_variable(
    env: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    env.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.variable == variable
    assert problem in str(info.value)


def test_missing_pool_stops_the_process_with_one_line(env: pytest.MonkeyPatch) -> None:
    env.delenv("ROUTER_POOL")
    env.setenv("ROUTER_IMAP_URL", "imap://u:hunter2@imap.acme.com")
    done = subprocess.run(
        [sys.executable, "-m", "csm_router.cli", "status"], capture_output=True, text=True
    )
    assert done.returncode == 2
    expected = "csm-router: configuration error: ROUTER_POOL: is required but not set"
    assert done.stderr.strip() == expected
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr


def test_plaintext_is_refused_by_default_and_allowed_on_request(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_IMAP_URL", "imap://u:p@imap.acme.com/INBOX")
    env.setenv("ROUTER_SMTP_URL", "smtp://u:p@smtp.acme.com:587")
    settings = load_settings()
    assert settings.allow_plaintext is False
    assert settings.required_imap().starttls_required
    assert settings.required_smtp().starttls_required
    env.setenv("ROUTER_ALLOW_PLAINTEXT", "true")
    settings = load_settings()
    assert settings.allow_plaintext is True
    assert not settings.required_imap().starttls_required
    assert not settings.required_smtp().starttls_required


def test_allow_plaintext_must_be_a_boolean(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_ALLOW_PLAINTEXT", "sometimes")
    with pytest.raises(ConfigError, match=r"^ROUTER_ALLOW_PLAINTEXT: "):
        load_settings()


@pytest.mark.parametrize(
    ("pool", "problem"),
    [
        ("Bob Jones <bob@acme.test, carol@acme.test", "is not closed with '>'"),
        ("alice@acme.test;bob@acme.test", "more than one address"),
        ("alice@acme.test bob@acme.test", "more than one address"),
        ("bob@acme.test>, carol@acme.test", "has no '<' before it"),
    ],
)
def test_a_pool_typo_is_an_error_not_a_smaller_pool(
    env: pytest.MonkeyPatch, pool: str, problem: str
) -> None:
    env.setenv("ROUTER_POOL", pool)
    with pytest.raises(ConfigError, match=f"ROUTER_POOL: .*{problem}"):
        load_settings()


def test_a_quoted_name_may_hold_an_at_sign(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_POOL", '"alice@home" <alice@acme.com>, bob@acme.com')
    assert len(load_settings().pool) == 2


def test_a_misspelled_variable_is_refused_with_a_suggestion(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_IMAPURL", "imaps://u:p@imap.acme.com/INBOX")
    with pytest.raises(ConfigError, match="ROUTER_IMAPURL: is not a setting; did you mean "
                                          "ROUTER_IMAP_URL"):
        load_settings()


def test_a_misspelled_variable_in_dotenv_is_refused_too(env: pytest.MonkeyPatch) -> None:
    with open(".env", "w") as dotenv:
        dotenv.write("ROUTER_POLL_SECOND=5\n")
    with pytest.raises(ConfigError, match="did you mean ROUTER_POLL_SECONDS"):
        load_settings()


def test_variables_of_the_contract_not_yet_used_are_accepted(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_LOG_FORMAT", "json")
    env.setenv("ROUTER_WEB_ADDRESS", "127.0.0.1:8025")
    assert load_settings().log_level == "INFO"



def test_a_sentinel_set_is_one_url(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_REDIS_URL", "redis+sentinel://:s3cret@h1:26379,h2:26380/mymaster/2")
    assert load_settings().redis_url.startswith("redis+sentinel://")
    found = parse_sentinel_url("redis+sentinel://:s3cret@h1:26379,h2:26380/mymaster/2")
    assert found == SentinelUrl((("h1", 26379), ("h2", 26380)), "mymaster", 2, "s3cret")
    assert "s3cret" not in redact_url("redis+sentinel://:s3cret@h1:26379/mymaster/0")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h1:26379", "names no master"),
        ("redis+sentinel://h1/mymaster", "is not host:port"),
        ("redis+sentinel://h1:26379/mymaster/zero", "is not a number"),
    ],
)
def test_a_broken_sentinel_url_is_refused(env: pytest.MonkeyPatch, url: str, problem: str) -> None:
    env.setenv("ROUTER_REDIS_URL", url)
    with pytest.raises(ConfigError, match=f"ROUTER_REDIS_URL: .*{problem}"):
        load_settings()


@pytest.mark.parametrize(("given", "seconds"), [
    ("14d", 14 * 86400), ("36h", 36 * 3600), ("90s", 90), ("30m", 1800), ("45", 45),
])
def test_close_after_reads_days_hours_minutes_and_seconds(
    env: pytest.MonkeyPatch, given: str, seconds: int
) -> None:
    env.setenv("ROUTER_CLOSE_AFTER", given)
    assert load_settings().close_after == seconds


def test_close_after_defaults_to_two_weeks(env: pytest.MonkeyPatch) -> None:
    assert load_settings().close_after == 14 * 86400
    assert format_duration(14 * 86400) == "14d" and format_duration(129600) == "36h"


@pytest.mark.parametrize("given", ["0", "two weeks", "14w", "-3d", ""])
def test_a_bad_close_after_names_the_variable(env: pytest.MonkeyPatch, given: str) -> None:
    env.setenv("ROUTER_CLOSE_AFTER", given)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith("ROUTER_CLOSE_AFTER") and "duration" in str(err.value)


def test_every_missing_and_invalid_variable_is_named_at_once(env: pytest.MonkeyPatch) -> None:
    env.delenv("ROUTER_ALIAS")
    env.delenv("ROUTER_POOL")
    env.setenv("ROUTER_POLL_SECONDS", "soon")
    env.setenv("ROUTER_IMAPURL", "imaps://u:hunter2@imap.acme.com")
    env.setenv("ROUTER_RETRY_DELAYS", "5, later")
    with pytest.raises(ConfigError) as info:
        load_settings("imap_url", "smtp_url")
    lines = str(info.value).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == [
        "ROUTER_ALIAS", "ROUTER_IMAPURL", "ROUTER_IMAP_URL", "ROUTER_POLL_SECONDS",
        "ROUTER_POOL", "ROUTER_RETRY_DELAYS", "ROUTER_SMTP_URL"]
    assert "ROUTER_ALIAS: is required but not set" in lines
    assert "hunter2" not in str(info.value)


def test_several_problems_are_one_message_one_line_each_and_exit_2(
    env: pytest.MonkeyPatch,
) -> None:
    env.delenv("ROUTER_ALIAS")
    env.setenv("ROUTER_LOG_LEVEL", "loud")
    done = subprocess.run([sys.executable, "-m", "csm_router.cli", "run"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "csm-router: configuration error: 3 problems",
        "  ROUTER_ALIAS: is required but not set",
        "  ROUTER_LOG_LEVEL: 'loud' is not a log level; use one of DEBUG, INFO, WARNING, "
        "ERROR, CRITICAL",
        "  ROUTER_IMAP_URL: is required but not set",
    ]


def test_a_setting_a_command_needs_is_found_with_a_valid_configuration(
    env: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match=r"^ROUTER_SMTP_URL: is required but not set$"):
        load_settings("smtp_url")
    env.setenv("ROUTER_SMTP_URL", "smtp://mailer:pw@smtp.acme.com")
    assert load_settings("smtp_url").smtp_url is not None


def test_the_digest_address_and_the_overflow_address_may_give_hours_for_their_zone(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("ROUTER_DIGEST_ADDRESS", "boss@acme.com")
    env.setenv("ROUTER_OVERFLOW_ADDRESS", "cs-lead@acme.com")
    env.setenv("ROUTER_HOURS", "boss@acme.com=Asia/Tokyo 09-17; "
               "cs-lead@acme.com=Europe/Berlin 09-17")
    settings = load_settings()
    assert settings.report_zone.key == "Asia/Tokyo"  # the digest's recipient first
    assert "ROUTER_DIGEST_ADDRESS" in settings.report_zone_reason()[1]
    assert settings.schedule.off_shift(0) == frozenset()  # never part of routing
    env.setenv("ROUTER_HOURS", "cs-lead@acme.com=Europe/Berlin 09-17")
    settings = load_settings()
    assert settings.report_zone.key == "Europe/Berlin"
    assert "cs-lead@acme.com (ROUTER_OVERFLOW_ADDRESS)" in settings.report_zone_reason()[1]
    env.delenv("ROUTER_HOURS")
    assert load_settings().report_zone_reason()[0].key == "UTC"


def test_hours_for_anyone_else_outside_the_pool_are_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_DIGEST_ADDRESS", "boss@acme.com")
    env.setenv("ROUTER_HOURS", "boss@acme.com=Asia/Tokyo 09-17; dave@acme.com=UTC 09-17")
    with pytest.raises(ConfigError, match=r"^ROUTER_HOURS: dave@acme.com not in ROUTER_POOL"):
        load_settings()
