"""Where a token comes from: each provider's own library, behind one call.

- Microsoft 365, unattended: msal's client-credentials grant at the tenant's own endpoint
  (never `/common`), for `IMAP.AccessAsApp` and `SMTP.SendAsApp`.
- Microsoft 365, delegated: msal's token cache, kept in the token file; the refresh token
  Microsoft rotates at each use is written back at once.
- Google Workspace, unattended: google-auth's service account with domain-wide delegation,
  acting as the alias user; delegated: the stored user credentials, refreshed.
- Any other provider: requests-oauthlib's client-credentials grant (RFC 6749 section 4.4)
  at ROUTER_OAUTH_TOKEN_URL, or the refresh-token grant with a stored refresh token.

The libraries are imported when a token is first wanted, so a password deployment never
loads them. Every failure leaves as TokenRefusedError (said in plain words) or
TransientError (the provider out of reach, or in trouble).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

from csm_router.errors import TransientError
from csm_router.oauth.explain import explain, transient
from csm_router.oauth.settings import (
    GOOGLE_SCOPE,
    MICROSOFT_APP_SCOPE,
    MICROSOFT_USER_SCOPES,
    OAuthSettings,
)
from csm_router.oauth.tokenfile import TokenFile
from csm_router.oauth.tokens import AccessToken, TokenRefusedError, Tokens, granted

TIMEOUT = 30.0  # seconds for one answer of the identity provider


@functools.cache
def tokens_for(settings: OAuthSettings) -> Tokens:
    """This process's one token holder for these settings (router and worker threads share
    it, and so share each renewal)."""
    fresh = None
    if settings.provider == "microsoft" and settings.delegated:
        fresh = functools.partial(_translated, settings, _microsoft_user_fresh)
    return Tokens(fetcher(settings), settings.describe(), fetch_fresh=fresh)


def fetcher(settings: OAuthSettings) -> Callable[[], AccessToken]:
    """The function that gets a token for these settings (the one a library keeps, while
    it has one)."""
    kinds: dict[tuple[str, bool], Callable[[OAuthSettings], AccessToken]] = {
        ("microsoft", False): _microsoft_app, ("microsoft", True): _microsoft_user,
        ("google", False): _google_service_account, ("google", True): _google_user,
        ("generic", False): _generic_client, ("generic", True): _generic_refresh,
    }
    fetch = kinds[settings.provider, settings.delegated]
    return lambda: _translated(settings, fetch)


def _translated(settings: OAuthSettings, fetch: Callable[[OAuthSettings], AccessToken]
                ) -> AccessToken:
    """`fetch`, with the libraries' network failures as TransientError."""
    import requests

    try:
        return fetch(settings)
    except requests.RequestException as exc:
        raise TransientError(f"{settings.describe()}: the identity provider is out of "
                             f"reach ({type(exc).__name__})") from None


def refused(settings: OAuthSettings, error: str, description: str = "") -> Exception:
    """The error for a provider's refusal: transient codes are waited out."""
    line = f"{settings.describe()} refused a token: {explain(error, description)}"
    return TransientError(line) if transient(error) else TokenRefusedError(line)


# Microsoft 365 --------------------------------------------------------------------------

def _msal_token(settings: OAuthSettings, result: dict[str, Any] | None) -> AccessToken:
    if result and "access_token" in result:
        return granted(result["access_token"], result.get("expires_in", 3600))
    if not result:
        raise TokenRefusedError(f"{settings.describe()}: the token file holds no login for "
                                f"{settings.user}: run `csm-router login` again")
    raise refused(settings, str(result.get("error", "")),
                  str(result.get("error_description", "")))


def _microsoft_app(settings: OAuthSettings) -> AccessToken:
    import msal

    try:
        app = msal.ConfidentialClientApplication(
            settings.client_id, client_credential=settings.client_secret,
            authority=settings.authority, instance_discovery=False, timeout=TIMEOUT)
    except ValueError:
        raise TokenRefusedError(f"{settings.describe()}: the tenant's login endpoint "
                                f"{settings.authority} answers no configuration: check "
                                "ROUTER_OAUTH_TENANT") from None
    result = app.acquire_token_for_client(scopes=[settings.scope or MICROSOFT_APP_SCOPE])
    return _msal_token(settings, result)


def microsoft_public_app(settings: OAuthSettings, cache: Any) -> Any:
    """msal's public client for delegated logins, with `cache` as its token cache."""
    import msal

    try:
        return msal.PublicClientApplication(
            settings.client_id, authority=settings.authority, token_cache=cache,
            instance_discovery=False, timeout=TIMEOUT)
    except ValueError:
        raise TokenRefusedError(f"{settings.describe()}: the tenant's login endpoint "
                                f"{settings.authority} answers no configuration: check "
                                "ROUTER_OAUTH_TENANT") from None


def user_scopes(settings: OAuthSettings) -> list[str]:
    """The scopes of a delegated Microsoft login."""
    return settings.scope.split() if settings.scope else list(MICROSOFT_USER_SCOPES)


def _microsoft_user_fresh(settings: OAuthSettings) -> AccessToken:
    return _microsoft_user(settings, force=True)


def _microsoft_user(settings: OAuthSettings, force: bool = False) -> AccessToken:
    import msal

    assert settings.token_file is not None
    with TokenFile(settings.token_file).locked() as stored:
        data = stored.read()
        cache = msal.SerializableTokenCache()
        cache.deserialize(data.get("msal") or "{}")
        app = microsoft_public_app(settings, cache)
        accounts = app.get_accounts(username=settings.user) or app.get_accounts()
        result = (app.acquire_token_silent_with_error(user_scopes(settings),
                                                      account=accounts[0], force_refresh=force)
                  if accounts else None)
        if cache.has_state_changed:  # a rotated refresh token: kept before it is used
            stored.write({**data, "msal": cache.serialize(), "renewed": time.time()})
        return _msal_token(settings, result)


# Google Workspace -----------------------------------------------------------------------

def _google_refresh(settings: OAuthSettings, credentials: Any) -> AccessToken:
    import google.auth.exceptions
    from google.auth.transport.requests import Request

    try:
        credentials.refresh(Request())
    except google.auth.exceptions.TransportError as exc:
        raise TransientError(f"{settings.describe()}: Google is out of reach ({exc})") from None
    except google.auth.exceptions.RefreshError as exc:
        answer = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        error = str(answer.get("error") or "")
        if exc.retryable and not error:
            raise TransientError(f"{settings.describe()}: Google: {exc.args[0]}") from None
        raise refused(settings, error or "refused",
                      str(answer.get("error_description") or exc.args[0])) from None
    expiry = credentials.expiry  # naive, in UTC
    left = expiry.replace(tzinfo=UTC).timestamp() - time.time() if expiry else 3600.0
    return granted(credentials.token, left)


def _google_service_account(settings: OAuthSettings) -> AccessToken:
    from google.oauth2 import service_account

    try:
        credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            str(settings.service_account_file), scopes=[settings.scope or GOOGLE_SCOPE],
            subject=settings.user)
    except (OSError, ValueError, KeyError) as exc:
        raise TokenRefusedError(f"ROUTER_OAUTH_SERVICE_ACCOUNT_FILE "
                                f"{settings.service_account_file} is not a service account "
                                f"key ({type(exc).__name__})") from None
    return _google_refresh(settings, credentials)


def _google_user(settings: OAuthSettings) -> AccessToken:
    from google.oauth2.credentials import Credentials

    assert settings.token_file is not None
    with TokenFile(settings.token_file).locked() as stored:
        data = stored.read()
        try:
            credentials = Credentials.from_authorized_user_info(  # type: ignore[no-untyped-call]
                data.get("google") or {}, scopes=[settings.scope or GOOGLE_SCOPE])
        except ValueError as exc:
            raise TokenRefusedError(f"{settings.token_file} holds no Google login ({exc}): "
                                    "run `csm-router login` again") from None
        if settings.token_url:
            # google-auth reads every stored login as Google's own: the endpoint the login
            # was made at (ROUTER_OAUTH_TOKEN_URL) renews it too.
            credentials = credentials.with_token_uri(settings.token_url)
        token = _google_refresh(settings, credentials)
        stored.write({**data, "google": json.loads(credentials.to_json()),
                      "renewed": time.time()})
        return token


# Any other provider ---------------------------------------------------------------------

def _oauthlib_token(settings: OAuthSettings, call: Callable[[], dict[str, Any]]
                    ) -> dict[str, Any]:
    from oauthlib.oauth2 import OAuth2Error

    try:
        return call()
    except OAuth2Error as exc:
        if exc.status_code >= 500:
            raise TransientError(f"{settings.describe()}: the token endpoint answered "
                                 f"{exc.status_code}") from None
        raise refused(settings, exc.error or "refused", exc.description or "") from None
    except ValueError as exc:  # an answer that is not a token at all
        raise TransientError(f"{settings.describe()}: the token endpoint's answer is not "
                             f"a token ({exc})") from None


def _expires_in(token: dict[str, Any]) -> float:
    if token.get("expires_in"):
        return float(token["expires_in"])
    if token.get("expires_at"):
        return float(token["expires_at"]) - time.time()
    return 3600.0


def _generic_client(settings: OAuthSettings) -> AccessToken:
    from oauthlib.oauth2 import BackendApplicationClient
    from requests_oauthlib import OAuth2Session

    session = OAuth2Session(client=BackendApplicationClient(client_id=settings.client_id),
                            scope=settings.scope.split() or None)
    token = _oauthlib_token(settings, lambda: session.fetch_token(
        settings.token_url, client_id=settings.client_id,
        client_secret=settings.client_secret, timeout=TIMEOUT))
    return granted(str(token["access_token"]), _expires_in(token))


def _generic_refresh(settings: OAuthSettings) -> AccessToken:
    from requests.auth import HTTPBasicAuth
    from requests_oauthlib import OAuth2Session

    assert settings.token_file is not None
    with TokenFile(settings.token_file).locked() as stored:
        data = stored.read()
        session = OAuth2Session(settings.client_id, scope=settings.scope.split() or None)
        auth = (HTTPBasicAuth(settings.client_id, settings.client_secret)
                if settings.client_secret else None)
        token = _oauthlib_token(settings, lambda: session.refresh_token(
            settings.token_url, refresh_token=str(data.get("refresh_token") or ""),
            auth=auth, timeout=TIMEOUT))
        if token.get("refresh_token"):
            stored.write({**data, "refresh_token": token["refresh_token"],
                          "renewed": time.time()})
        return granted(str(token["access_token"]), _expires_in(token))
