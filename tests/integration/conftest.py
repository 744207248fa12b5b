"""The `product` fixture: the real `csm-router` commands pointed at this test's servers."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from csm_router.demo.relay import RecordingSmtp
from support.oauth import OAuthSmtp, TokenServer
from support.product import AUTHSERV, POOL, Product
from support.servers import DovecotServer, Mailbox, MissingServerBinary, grant_traverse

# Refused logins answer at once and the next attempt from loopback waits for nothing: no
# failure delay, no growing penalty (anvil's, per IP) across the session's tests.
PROMPT_REFUSALS = """\
auth_failure_delay = 0
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
"""

# Apart from tests/conftest.py's numbering: the OAuth Dovecot is a server of its own.
_oauth_mailboxes = itertools.count(1)


@pytest.fixture
def product(
    mailbox: Mailbox, smtp: RecordingSmtp, redis_url: str, tmp_path: Path
) -> Iterator[Product]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env.update(
        ROUTER_IMAP_URL=mailbox.imap_url,
        ROUTER_SMTP_URL=smtp.url,
        ROUTER_REDIS_URL=redis_url,
        ROUTER_ALIAS=f"Acme Customer Success <{mailbox.user}>",
        ROUTER_POOL=POOL,
        ROUTER_POLL_SECONDS="1",
        ROUTER_OVERFLOW_ADDRESS="cs-lead@acme.com",
        ROUTER_TRUSTED_AUTHSERV_ID=AUTHSERV,  # as production should run
    )
    product = Product(mailbox, smtp, env, tmp_path)
    yield product
    print("\n".join(product.logs))  # pytest shows it for a failing test


@pytest.fixture(scope="session")
def oauth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    """The session's token server (Dovecot's introspection points at it); tests take it
    through `token_server`, which forgets the last test's clients and tokens."""
    with TokenServer(tmp_path_factory.mktemp("oauth")) as server:
        yield server


@pytest.fixture
def token_server(oauth_server: TokenServer, monkeypatch: pytest.MonkeyPatch) -> TokenServer:
    """The token server, reset, with REQUESTS_CA_BUNDLE trusting its CA (for msal,
    google-auth and requests-oauthlib in this process; a product process needs it in its
    own environment)."""
    oauth_server.reset()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(oauth_server.ca_file))
    return oauth_server


@pytest.fixture(scope="session")
def oauth_dovecot(
    tmp_path_factory: pytest.TempPathFactory, oauth_server: TokenServer
) -> Iterator[DovecotServer]:
    """A Dovecot whose users also log in with XOAUTH2 or OAUTHBEARER and a live token of
    the token server (the shared password keeps working); a refusal answers at once."""
    root = tmp_path_factory.mktemp("dovecot-oauth")
    basetemp = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        basetemp = basetemp.parent
    up_to = basetemp.parent if basetemp.parent.name.startswith("pytest-of-") else basetemp
    grant_traverse(root, up_to=up_to)
    try:
        with DovecotServer(root, oauth=oauth_server, extra=PROMPT_REFUSALS) as server:
            yield server
    except MissingServerBinary as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None


@pytest.fixture
def oauth_mailbox(oauth_dovecot: DovecotServer) -> Iterator[Mailbox]:
    """A fresh mailbox (success-oauth-<n>@acme.com) on the OAuth Dovecot."""
    box = Mailbox(oauth_dovecot, f"success-oauth-{next(_oauth_mailboxes)}@acme.com")
    yield box
    box.close()


@pytest.fixture
def oauth_smtp(token_server: TokenServer) -> Iterator[OAuthSmtp]:
    """A recording relay that wants AUTH XOAUTH2 with a live token of `token_server`."""
    with OAuthSmtp(token_server) as relay:
        yield relay
