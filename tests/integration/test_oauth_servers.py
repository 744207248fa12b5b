"""The OAuth test servers themselves: the token server answers msal, google-auth and plain
RFC 6749 clients as the providers do, Dovecot takes its live tokens over XOAUTH2 and
OAUTHBEARER, and the relay takes them over SMTP AUTH XOAUTH2; each refuses what it should."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import quote

import certifi
import msal
import pytest
import requests
from aiosmtplib import SMTP, SMTPAuthenticationError, SMTPSenderRefused
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request
from google.oauth2 import service_account
from google.oauth2.credentials import Credentials
from imapclient import IMAPClient
from imapclient.exceptions import LoginError
from oauthlib.oauth2 import BackendApplicationClient, InvalidGrantError
from requests_oauthlib import OAuth2Session

from csm_router.config import parse_server_url
from csm_router.errors import RefusedError
from csm_router.mail.mailbox import Mailbox as RouterMailbox
from csm_router.mail.smtp import smtp_session
from support.oauth import OAuthSmtp, TokenServer
from support.servers import Mailbox

pytestmark = pytest.mark.integration

OUTLOOK_APP = "https://outlook.office365.com/.default"
MAIL = "https://mail.google.com/"
USER = "success@acme.com"


def post(url: str, **form: str) -> requests.Response:
    return requests.post(url, data=form, timeout=10)


def oauth_login(mailbox: Mailbox, token: str, user: str | None = None,
                mech: str = "XOAUTH2") -> None:
    client = IMAPClient(mailbox.server.host, port=mailbox.server.imap_port, ssl=False,
                        timeout=10)
    try:
        if mech == "OAUTHBEARER":
            client.oauthbearer_login(user or mailbox.user, token)
        else:
            client.oauth2_login(user or mailbox.user, token)
        client.select_folder("INBOX", readonly=True)
    finally:
        # A refused login leaves the connection open and unauthenticated.
        try:
            client.logout()
        except Exception:
            client.shutdown()


# The token server ---------------------------------------------------------------------------

def test_client_credentials_over_verified_https(token_server: TokenServer) -> None:
    token_server.add_client("router", "s3cret", USER)
    token_server.lifetime = 120

    answer = post(token_server.token_url, grant_type="client_credentials",
                  client_id="router", client_secret="s3cret", scope="mail").json()
    by_basic = requests.post(token_server.token_url, data={"grant_type": "client_credentials"},
                             auth=("router", "s3cret"), timeout=10).json()

    assert answer["token_type"] == "Bearer" and answer["expires_in"] == 120
    assert "refresh_token" not in answer
    issued = token_server.tokens[answer["access_token"]]
    assert (issued.user, issued.scope, issued.tenant) == (USER, "mail", None)
    assert by_basic["access_token"] in token_server.tokens
    assert token_server.grants["client_credentials"] == 2
    with pytest.raises(requests.exceptions.SSLError):  # real TLS: untrusted without its CA
        requests.get(token_server.url, timeout=10, verify=certifi.where())


def test_wrong_revoked_and_refused_clients_get_rfc6749_errors(
    token_server: TokenServer,
) -> None:
    token_server.add_client("router", "s3cret", USER)
    wrong = post(token_server.token_url, grant_type="client_credentials",
                 client_id="router", client_secret="nope")
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"

    token_server.revoke("router")
    revoked = post(token_server.token_url, grant_type="client_credentials",
                   client_id="router", client_secret="s3cret")
    assert revoked.status_code == 401
    assert revoked.json()["error"] == "invalid_client"
    assert revoked.json()["error_description"].startswith("AADSTS7000215: Invalid client secret")

    token_server.refuse("router", "unauthorized_client", "AADSTS700016: not here", 400)
    refused = post(token_server.token_url, grant_type="client_credentials",
                   client_id="router", client_secret="s3cret")
    assert (refused.status_code, refused.json()["error"]) == (400, "unauthorized_client")
    assert token_server.grants["client_credentials"] == 0
    assert [r.error for r in token_server.requests] == [
        "invalid_client", "invalid_client", "unauthorized_client"]


def test_refresh_tokens_rotate(token_server: TokenServer) -> None:
    token_server.add_client("desk", None, USER)
    first = token_server.issue_refresh_token("desk", USER)

    answer = post(token_server.token_url, grant_type="refresh_token", client_id="desk",
                  refresh_token=first).json()
    again = post(token_server.token_url, grant_type="refresh_token", client_id="desk",
                 refresh_token=first)

    assert answer["refresh_token"] != first
    assert token_server.refresh_tokens == {answer["refresh_token"]}
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")
    assert token_server.tokens[answer["access_token"]].user == USER
    assert token_server.grants["refresh_token"] == 1


def test_requests_oauthlib_client_credentials_and_refresh(token_server: TokenServer) -> None:
    token_server.add_client("backend", "s3cret", USER)
    token_server.add_client("desktop", None, USER)
    session = OAuth2Session(client=BackendApplicationClient(client_id="backend", scope=["mail"]))
    app = session.fetch_token(token_server.token_url, client_id="backend",
                              client_secret="s3cret")
    first = token_server.issue_refresh_token("desktop", USER)
    # A public client sends no client id with its refresh token.
    renewed = OAuth2Session("desktop").refresh_token(token_server.token_url, refresh_token=first)

    assert token_server.tokens[app["access_token"]].scope == "mail"
    assert renewed["refresh_token"] in token_server.refresh_tokens
    assert [(r.kind, r.client_id, r.error) for r in token_server.requests] == [
        ("client_credentials", "backend", None), ("refresh_token", "desktop", None)]
    with pytest.raises(InvalidGrantError):
        OAuth2Session("desktop").refresh_token(token_server.token_url, refresh_token=first,
                                               client_id="desktop")


def test_a_confidential_client_must_authenticate_its_refresh(token_server: TokenServer) -> None:
    token_server.add_client("backend", "s3cret", USER)
    stored = token_server.issue_refresh_token("backend", USER)
    bare = post(token_server.token_url, grant_type="refresh_token", client_id="backend",
                refresh_token=stored)
    assert (bare.status_code, bare.json()["error"]) == (401, "invalid_client")
    assert stored in token_server.refresh_tokens  # refused before it was spent


def test_tokens_expire_and_can_be_invalidated(token_server: TokenServer) -> None:
    live, dead, short = (token_server.issue(USER), token_server.issue(USER),
                         token_server.issue(USER, lifetime=0.2))
    token_server.invalidate(dead)
    time.sleep(0.3)  # real expiry is what is tested

    answers = [post(f"{token_server.http_url}/introspect", token=t).json()
               for t in (live, dead, short, "never-issued")]

    assert answers[0]["active"] is True and answers[0]["username"] == USER
    assert answers[1:] == [{"active": False}] * 3
    token_server.expire_all()
    assert token_server.introspect(live) == {"active": False}


def test_msal_client_credentials_use_the_tenants_endpoint(token_server: TokenServer) -> None:
    token_server.add_client("app-id", "s3cret", USER)
    app = msal.ConfidentialClientApplication(
        "app-id", client_credential="s3cret", authority=token_server.authority("acme-tenant"),
        instance_discovery=False)

    result = app.acquire_token_for_client(scopes=[OUTLOOK_APP])

    assert token_server.tokens[result["access_token"]].user == USER
    assert [(r.kind, r.tenant, r.scope) for r in token_server.requests] == [
        ("client_credentials", "acme-tenant", OUTLOOK_APP)]


def test_msal_sees_microsofts_errors(token_server: TokenServer) -> None:
    token_server.add_client("app-id", "s3cret", USER)
    token_server.revoke("app-id")
    app = msal.ConfidentialClientApplication(
        "app-id", client_credential="s3cret", authority=token_server.authority("acme-tenant"),
        instance_discovery=False)
    assert app.acquire_token_for_client(scopes=[OUTLOOK_APP])["error"] == "invalid_client"
    token_server.allow("app-id")
    bad_scope = app.acquire_token_for_client(scopes=["https://outlook.office365.com/IMAP"])
    assert bad_scope["error"] == "invalid_scope"

    token_server.tenants = {"acme-tenant"}
    with pytest.raises(ValueError):  # msal cannot read the unknown tenant's configuration
        msal.ConfidentialClientApplication(
            "app-id", client_credential="s3cret", authority=token_server.authority("other"),
            instance_discovery=False)


def test_msal_device_login_then_silent_refresh_rotates(token_server: TokenServer) -> None:
    token_server.add_client("public-app", None, USER)
    token_server.auto_approve = False
    cache = msal.SerializableTokenCache()
    app = msal.PublicClientApplication("public-app", token_cache=cache,
                                       authority=token_server.authority("acme-tenant"),
                                       instance_discovery=False)
    flow = app.initiate_device_flow(scopes=["https://outlook.office.com/IMAP.AccessAsUser.All"])
    token_server.approve(flow["user_code"])

    login = app.acquire_token_by_device_flow(flow)
    (account,) = app.get_accounts(username=USER)
    first_refresh = token_server.refresh_tokens
    renewed = app.acquire_token_silent_with_error(
        ["https://outlook.office.com/IMAP.AccessAsUser.All"], account=account,
        force_refresh=True)

    assert renewed is not None and renewed["access_token"] != login["access_token"]
    assert token_server.refresh_tokens.isdisjoint(first_refresh)
    assert token_server.grants == {"device_code": 1, "refresh_token": 1}
    assert {r.tenant for r in token_server.requests} == {"acme-tenant"}
    assert json.loads(cache.serialize())["RefreshToken"]


def test_google_service_account_with_delegation(token_server: TokenServer) -> None:
    key_file = token_server.add_service_account([USER])
    assert json.loads(key_file.read_text())["token_uri"] == token_server.google_token_url

    credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
        str(key_file), scopes=[MAIL], subject=USER)
    credentials.refresh(Request())

    issued = token_server.tokens[credentials.token]
    assert (issued.user, issued.tenant, issued.grant) == (USER, "google", "jwt_bearer")
    assert token_server.grants["jwt_bearer"] == 1


def test_google_user_credentials_refresh(token_server: TokenServer) -> None:
    token_server.add_client("desktop.apps.googleusercontent.com", "g-secret", USER)
    stored = token_server.issue_refresh_token("desktop.apps.googleusercontent.com", USER)
    credentials = Credentials(  # type: ignore[no-untyped-call]
        None, refresh_token=stored, token_uri=token_server.google_token_url,
        client_id="desktop.apps.googleusercontent.com", client_secret="g-secret",
        scopes=[MAIL])

    credentials.refresh(Request())  # type: ignore[no-untyped-call]

    assert token_server.tokens[str(credentials.token)].user == USER
    assert credentials.refresh_token in token_server.refresh_tokens
    assert [(r.kind, r.tenant) for r in token_server.requests] == [("refresh_token", "google")]


@pytest.mark.parametrize(("subject", "scope"), [("intruder@acme.com", MAIL),
                                                (USER, "https://www.googleapis.com/auth/drive")])
def test_google_refuses_undelegated_users_and_scopes(
    token_server: TokenServer, subject: str, scope: str
) -> None:
    key_file = token_server.add_service_account([USER])
    credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
        str(key_file), scopes=[scope], subject=subject)
    with pytest.raises(RefreshError, match="unauthorized_client"):
        credentials.refresh(Request())
    assert token_server.tokens == {}


def test_google_refuses_a_foreign_or_revoked_key(token_server: TokenServer,
                                                 tmp_path: Path) -> None:
    key_file = token_server.add_service_account([USER])
    forged = json.loads(key_file.read_text())
    other = json.loads(token_server.add_service_account([USER], email="x@y.iam").read_text())
    forged["private_key"] = other["private_key"]
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    for path in (tmp_path / "forged.json", key_file):
        credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            str(path), scopes=[MAIL], subject=USER)
        if path == key_file:
            token_server.revoke(forged["client_email"])
        with pytest.raises(RefreshError, match="invalid_grant: Invalid JWT Signature"):
            credentials.refresh(Request())


# Dovecot ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
def test_dovecot_takes_a_live_token(token_server: TokenServer, oauth_mailbox: Mailbox,
                                    mech: str) -> None:
    token = token_server.issue(oauth_mailbox.user)
    oauth_login(oauth_mailbox, token, mech=mech)
    assert token in token_server.introspections
    oauth_mailbox.imap_client().noop()  # the password still works beside tokens


def test_dovecot_refuses_dead_and_foreign_tokens(token_server: TokenServer,
                                                 oauth_mailbox: Mailbox) -> None:
    expired, revoked = token_server.issue(oauth_mailbox.user), token_server.issue(
        oauth_mailbox.user)
    token_server.expire_all()
    token_server.invalidate(revoked)
    someone_elses = token_server.issue("someone-else@acme.com")
    for token in (expired, revoked, someone_elses, "never-issued", oauth_mailbox.password):
        with pytest.raises(LoginError):
            oauth_login(oauth_mailbox, token)
    assert token_server.introspections[:3] == [expired, revoked, someone_elses]


# SMTP ---------------------------------------------------------------------------------------

def message(user: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = user, "csm@acme.com", "XOAUTH2"
    msg.set_content("Sent with a bearer token.\n")
    return msg


async def send(relay: OAuthSmtp, user: str, token: str | None) -> None:
    async with SMTP(hostname=relay.host, port=relay.port, start_tls=False,
                    use_tls=False, timeout=10) as client:
        if token is not None:
            await client.auth_xoauth2(user, token)
        await client.send_message(message(user))


def test_smtp_relay_takes_a_live_token(token_server: TokenServer,
                                       oauth_smtp: OAuthSmtp) -> None:
    token = token_server.issue(USER)
    asyncio.run(send(oauth_smtp, USER, token))
    (received,) = oauth_smtp.wait_for(1)
    assert received.rcpt_tos == ["csm@acme.com"]
    assert [(login.user, login.token) for login in oauth_smtp.logins] == [(USER, token)]
    assert oauth_smtp.url == f"smtp://{oauth_smtp.host}:{oauth_smtp.port}"


def test_smtp_relay_refuses_dead_tokens_with_535(token_server: TokenServer,
                                                 oauth_smtp: OAuthSmtp) -> None:
    expired = token_server.issue(USER, lifetime=-1)
    foreign = token_server.issue("someone-else@acme.com")
    for token in (expired, foreign, "never-issued"):
        with pytest.raises(SMTPAuthenticationError) as refused:
            asyncio.run(send(oauth_smtp, USER, token))
        assert refused.value.code == 535
    with pytest.raises(SMTPSenderRefused) as unauthenticated:
        asyncio.run(send(oauth_smtp, USER, None))
    assert unauthenticated.value.code == 530
    assert oauth_smtp.messages == [] and oauth_smtp.logins == []
    assert [login.token for login in oauth_smtp.refused_logins] == [
        expired, foreign, "never-issued"]


# The product's own clients --------------------------------------------------------------------

def test_the_product_mailbox_logs_in_with_a_token(token_server: TokenServer,
                                                  oauth_mailbox: Mailbox) -> None:
    url = replace(parse_server_url(oauth_mailbox.imap_url, ("imap", "imaps")), password="",
                  token=lambda: token_server.issue(oauth_mailbox.user))
    box = RouterMailbox(url)
    box.connect()
    box.close()
    dead = replace(url, token=lambda: "never-issued")
    with pytest.raises(RefusedError, match="refused the OAuth token"):
        RouterMailbox(dead).connect()
    assert len(token_server.introspections) == 2


def test_the_product_smtp_session_authenticates_with_a_token(
    token_server: TokenServer, oauth_smtp: OAuthSmtp
) -> None:
    url = replace(parse_server_url(f"smtp://{quote(USER)}@{oauth_smtp.host}:{oauth_smtp.port}",
                                   ("smtp", "smtps")), token=lambda: token_server.issue(USER))

    async def deliver() -> None:
        async with smtp_session(url, timeout=10) as client:
            await client.send_message(message(USER))

    asyncio.run(deliver())
    assert len(oauth_smtp.wait_for(1)) == 1 and [x.user for x in oauth_smtp.logins] == [USER]
