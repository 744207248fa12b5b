"""OAuth 2.0 logins to the mail servers: where access tokens come from, kept fresh.

`tokens` holds a process's current token and refreshes it before it lapses; `providers`
gets one from Microsoft 365 (msal), Google Workspace (google-auth) or any identity
provider's client-credentials grant (requests-oauthlib); `tokenfile` keeps the refresh
token of a delegated login; `explain` turns a provider's refusal into plain words.
"""
