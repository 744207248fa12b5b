"""A delegated login, once, by a person: for tenants that allow no app permissions.

Microsoft: the device code flow (the person opens a short address on any device and types
a code), so the router's host needs no browser. Google: the loopback flow with PKCE (the
browser comes back to a port on this host), as Google allows no device flow for the
`https://mail.google.com/` scope. Either way the refresh token lands in the token file,
which the processes renew from and rewrite at every rotation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from csm_router.errors import RefusedError
from csm_router.oauth.providers import microsoft_public_app, refused, user_scopes
from csm_router.oauth.settings import GOOGLE_SCOPE, OAuthSettings
from csm_router.oauth.tokenfile import TokenFile

GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/auth"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"


def login(settings: OAuthSettings, say: Callable[[str], None]) -> str:
    """Run the provider's interactive login and store it; answers the account's name."""
    if settings.token_file is None:
        raise RefusedError("ROUTER_OAUTH_TOKEN_FILE is not set: it is where the login is kept")
    if not settings.delegated:
        raise RefusedError(f"{settings.describe()} logs in by itself (client secret or "
                           "service account): `csm-router login` is for delegated logins")
    if settings.provider == "microsoft":
        return _device_code(settings, say)
    if settings.provider == "google":
        return _loopback(settings, say)
    raise RefusedError("the generic provider has no interactive login here: write its "
                       f'refresh token into {settings.token_file} as {{"refresh_token": ...}}')


def _device_code(settings: OAuthSettings, say: Callable[[str], None]) -> str:
    import msal

    assert settings.token_file is not None
    cache = msal.SerializableTokenCache()
    app = microsoft_public_app(settings, cache)
    flow = app.initiate_device_flow(scopes=user_scopes(settings))
    if "user_code" not in flow:
        raise refused(settings, str(flow.get("error", "")), str(flow.get("error_description", "")))
    say(str(flow["message"]))  # "To sign in, use a web browser to open ... enter the code ..."
    result: dict[str, Any] = app.acquire_token_by_device_flow(flow)
    if "access_token" not in result:
        raise refused(settings, str(result.get("error", "")),
                      str(result.get("error_description", "")))
    account = str((result.get("id_token_claims") or {}).get("preferred_username") or "")
    TokenFile(settings.token_file).write({"provider": "microsoft", "user": account,
                                          "msal": cache.serialize(), "renewed": time.time()})
    return account or settings.user


def _loopback(settings: OAuthSettings, say: Callable[[str], None]) -> str:
    from google_auth_oauthlib.flow import InstalledAppFlow

    assert settings.token_file is not None
    if not settings.client_id or not settings.client_secret:
        raise RefusedError("a Google delegated login needs the OAuth client's id and secret "
                           "in ROUTER_OAUTH_CLIENT_ID and ROUTER_OAUTH_CLIENT_SECRET "
                           "(a Desktop app client)")
    config = {"installed": {
        "client_id": settings.client_id, "client_secret": settings.client_secret,
        "auth_uri": GOOGLE_AUTH_URI, "token_uri": settings.token_url or GOOGLE_TOKEN_URI,
        "redirect_uris": ["http://127.0.0.1"],
    }}
    flow = InstalledAppFlow.from_client_config(
        config, scopes=[settings.scope or GOOGLE_SCOPE], autogenerate_code_verifier=True)
    credentials = flow.run_local_server(
        host="127.0.0.1", port=0, open_browser=False, login_hint=settings.user,
        access_type="offline", prompt="consent",
        authorization_prompt_message="Open this address in a browser on this machine and "
                                     "sign in as the alias user:\n{url}",
        success_message="Signed in: csm-router has the login. You may close this window.")
    if not credentials.refresh_token:
        raise RefusedError("Google answered no refresh token: remove the app's access at "
                           "myaccount.google.com/permissions and run `csm-router login` again")
    TokenFile(settings.token_file).write({"provider": "google", "user": settings.user,
                                          "google": json.loads(credentials.to_json()),
                                          "renewed": time.time()})
    return settings.user
