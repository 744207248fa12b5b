"""A provider's refusal to grant a token, said in one line of plain words.

Microsoft names its reasons `AADSTS` codes inside the error description; Google and
RFC 6749 providers answer an `error` code and sometimes a description. The codes an
administrator meets when a mailbox login stops working are named here with what mends
them; any other is passed on as the provider said it.
"""

from __future__ import annotations

import re

# Microsoft Entra ID's codes (https://learn.microsoft.com/entra/identity-platform/reference-error-codes).
AADSTS: dict[str, str] = {
    "7000215": "the client secret is wrong: copy the secret's value (not its id) into "
               "ROUTER_OAUTH_CLIENT_SECRET",
    "7000222": "the client secret has expired: add a new one to the app registration and "
               "put it in ROUTER_OAUTH_CLIENT_SECRET",
    "700016": "no app with this client id in the tenant: check ROUTER_OAUTH_CLIENT_ID and "
              "ROUTER_OAUTH_TENANT",
    "90002": "no such tenant: check ROUTER_OAUTH_TENANT (the directory id or domain)",
    "900023": "ROUTER_OAUTH_TENANT is not a tenant id or domain",
    "50194": "the app is single-tenant and cannot use the /common endpoint: set "
             "ROUTER_OAUTH_TENANT to the tenant's id",
    "65001": "an administrator has not consented to the app's permissions: grant admin "
             "consent for IMAP.AccessAsApp and SMTP.SendAsApp",
    "650057": "the app does not request this permission: add IMAP.AccessAsApp and "
              "SMTP.SendAsApp (Office 365 Exchange Online) to the app registration",
    "700082": "the refresh token expired after 90 days unused: run `csm-router login` again",
    "700084": "the refresh token has expired: run `csm-router login` again",
    "50173": "the grant was revoked (the user's password changed or sessions were "
             "revoked): run `csm-router login` again",
    "50076": "multi-factor authentication is required for this account now: run "
             "`csm-router login` again",
    "53003": "a Conditional Access policy blocks this sign-in: ask the tenant's "
             "administrator to allow the app",
    "50057": "the user account is disabled",
    "50126": "the user name or password is wrong",
    "7000112": "the app is disabled in the tenant",
    "1002016": "the client's TLS is too old for Microsoft's login endpoint",
    "7000218": "the app registration does not allow public client flows: turn on \"Allow "
               "public client flows\" for `csm-router login`, or set "
               "ROUTER_OAUTH_CLIENT_SECRET for the app's own login",
    "7000229": "the app has no service principal in the tenant: grant admin consent, "
               "which creates it",
    "500011": "Office 365 Exchange Online is not found in the tenant: the tenant has no "
              "Exchange Online, or admin consent was never given",
    "70011": "the scope asked for is not valid for this app (an app's own login asks for "
             "https://outlook.office365.com/.default)",
    "70043": "the refresh token lapsed under a Conditional Access sign-in frequency: run "
             "`csm-router login` again",
    "50034": "no such user in the tenant: check the alias user in ROUTER_IMAP_URL and "
             "ROUTER_OAUTH_TENANT",
}

# RFC 6749 section 5.2 codes, as Google and others use them.
OAUTH_ERRORS: dict[str, str] = {
    "invalid_client": "the identity provider does not know this client or its secret: check "
                      "ROUTER_OAUTH_CLIENT_ID and ROUTER_OAUTH_CLIENT_SECRET",
    "unauthorized_client": "the client may not get tokens this way or for this scope; for "
                           "Google, domain-wide delegation of https://mail.google.com/ to "
                           "the service account's client id is missing",
    "invalid_grant": "the grant was refused: a refresh token revoked or expired (run "
                     "`csm-router login` again), or, for a Google service account, a key "
                     "deleted or a user outside the domain",
    "invalid_scope": "the scope is not allowed for this client: check ROUTER_OAUTH_SCOPE",
    "access_denied": "access was denied: an administrator must allow the app",
    "unsupported_grant_type": "the token endpoint does not offer this grant: check "
                              "ROUTER_OAUTH_TOKEN_URL",
    "invalid_request": "the token endpoint found the request malformed: check the "
                       "ROUTER_OAUTH_* settings",
    # Google's own codes.
    "admin_policy_enforced": "the Workspace administrator's API access policy blocks this "
                             "app: allow it under Security, API controls",
    "deleted_client": "the OAuth client was deleted in the Google Cloud project: create "
                      "one and run `csm-router login` again",
    "disabled_client": "the OAuth client is disabled in the Google Cloud project: enable "
                       "it again",
    "org_internal": "the OAuth client is internal to another Workspace organisation",
}

# Codes that say the provider is in trouble, not the configuration: waited out.
TRANSIENT = frozenset({"temporarily_unavailable", "server_error", "slow_down",
                       "authorization_pending"})

_AADSTS = re.compile(r"AADSTS(\d+)")


def explain(error: str, description: str = "") -> str:
    """One line: the provider's code and what it means for the operator."""
    description = " ".join(description.split())
    found = _AADSTS.search(description)
    if found:
        code = found.group(1)
        meaning = AADSTS.get(code) or _first_sentence(description.split(":", 1)[-1])
        return f"AADSTS{code} ({error or 'refused'}): {meaning}"
    meaning = OAUTH_ERRORS.get(error, "")
    said = _first_sentence(description)
    if meaning and said:
        return f"{error}: {meaning} (the provider said: {said})"
    return f"{error or 'refused'}: {meaning or said or 'no reason given'}"


def transient(error: str) -> bool:
    """Whether a refusal with this code is worth waiting out."""
    return error in TRANSIENT


def _first_sentence(text: str) -> str:
    text = text.strip()
    cut = re.search(r"(?<=[.!?])\s", text)
    return (text[: cut.start()] if cut else text)[:200]
