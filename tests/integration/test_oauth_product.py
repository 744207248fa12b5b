"""The product logging in with OAuth 2.0 on real servers: `csm-router run`, `worker`,
`check`, `login` and `web` against a token server, Dovecot checking every token it is
given (its oauth2 passdb) and a relay taking AUTH XOAUTH2 with live tokens only."""

from __future__ import annotations

import contextlib
import io
import json
import os
import ssl
import stat
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from unittest import mock
from urllib.parse import quote

import pytest
from test_processes import start, stop
from test_web import get, until

from csm_router.demo.relay import RecordingSmtp
from csm_router.oauth import login as login_module
from csm_router.oauth.settings import OAuthSettings
from support.oauth import OAuthSmtp, TokenServer
from support.product import POOL, Product
from support.servers import DovecotServer, Mailbox, RedisServer, free_ports, wait_until

pytestmark = pytest.mark.integration

TENANT = "acme.onmicrosoft.com"
LEAD = "cs-lead@acme.com"


def _env(mailbox: Mailbox, smtp_url: str, redis_url: str, token_server: TokenServer
         ) -> dict[str, str]:
    server = mailbox.server
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env.update(
        # The mailbox user and no password: the login is the token's.
        ROUTER_IMAP_URL=f"imap://{quote(mailbox.user, safe='')}@{server.host}:"
                        f"{server.imap_port}/INBOX",
        ROUTER_SMTP_URL=smtp_url,
        ROUTER_REDIS_URL=redis_url,
        ROUTER_ALIAS=f"Acme Customer Success <{mailbox.user}>",
        ROUTER_POOL=POOL,
        ROUTER_POLL_SECONDS="1",
        ROUTER_OVERFLOW_ADDRESS=LEAD,
        REQUESTS_CA_BUNDLE=str(token_server.ca_file),  # the token server's own CA
    )
    return env


@pytest.fixture
def oauth_product(oauth_mailbox: Mailbox, oauth_smtp: OAuthSmtp, redis_url: str,
                  token_server: TokenServer, tmp_path: Path) -> Iterator[Product]:
    """The product with a token for IMAP and SMTP both; the provider is the test's."""
    user = quote(oauth_mailbox.user, safe="")
    smtp_url = f"smtp://{user}@{oauth_smtp.host}:{oauth_smtp.port}"
    product = Product(oauth_mailbox, oauth_smtp,
                      _env(oauth_mailbox, smtp_url, redis_url, token_server), tmp_path)
    yield product
    print("\n".join(product.logs))


@pytest.fixture
def imap_oauth_product(oauth_mailbox: Mailbox, smtp: RecordingSmtp, redis_url: str,
                       token_server: TokenServer, tmp_path: Path) -> Iterator[Product]:
    """A token for IMAP, a password relay for SMTP: the lead can be told by mail while
    the mailbox login is refused."""
    product = Product(oauth_mailbox, smtp,
                      _env(oauth_mailbox, smtp.url, redis_url, token_server), tmp_path)
    yield product
    print("\n".join(product.logs))


# The providers, set up as an administrator would ----------------------------------------

def microsoft_app(product: Product, server: TokenServer) -> str:
    server.add_client("csm-router-app", "app-secret-value", product.alias)
    product.env |= {"ROUTER_OAUTH_PROVIDER": "microsoft", "ROUTER_OAUTH_TENANT": TENANT,
                    "ROUTER_OAUTH_CLIENT_ID": "csm-router-app",
                    "ROUTER_OAUTH_CLIENT_SECRET": "app-secret-value",
                    "ROUTER_OAUTH_AUTHORITY_HOST": f"{server.host}:{server.port}"}
    return "csm-router-app"


def microsoft_delegated(product: Product, server: TokenServer) -> str:
    """A public client and a device login, approved at once (as the user would)."""
    server.add_client("csm-router-desktop", None, product.alias)
    product.env |= {"ROUTER_OAUTH_PROVIDER": "microsoft", "ROUTER_OAUTH_TENANT": TENANT,
                    "ROUTER_OAUTH_CLIENT_ID": "csm-router-desktop",
                    "ROUTER_OAUTH_TOKEN_FILE": str(product.workdir / "oauth.json"),
                    "ROUTER_OAUTH_AUTHORITY_HOST": f"{server.host}:{server.port}"}
    said = product.cli("login")
    assert "devicelogin" in said.stdout + said.stderr or "code" in said.stdout + said.stderr
    return "csm-router-desktop"


def google_service_account(product: Product, server: TokenServer) -> str:
    key_file = server.add_service_account([product.alias])
    product.env |= {"ROUTER_OAUTH_PROVIDER": "google",
                    "ROUTER_OAUTH_SERVICE_ACCOUNT_FILE": str(key_file)}
    return "csm-router@acme-mail.iam.gserviceaccount.com"


def google_delegated(product: Product, server: TokenServer) -> str:
    """A Desktop app client and `csm-router login`'s loopback flow with PKCE; the person's
    browser is played by urllib, which follows the consent screen's redirect back."""
    client_id = "csm-router-desktop.apps.googleusercontent.com"
    server.add_client(client_id, "desktop-secret", product.alias)
    token_file = product.workdir / "oauth.json"
    product.env |= {"ROUTER_OAUTH_PROVIDER": "google", "ROUTER_OAUTH_CLIENT_ID": client_id,
                    "ROUTER_OAUTH_CLIENT_SECRET": "desktop-secret",
                    "ROUTER_OAUTH_TOKEN_URL": server.google_token_url,
                    "ROUTER_OAUTH_TOKEN_FILE": str(token_file)}
    settings = OAuthSettings("google", product.alias, client_id=client_id,
                             client_secret="desktop-secret", token_url=server.google_token_url,
                             token_file=token_file)
    printed = _Printed()
    with mock.patch.object(login_module, "GOOGLE_AUTH_URI", f"{server.url}/google/auth"), \
            contextlib.redirect_stdout(printed), ThreadPoolExecutor(1) as pool:
        done = pool.submit(login_module.login, settings, print)
        address = printed.address(timeout=30)
        assert "code_challenge_method=S256" in address and "access_type=offline" in address
        browser = ssl.create_default_context(cafile=str(server.ca_file))
        with urllib.request.urlopen(address, timeout=30, context=browser) as page:
            assert b"csm-router has the login" in page.read()
        assert done.result(timeout=30) == product.alias
    assert server.grants["authorization_code"] == 1
    return client_id


class _Printed(io.TextIOBase):
    """What the login prints, watched for the address the person is asked to open."""

    def __init__(self) -> None:
        self.text, self.seen = "", threading.Event()

    def write(self, text: str) -> int:
        self.text += text
        if "/google/auth?" in self.text:
            self.seen.set()
        return len(text)

    def address(self, timeout: float) -> str:
        assert self.seen.wait(timeout), self.text
        return next(w for w in self.text.split() if "/google/auth?" in w)


def generic_app(product: Product, server: TokenServer) -> str:
    server.add_client("csm-router", "generic-secret", product.alias)
    product.env |= {"ROUTER_OAUTH_PROVIDER": "generic",
                    "ROUTER_OAUTH_TOKEN_URL": server.token_url,
                    "ROUTER_OAUTH_CLIENT_ID": "csm-router",
                    "ROUTER_OAUTH_CLIENT_SECRET": "generic-secret"}
    return "csm-router"


def generic_refresh(product: Product, server: TokenServer) -> str:
    """A refresh token from an earlier login, kept in the token file."""
    server.add_client("csm-router-public", None, product.alias)
    token_file = product.workdir / "oauth.json"
    token_file.write_text(json.dumps(
        {"refresh_token": server.issue_refresh_token("csm-router-public", product.alias)}))
    token_file.chmod(0o600)
    product.env |= {"ROUTER_OAUTH_PROVIDER": "generic",
                    "ROUTER_OAUTH_TOKEN_URL": server.token_url,
                    "ROUTER_OAUTH_CLIENT_ID": "csm-router-public",
                    "ROUTER_OAUTH_TOKEN_FILE": str(token_file)}
    return "csm-router-public"


PROVIDERS: dict[str, Callable[[Product, TokenServer], str]] = {
    "microsoft-app": microsoft_app, "microsoft-delegated": microsoft_delegated,
    "google-service-account": google_service_account, "google-delegated": google_delegated,
    "generic-app": generic_app,
    "generic-refresh-token": generic_refresh,
}
# The grant whose tokens each provider's processes use, and the endpoint that granted them.
EXPECTED = {
    "microsoft-app": ("client_credentials", TENANT),
    "microsoft-delegated": ("device_code", TENANT),  # msal keeps the login's token
    "google-service-account": ("jwt_bearer", "google"),
    "google-delegated": ("refresh_token", "google"),  # renewed from the login's token file
    "generic-app": ("client_credentials", None),
    "generic-refresh-token": ("refresh_token", None),
}


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_each_provider_routes_a_customer_end_to_end(
    provider: str, oauth_product: Product, token_server: TokenServer, oauth_smtp: OAuthSmtp
) -> None:
    product = oauth_product
    client = PROVIDERS[provider](product, token_server)
    checked = product.cli("check")
    assert "token granted, valid 60 min" in checked.stdout, checked.stdout
    product.write("Jane Doe <jane@globex.com>", "Export to CSV")
    forwarded = product.route()
    assert [str(r.message["Subject"]).split("] ", 1)[-1] for r in forwarded] == ["Export to CSV"]
    # Every login was a token's, each token fetched at the provider's own endpoint.
    assert {login.user for login in oauth_smtp.logins} == {product.alias}
    assert oauth_smtp.refused_logins == []
    # Every token Dovecot and the relay were given came from the provider's own grant
    # and endpoint, for the alias user.
    used = set(token_server.introspections) | {login.token for login in oauth_smtp.logins}
    issued = token_server.tokens
    kind, endpoint = EXPECTED[provider]
    assert {(issued[t].grant, issued[t].client_id, issued[t].tenant, issued[t].user)
            for t in used} == {(kind, client, endpoint, product.alias)}
    assert all(r.error is None for r in token_server.requests)
    if provider.endswith(("delegated", "refresh-token")):  # Google's delegated too
        token_file = product.workdir / "oauth.json"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        kept = token_file.read_text()
        # The rotated refresh token was written back; the one given up is worthless.
        assert any(t in kept for t in token_server.refresh_tokens)


def test_a_token_revoked_before_it_lapses_is_traded_for_a_new_one(
    oauth_product: Product, token_server: TokenServer, oauth_smtp: OAuthSmtp
) -> None:
    product = oauth_product
    microsoft_delegated(product, token_server)  # msal keeps the login's token in the file
    (stale,) = token_server.tokens
    token_server.invalidate(stale)  # revoked early, as a password reset does
    product.write("Jane Doe <jane@globex.com>", "After the reset")
    assert [str(r.message["Subject"]).split("] ", 1)[-1]
            for r in product.route()] == ["After the reset"]
    assert token_server.introspections[0] == stale  # offered once, refused...
    assert token_server.grants["refresh_token"] >= 1  # ...and replaced, not waited on
    assert {login.token for login in oauth_smtp.refused_logins} <= {stale}
    assert stale not in (product.workdir / "oauth.json").read_text()


def test_a_first_token_refused_stops_the_router_with_the_reason(
    oauth_product: Product, token_server: TokenServer
) -> None:
    client = microsoft_app(oauth_product, token_server)
    token_server.revoke(client)
    done = oauth_product.cli("run", "--exit-when-idle", check=False)
    assert done.returncode == 2
    assert "AADSTS7000215" in done.stderr and "ROUTER_OAUTH_CLIENT_SECRET" in done.stderr
    assert "app-secret-value" not in done.stdout + done.stderr
    checked = oauth_product.cli("check", check=False)
    assert checked.returncode == 2 and "AADSTS7000215" in checked.stdout + checked.stderr


def forwarded_subjects(product: Product) -> Counter[str]:
    return Counter(str(r.message["Subject"]).split("] ", 1)[-1] for r in product.smtp.messages
                   if LEAD not in r.rcpt_tos)


@pytest.mark.parametrize("provider", ["generic-app", "microsoft-delegated"])
def test_a_stream_across_three_token_lifetimes_is_routed_once_each(
    provider: str, oauth_product: Product, token_server: TokenServer,
    oauth_dovecot: DovecotServer, oauth_smtp: OAuthSmtp
) -> None:
    product = oauth_product
    token_server.lifetime = 6  # renewed with 1.5 s left: a renewal every 4.5 s or so
    client = PROVIDERS[provider](product, token_server)
    router = start(product, "run", log="router.log")
    worker = start(product, "worker", log="worker.log")
    try:
        sent = 0
        for wave in range(4):
            for _ in range(3):
                product.write(f"C{sent} <c{sent}@customer{sent}.com>", f"Stream {sent:02d}")
                sent += 1
            wait_until(lambda sent=sent: sum(forwarded_subjects(product).values()) >= sent,
                       f"wave {wave} forwarded", timeout=60)
            # Outlast the tokens in hand; the dropped session logs in again with a new one.
            lapsed = max(t.expires_at for t in token_server.tokens.values())
            wait_until(lambda lapsed=lapsed: time.time() > lapsed + 0.5,
                       "the tokens to lapse", timeout=30)
            oauth_dovecot.kick(product.alias)
    finally:
        assert stop(router) == 0 and stop(worker) == 0
    assert forwarded_subjects(product) == Counter(f"Stream {n:02d}" for n in range(sent))
    renewals = "client_credentials" if provider == "generic-app" else "refresh_token"
    assert token_server.grants[renewals] >= 4  # renewed, never refused
    assert {r.client_id for r in token_server.requests} == {client}
    assert all(r.error is None for r in token_server.requests)
    if provider == "microsoft-delegated":
        # Each renewal spent the refresh token it used: the file holds the live one.
        (live,) = token_server.refresh_tokens
        assert live in (product.workdir / "oauth.json").read_text()
    assert oauth_smtp.refused_logins == []
    # Dovecot refused no token the router gave it: every one was live when used.
    log = (product.workdir / "router.log").read_text()
    assert "refused" not in log.lower(), log


def healthz(base: str) -> tuple[int, str]:
    return get(base + "/healthz")


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that keeps its data, as production's does: /healthz can be healthy."""
    with RedisServer(tmp_path / "redis", persistent=True) as server:
        yield server


@dataclass
class Deployment:
    """`run`, `worker` and `web` of a product, running."""

    base: str  # the web server's address
    router: subprocess.Popen[str]
    log: Callable[[], str]  # the router's log so far


@contextlib.contextmanager
def healthy(product: Product, redis: RedisServer) -> Iterator[Deployment]:
    """The product's three processes on a durable Redis, one customer's mail ("Before")
    forwarded and /healthz at 200; each process ends with status 0."""
    product.env["ROUTER_REDIS_URL"] = redis.url
    (port,) = free_ports(1)
    product.env["ROUTER_WEB_ADDRESS"] = f"127.0.0.1:{port}"
    base = f"http://127.0.0.1:{port}"
    router = start(product, "run", log="router.log")
    worker = start(product, "worker", log="worker.log")
    web = start(product, "web", log="web.log")
    log = (product.workdir / "router.log").read_text
    try:
        product.write("Jane Doe <jane@globex.com>", "Before")
        wait_until(lambda: forwarded_subjects(product)["Before"] == 1, "Before forwarded")
        until(lambda: healthz(base)[0] == 200, "healthy", lambda: healthz(base)[1] + log())
        yield Deployment(base, router, log)
    finally:
        for proc in (router, worker, web):
            assert stop(proc) == 0


def test_a_revoked_app_is_waited_out_told_once_and_mended_without_a_restart(
    imap_oauth_product: Product, token_server: TokenServer, oauth_dovecot: DovecotServer,
    durable_redis: RedisServer
) -> None:
    product = imap_oauth_product
    token_server.lifetime = 4
    client = microsoft_app(product, token_server)
    with healthy(product, durable_redis) as running:
        base, router, log = running.base, running.router, running.log
        token_server.revoke(client)  # the secret deleted in the app registration
        lapsed = max(t.expires_at for t in token_server.tokens.values())
        wait_until(lambda: time.time() > lapsed + 0.5, "the token to lapse")
        oauth_dovecot.kick(product.alias)
        product.write("Joe Roe <joe@initech.io>", "During")
        until(lambda: "AADSTS7000215" in healthz(base)[1], "/healthz to say why", log)
        assert healthz(base)[0] == 503
        wait_until(lambda: any(LEAD in r.rcpt_tos for r in product.smtp.messages),
                   "the lead told")
        # The router waits; it tries again, and is refused again, without exiting.
        refusals = len([r for r in token_server.requests if r.error])
        wait_until(lambda: len([r for r in token_server.requests if r.error]) > refusals + 1,
                   "the router to try again", timeout=30)
        assert router.poll() is None, log()
        assert forwarded_subjects(product)["During"] == 0

        token_server.allow(client)  # a new secret put in place: no restart
        wait_until(lambda: forwarded_subjects(product)["During"] == 1, "During forwarded",
                   timeout=90)
        until(lambda: healthz(base)[0] == 200, "healthy again", log)
    told = [r for r in product.smtp.messages if LEAD in r.rcpt_tos]
    assert len(told) == 1  # once for the whole episode, however often it was refused
    assert "AADSTS7000215" in str(told[0].message)
    assert "app-secret-value" not in log() + str(told[0].message)
    assert forwarded_subjects(product) == Counter({"Before": 1, "During": 1})


def test_a_refusal_is_heard_while_connected_before_the_token_in_hand_lapses(
    imap_oauth_product: Product, token_server: TokenServer, durable_redis: RedisServer
) -> None:
    # Nobody logs in again here: the router stays in IDLE and the worker between sends,
    # so only renewing on their own finds the refusal while the old token still works.
    product = imap_oauth_product
    token_server.lifetime = 20  # renewed with 5 s left
    client = microsoft_app(product, token_server)
    with healthy(product, durable_redis) as running:
        token_server.revoke(client)  # the secret deleted in the app registration
        in_hand = max(t.expires_at for t in token_server.tokens.values())
        until(lambda: "AADSTS7000215" in healthz(running.base)[1], "/healthz to say why",
              running.log)
        wait_until(lambda: any(LEAD in r.rcpt_tos for r in product.smtp.messages),
                   "the lead told")
    first_refusal = min(r.at for r in token_server.requests if r.error)
    assert first_refusal < in_hand  # heard while the old token still worked
    # The router never reconnected to hear it: one login, one IDLE all along.
    log = running.log()
    assert log.count("with IDLE, refreshing every") == 1, log
