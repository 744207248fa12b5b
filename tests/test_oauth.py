"""OAuth tokens without a provider: renewal times, refusals, the token file, the settings."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from csm_router.app.worker import run_worker
from csm_router.config import ConfigError, load_settings
from csm_router.demo.relay import RecordingSmtp
from csm_router.errors import RefusedError, TransientError
from csm_router.lead.health import Health
from csm_router.oauth.explain import explain
from csm_router.oauth.tokenfile import TokenFile
from csm_router.oauth.tokens import AccessToken, TokenRefusedError, Tokens, granted
from support.runtime import worker_runtime


class Provider:
    """Answers what a test queues: tokens or errors, in order; counts the asks."""

    def __init__(self, *answers: AccessToken | Exception) -> None:
        self.answers = list(answers)
        self.asked = 0

    def __call__(self) -> AccessToken:
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_kept_until_a_quarter_of_its_life_is_left() -> None:
    clock = Clock()
    provider = Provider(granted("one", 3600, clock.now), granted("two", 3600, clock.now + 3301))
    tokens = Tokens(provider, "test", clock)
    assert tokens() == "one"
    clock.now += 3299  # five minutes (at most) before it lapses: still kept
    assert tokens() == "one" and provider.asked == 1
    clock.now += 2
    assert tokens() == "two" and provider.asked == 2


def test_a_token_a_server_refused_is_replaced_by_one_asked_for_anew() -> None:
    clock = Clock()
    cached = Provider(granted("one", 3600, clock.now), granted("four", 3600, clock.now + 3400))
    fresh = Provider(granted("two", 3600, clock.now), granted("three", 3600, clock.now))
    tokens = Tokens(cached, "test", clock, fetch_fresh=fresh)
    assert tokens() == "one"
    tokens.reject("one")  # revoked before it lapsed: a library's cache would answer it
    assert tokens() == "two" and (cached.asked, fresh.asked) == (1, 1)
    tokens.reject("one")  # a late refusal of a token already replaced changes nothing
    assert tokens() == "two" and fresh.asked == 1
    clock.now += 3400
    assert tokens() == "four" and cached.asked == 2  # renewals ask the usual way again


def test_a_short_lived_token_is_renewed_with_a_quarter_of_its_life_left() -> None:
    clock = Clock()
    provider = Provider(granted("one", 60, clock.now), granted("two", 60, clock.now + 46))
    tokens = Tokens(provider, "test", clock)
    assert tokens() == "one"
    clock.now += 44
    assert tokens() == "one"
    clock.now += 2
    assert tokens() == "two"


def test_a_refused_renewal_keeps_the_valid_token_and_then_says_why() -> None:
    clock = Clock()
    refusal = TokenRefusedError("AADSTS7000222: the client secret has expired")
    provider = Provider(granted("one", 3600, clock.now), refusal, refusal)
    tokens = Tokens(provider, "test", clock)
    tokens()
    clock.now += 3400  # due for renewal, not yet lapsed
    assert tokens() == "one"
    assert "AADSTS7000222" in tokens.refused
    clock.now += 300  # lapsed: nothing left to use
    with pytest.raises(TokenRefusedError, match="expired"):
        tokens()


def test_an_unreachable_provider_is_transient_and_a_later_grant_clears_the_refusal() -> None:
    clock = Clock()
    provider = Provider(TransientError("out of reach"),
                        TokenRefusedError("revoked"), granted("back", 3600, clock.now))
    tokens = Tokens(provider, "test", clock)
    with pytest.raises(TransientError):
        tokens()
    with pytest.raises(RefusedError):
        tokens()
    assert tokens.refused == "revoked"
    assert tokens() == "back" and tokens.refused == ""


def test_a_connected_process_renews_between_logins_and_hears_a_refusal_in_time() -> None:
    clock = Clock()
    refusal = TokenRefusedError("AADSTS7000222: the client secret has expired")
    start = clock.now
    provider = Provider(granted("one", 3600, start), granted("two", 3600, start + 3400),
                        refusal, granted("three", 3600, start + 6861))
    told: list[str] = []
    tokens = Tokens(provider, "test", clock)
    tokens.watch(told.append, lambda: None)
    tokens.keep_fresh()
    assert provider.asked == 0  # before the first login, the login asks
    assert tokens() == "one"
    clock.now += 3000
    tokens.keep_fresh()  # not due yet: the provider is spared
    assert provider.asked == 1
    clock.now += 400  # due, and no login in sight: renewed all the same
    tokens.keep_fresh()
    assert provider.asked == 2 and tokens() == "two"
    clock.now += 3400  # due again, and the secret has expired meanwhile
    tokens.keep_fresh()
    assert told == [str(refusal)]  # known while "two" still works, 200 s before it lapses
    assert tokens.expires_at > clock.now and tokens.refused
    clock.now += 30
    tokens.keep_fresh()  # not asked again within the minute
    assert provider.asked == 3
    clock.now += 31
    tokens.keep_fresh()  # the app mended: the next try is granted and clears the refusal
    assert provider.asked == 4 and tokens.refused == "" and tokens() == "three"


def test_threads_share_one_renewal() -> None:
    provider = Provider(granted("one", 3600))
    tokens = Tokens(provider, "test")
    threads = [threading.Thread(target=tokens) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert provider.asked == 1


def test_a_token_never_shows_its_value() -> None:
    token = granted("eyJsecret", 60)
    assert "eyJsecret" not in repr(token) and "eyJsecret" not in str(token)


@pytest.mark.parametrize(("error", "description", "said"), [
    ("invalid_client", "AADSTS7000215: Invalid client secret provided. Trace ID: 1",
     "AADSTS7000215 (invalid_client): the client secret is wrong"),
    ("invalid_request", "AADSTS50194: Application is not configured as a multi-tenant "
     "application.", "AADSTS50194 (invalid_request): the app is single-tenant"),
    ("invalid_grant", "AADSTS700082: The refresh token has expired due to inactivity.",
     "run `csm-router login` again"),
    ("unauthorized_client", "Client is unauthorized to retrieve access tokens using this "
     "method.", "domain-wide delegation of https://mail.google.com/"),
    ("invalid_client", "AADSTS9999999: Something new. Trace", "AADSTS9999999 (invalid_client)"
     ": Something new."),
    ("odd_error", "", "odd_error: no reason given"),
    ("invalid_client", "AADSTS7000218: The request body must contain the following "
     "parameter: 'client_assertion' or 'client_secret'.", "Allow public client flows"),
    ("invalid_grant", "AADSTS70043: The refresh token has expired or is invalid due to "
     "sign-in frequency checks by conditional access.", "run `csm-router login` again"),
    ("admin_policy_enforced", "", "API controls"),
])
def test_refusals_are_explained_in_plain_words(error: str, description: str,
                                               said: str) -> None:
    line = explain(error, description)
    assert said in line
    assert "\n" not in line


def test_the_token_file_is_private_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "state" / "oauth.json"
    stored = TokenFile(path)
    with pytest.raises(RefusedError, match="csm-router login"):
        stored.read()
    with stored.locked():
        stored.write({"refresh_token": "r1"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored.write({"refresh_token": "r2"})
    assert stored.read() == {"refresh_token": "r2"}
    assert sorted(p.name for p in path.parent.iterdir()) == [".oauth.json.lock", "oauth.json"]


def test_a_garbled_token_file_is_a_refusal_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "oauth.json"
    path.write_text("{not json")
    with pytest.raises(RefusedError, match="cannot be read"):
        TokenFile(path).read()
    path.write_text(json.dumps(["a list"]))
    with pytest.raises(RefusedError, match="not a login"):
        TokenFile(path).read()


def test_renewals_in_two_processes_take_turns(tmp_path: Path) -> None:
    stored = TokenFile(tmp_path / "oauth.json")
    stored.write({"n": 0})
    ready, go = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other process: waits for the lock, then adds one
        os.close(ready)
        os.write(go, b".")
        with stored.locked():
            stored.write({"n": stored.read()["n"] + 1})
        os._exit(0)
    os.close(go)
    with stored.locked():
        os.read(ready, 1)  # the other process now waits on the lock
        current = stored.read()["n"]
        stored.write({"n": current + 1})
    os.waitpid(pid, 0)
    assert stored.read() == {"n": 2}  # neither renewal lost


BASE = {"ROUTER_ALIAS": "success@acme.com", "ROUTER_POOL": "alice@acme.com"}


@pytest.fixture
def env(bare_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch = bare_env
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_oauth_settings_name_every_missing_value(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_OAUTH_PROVIDER", "microsoft")
    env.setenv("ROUTER_IMAP_URL", "imaps://success%40acme.com:secret@outlook.office365.com")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    named = dict(caught.value.problems)
    assert set(named) == {"ROUTER_OAUTH_TENANT", "ROUTER_OAUTH_CLIENT_ID",
                          "ROUTER_OAUTH_CLIENT_SECRET", "ROUTER_OAUTH_PROVIDER"}
    assert "leave out the password" in named["ROUTER_OAUTH_PROVIDER"]


@pytest.mark.parametrize("tenant", ["common", "organizations", "Consumers"])
def test_a_shared_endpoint_is_refused_as_the_tenant_at_start(
    env: pytest.MonkeyPatch, tenant: str
) -> None:
    for name, value in (("PROVIDER", "microsoft"), ("TENANT", tenant),
                        ("CLIENT_ID", "app"), ("CLIENT_SECRET", "s")):
        env.setenv(f"ROUTER_OAUTH_{name}", value)
    env.setenv("ROUTER_IMAP_URL", "imaps://success%40acme.com@outlook.office365.com")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "is a shared endpoint, not a tenant" in dict(caught.value.problems)[
        "ROUTER_OAUTH_TENANT"]


def test_an_unknown_provider_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_OAUTH_PROVIDER", "okta")
    with pytest.raises(ConfigError, match="ROUTER_OAUTH_PROVIDER"):
        load_settings()


def test_with_oauth_the_urls_carry_one_token_source(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_OAUTH_PROVIDER", "generic")
    env.setenv("ROUTER_OAUTH_TOKEN_URL", "https://idp.acme.com/token")
    env.setenv("ROUTER_OAUTH_CLIENT_ID", "router")
    env.setenv("ROUTER_OAUTH_CLIENT_SECRET", "s3cret-value")
    env.setenv("ROUTER_IMAP_URL", "imaps://success%40acme.com@imap.acme.com")
    env.setenv("ROUTER_SMTP_URL", "smtp://success%40acme.com@smtp.acme.com")
    settings = load_settings()
    assert settings.imap_url is not None and settings.smtp_url is not None
    assert settings.imap_url.token is not None
    assert settings.imap_url.token is settings.smtp_url.token  # one renewal for both
    assert load_settings().imap_url.token is settings.imap_url.token  # type: ignore[union-attr]
    assert "s3cret-value" not in repr(settings) + repr(settings.oauth())


def test_a_url_with_a_password_keeps_it_beside_a_token_login(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_OAUTH_PROVIDER", "google")
    env.setenv("ROUTER_OAUTH_SERVICE_ACCOUNT_FILE", __file__)  # any file: read when needed
    env.setenv("ROUTER_IMAP_URL", "imaps://success%40acme.com@imap.gmail.com")
    env.setenv("ROUTER_SMTP_URL", "smtp://apikey:SG.key@smtp.sendgrid.net:587")
    settings = load_settings()
    assert settings.imap_url is not None and settings.smtp_url is not None
    assert settings.imap_url.token is not None and settings.smtp_url.token is None
    assert settings.oauth().user == "success@acme.com"  # type: ignore[union-attr]
    env.setenv("ROUTER_IMAP_URL", "imaps://apikey:SG.key@imap.gmail.com")
    env.setenv("ROUTER_SMTP_URL", "smtp://success%40acme.com@smtp.gmail.com:587")
    settings = load_settings()
    assert settings.smtp_url.token is not None  # type: ignore[union-attr]
    assert settings.oauth().user == "success@acme.com"  # type: ignore[union-attr]


def test_without_oauth_the_urls_use_their_password(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_IMAP_URL", "imaps://success%40acme.com:pw@imap.acme.com")
    settings = load_settings()
    assert settings.imap_url is not None and settings.imap_url.token is None


def test_a_refused_login_fails_health_and_tells_the_lead_once_an_episode(
    smtp: RecordingSmtp,
) -> None:
    refusal = TokenRefusedError("Microsoft 365 app refused a token: AADSTS7000222 "
                                "(invalid_client): the client secret has expired")
    provider = Provider(refusal, refusal, granted("ok", 3600), TransientError("away"),
                        TokenRefusedError("revoked again"))
    tokens = Tokens(provider, "test", Clock())
    with worker_runtime(smtp.url, "alice@acme.com") as plain:
        assert plain.settings.smtp_url is not None
        url = replace(plain.settings.smtp_url, token=tokens)
        rt = replace(plain, settings=plain.settings.model_copy(update={"smtp_url": url}))
        rt.watch_logins()
        health = Health(rt.redis)

        def refused_now() -> list[str]:
            verdict = health.verdict(time.time(), detailed=False)
            return [line for line in verdict.lines if "login refused" in line]

        for _ in range(2):
            with pytest.raises(TokenRefusedError):
                tokens()
        (line,) = refused_now()  # and /healthz fails: a fatal finding
        assert "AADSTS7000222" in line and "expired" in line
        assert not health.verdict(time.time(), detailed=False).healthy
        run_worker(plain, burst=True)
        (told,) = smtp.messages
        assert told.rcpt_tos == ["cs-lead@acme.com"]
        assert b"AADSTS7000222" in told.data and b"Mailbox login refused" in told.data
        assert tokens() == "ok"  # granted again: the episode is over
        assert refused_now() == []
        tokens._token = AccessToken()  # lapsed
        with pytest.raises(TransientError):
            tokens()  # out of reach is no refusal: nobody told
        assert refused_now() == []
        with pytest.raises(TokenRefusedError):
            tokens()
        run_worker(plain, burst=True)
        assert len(smtp.messages) == 2  # a new episode, told again
