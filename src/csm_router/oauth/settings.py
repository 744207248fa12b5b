"""The ROUTER_OAUTH_* settings as plain values, and what makes a set of them whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PROVIDERS = ("microsoft", "google", "generic")
MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default"
MICROSOFT_USER_SCOPES = ("https://outlook.office.com/IMAP.AccessAsUser.All",
                         "https://outlook.office.com/SMTP.Send")
GOOGLE_SCOPE = "https://mail.google.com/"


# Microsoft's endpoints shared by all tenants: a single-tenant app is refused there, and an
# app's own login needs its tenant.
SHARED_ENDPOINTS = frozenset({"common", "organizations", "consumers"})


@dataclass(frozen=True)
class OAuthSettings:
    """The ROUTER_OAUTH_* settings, and the mailbox user the tokens act for."""

    provider: str
    user: str
    tenant: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    token_url: str = ""
    scope: str = ""
    service_account_file: Path | None = None
    token_file: Path | None = None
    authority_host: str = "login.microsoftonline.com"

    @property
    def delegated(self) -> bool:
        """A user's login kept in the token file, rather than the app's own grant."""
        if self.token_file is None:
            return False
        if self.provider == "microsoft":
            return not self.client_secret
        if self.provider == "google":
            return self.service_account_file is None
        return True

    @property
    def authority(self) -> str:
        """Microsoft: the tenant's own endpoint (a single-tenant app refuses `/common`)."""
        return f"https://{self.authority_host}/{self.tenant}"

    def describe(self) -> str:
        """Who grants the tokens, for logs and `check` (no secret)."""
        how = "delegated login" if self.delegated else "app"
        if self.provider == "microsoft":
            return f"Microsoft 365 {how} (tenant {self.tenant}, client {self.client_id})"
        if self.provider == "google":
            return f"Google Workspace {how} for {self.user}"
        return f"OAuth {how} at {self.token_url} (client {self.client_id})"

    def problems(self) -> list[tuple[str, str]]:
        """Each setting this provider needs and lacks, or has and must not, named."""
        needs: dict[str, list[str]] = {
            "microsoft": ["tenant", "client_id"],
            "google": [],
            "generic": ["token_url", "client_id"],
        }
        found = [(f"ROUTER_OAUTH_{name.upper()}", f"is required with ROUTER_OAUTH_PROVIDER="
                  f"{self.provider}") for name in needs[self.provider] if not getattr(self, name)]
        if self.provider == "microsoft" and self.tenant.lower() in SHARED_ENDPOINTS:
            # Chatwoot's inboxes died of this (AADSTS50194): said at start, not at a refresh.
            found.append(("ROUTER_OAUTH_TENANT", f"'{self.tenant}' is a shared endpoint, "
                          "not a tenant: give the tenant's id or its domain "
                          "(acme.onmicrosoft.com)"))
        if self.provider == "microsoft" and not self.client_secret and not self.token_file:
            found.append(("ROUTER_OAUTH_CLIENT_SECRET", "is required for Microsoft 365 "
                          "unattended; or set ROUTER_OAUTH_TOKEN_FILE for a delegated login"))
        if self.provider == "google" and not self.service_account_file and not self.token_file:
            found.append(("ROUTER_OAUTH_SERVICE_ACCOUNT_FILE", "is required for Google "
                          "Workspace unattended; or set ROUTER_OAUTH_TOKEN_FILE for a "
                          "delegated login"))
        if self.provider == "generic" and not self.client_secret and not self.token_file:
            found.append(("ROUTER_OAUTH_CLIENT_SECRET", "is required for the generic "
                          "provider's client-credentials grant"))
        if self.service_account_file and not self.service_account_file.is_file():
            found.append(("ROUTER_OAUTH_SERVICE_ACCOUNT_FILE",
                          f"{self.service_account_file} is not a file"))
        return found
