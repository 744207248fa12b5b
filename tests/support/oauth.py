"""A real OAuth 2.0 token server for the integration tests, and an SMTP relay that takes
its tokens (AUTH XOAUTH2).

`TokenServer` answers what the product's libraries ask of the big providers, on loopback:
- generic RFC 6749: `POST /token` (client_credentials; refresh_token, rotated at each use);
- Microsoft's v2.0 endpoints under a tenant (`/<tenant>/v2.0/.well-known/openid-configuration`,
  `/<tenant>/oauth2/v2.0/token`, `/<tenant>/oauth2/v2.0/devicecode`), enough for msal;
- Google's token endpoint (`POST /google/token`): a service account's signed JWT
  (domain-wide delegation) or a refresh token, enough for google-auth;
- token introspection (RFC 7662, `POST /introspect`) for Dovecot's oauth2 passdb.

It listens twice: HTTPS with a certificate of its own CA (`ca_file`, for REQUESTS_CA_BUNDLE)
and plain HTTP (Dovecot's introspection). Its state is in memory and open to the test.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

import jwt
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from csm_router.demo.relay import RecordingSmtp, _Recorder
from csm_router.demo.service import Service
from support.tls import Certificates, make_certificates

HOST = "127.0.0.1"
GOOGLE_MAIL_SCOPE = "https://mail.google.com/"
# google-auth signs its assertions for Google's endpoint whatever the key file's token_uri.
GOOGLE_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
# The short names under which grants are counted, by grant_type.
GRANT_KINDS = {"authorization_code": "authorization_code",
               "client_credentials": "client_credentials", "refresh_token": "refresh_token",
               DEVICE_CODE: "device_code", JWT_BEARER: "jwt_bearer"}


class OAuthError(Exception):
    """An RFC 6749 error answer: `{"error": ..., "error_description": ...}` with `status`."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.status = error, description, status

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.description}


def revoked_error(client_id: str) -> OAuthError:
    """What Microsoft answers once a client's secret is deleted or expired."""
    return OAuthError("invalid_client", "AADSTS7000215: Invalid client secret provided. "
                      "Ensure the secret being sent in the request is the client secret "
                      f"value, not the client secret ID, for a secret added to app "
                      f"'{client_id}'.", 401)


@dataclass
class Client:
    """A registered client (an app registration); its tokens are for `user`'s mailbox."""

    client_id: str
    secret: str | None
    user: str


@dataclass
class ServiceAccount:
    """A Google service account with domain-wide delegation for `users`."""

    email: str
    key_id: str
    public_key: rsa.RSAPublicKey
    users: set[str]
    file: Path


@dataclass
class Issued:
    """One access token as issued; `invalidated` by the test, or past `expires_at`."""

    token: str
    user: str
    client_id: str
    grant: str
    tenant: str | None
    scope: str
    expires_at: float
    invalidated: bool = False

    def live(self, now: float | None = None) -> bool:
        return not self.invalidated and (time.time() if now is None else now) < self.expires_at


@dataclass(frozen=True)
class GrantRequest:
    """One request at a token endpoint: `tenant` is the Microsoft tenant of the endpoint
    used ("google" for Google's, None for the generic one); `error` None if granted."""

    kind: str
    client_id: str
    tenant: str | None
    scope: str
    error: str | None = None
    at: float = field(default_factory=time.time, compare=False)  # when it was asked


@dataclass
class _Refresh:
    client_id: str
    user: str
    scope: str


@dataclass
class _Device:
    client_id: str
    tenant: str | None
    scope: str
    user_code: str
    user: str | None = None  # set when approved


@dataclass
class _Code:
    """An authorization code, for the PKCE challenge it was asked with."""

    client_id: str
    user: str
    scope: str
    redirect_uri: str
    challenge: str


@dataclass
class _State:
    clients: dict[str, Client] = field(default_factory=dict)
    accounts: dict[str, ServiceAccount] = field(default_factory=dict)
    refusals: dict[str, OAuthError] = field(default_factory=dict)
    tokens: dict[str, Issued] = field(default_factory=dict)
    refresh_tokens: dict[str, _Refresh] = field(default_factory=dict)
    devices: dict[str, _Device] = field(default_factory=dict)
    codes: dict[str, _Code] = field(default_factory=dict)
    grants: Counter[str] = field(default_factory=Counter)
    requests: list[GrantRequest] = field(default_factory=list)
    introspections: list[str] = field(default_factory=list)


class TokenServer(Service):
    """An OAuth 2.0 authorization server on loopback (HTTPS `url`, plain `http_url`).

    `lifetime` is the `expires_in` of tokens issued from now on (seconds). `tenants`, when
    given, are the only Microsoft tenants that exist; any other answers AADSTS90002.
    `auto_approve`: device logins are approved as soon as they start, for the client's user.
    """

    def __init__(self, root: Path, lifetime: int = 3600,
                 tenants: Iterable[str] | None = None) -> None:
        self.root = root
        self.lifetime = lifetime
        self.tenants = set(tenants) if tenants is not None else None
        self.auto_approve = True
        self.host = HOST
        self.port = 0  # HTTPS
        self.http_port = 0
        self.log_path = root / "token-server.log"
        self._lock = threading.RLock()
        self._state = _State()
        self._certs: Certificates | None = None
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    # Addresses --------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        """The CA that signed the HTTPS certificate (for REQUESTS_CA_BUNDLE)."""
        if self._certs is None:
            raise RuntimeError("TokenServer is not started")
        return self._certs.ca_file

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def token_url(self) -> str:
        """The generic token endpoint (ROUTER_OAUTH_TOKEN_URL)."""
        return f"{self.url}/token"

    @property
    def google_token_url(self) -> str:
        return f"{self.url}/google/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.http_url}/introspect"

    def authority(self, tenant: str) -> str:
        """msal's `authority` for `tenant` (what ROUTER_OAUTH_TENANT names)."""
        return f"{self.url}/{tenant}"

    # Set-up by the test ------------------------------------------------------------------

    def add_client(self, client_id: str, secret: str | None, user: str) -> Client:
        """Register a client; `secret` None for a public client (device login, refresh)."""
        client = Client(client_id, secret, user)
        with self._lock:
            self._state.clients[client_id] = client
            self._state.refusals.pop(client_id, None)
        return client

    def revoke(self, client_id: str) -> None:
        """Every later grant for this client (or service account) fails, as a deleted
        secret or key makes it."""
        with self._lock:
            if client_id in self._state.accounts:
                error = OAuthError("invalid_grant", "Invalid JWT Signature.", 400)
            else:
                error = revoked_error(client_id)
            self._state.refusals[client_id] = error

    def refuse(self, client_id: str, error: str, description: str = "",
               status: int = 400) -> None:
        """Answer every later grant for this client with this RFC 6749 error."""
        with self._lock:
            self._state.refusals[client_id] = OAuthError(error, description, status)

    def allow(self, client_id: str) -> None:
        """Undo `revoke` or `refuse`."""
        with self._lock:
            self._state.refusals.pop(client_id, None)

    def add_service_account(self, users: Iterable[str],
                            email: str = "csm-router@acme-mail.iam.gserviceaccount.com",
                            ) -> Path:
        """Make an RSA key for a service account delegated for `users` and write its key
        file as Google's console does (`token_uri` pointing here); return the file."""
        if self._certs is None:
            raise RuntimeError("TokenServer is not started: token_uri would be unknown")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = secrets.token_hex(20)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        path = self.root / f"service-account-{email.split('@')[0]}-{key_id[:8]}.json"
        path.write_text(json.dumps({
            "type": "service_account", "project_id": "acme-mail",
            "private_key_id": key_id, "private_key": pem, "client_email": email,
            "client_id": str(int(key_id[:16], 16)),
            "auth_uri": f"{self.url}/google/auth", "token_uri": self.google_token_url,
            "auth_provider_x509_cert_url": f"{self.url}/google/certs",
            "client_x509_cert_url": f"{self.url}/google/certs/{email}",
            "universe_domain": "googleapis.com",
        }, indent=2))
        path.chmod(0o600)
        with self._lock:
            self._state.accounts[email] = ServiceAccount(
                email, key_id, key.public_key(), {u.lower() for u in users}, path)
            self._state.refusals.pop(email, None)
        return path

    def issue(self, user: str, client_id: str = "test-client", lifetime: float | None = None,
              tenant: str | None = None, scope: str = "") -> str:
        """Issue an access token for `user` directly (no grant counted)."""
        with self._lock:
            return self._issue(user, client_id, "direct", tenant, scope, lifetime)

    def issue_refresh_token(self, client_id: str, user: str, scope: str = "") -> str:
        """A refresh token for `client_id` acting as `user`, as a past login would leave."""
        token = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self._state.refresh_tokens[token] = _Refresh(client_id, user, scope)
        return token

    def approve(self, user_code: str, user: str | None = None) -> None:
        """Approve a pending device login (as the user would in the browser)."""
        with self._lock:
            for device in self._state.devices.values():
                if device.user_code == user_code:
                    client = self._state.clients.get(device.client_id)
                    device.user = user or (client.user if client else None)
                    return
        raise KeyError(f"no device login with user code {user_code}")

    def expire_all(self) -> None:
        """Every token issued so far is past its expiry."""
        with self._lock:
            past = time.time() - 1
            for issued in self._state.tokens.values():
                issued.expires_at = min(issued.expires_at, past)

    def invalidate(self, token: str) -> None:
        """This access token (or refresh token) is no longer valid."""
        with self._lock:
            self._state.refresh_tokens.pop(token, None)
            if token in self._state.tokens:
                self._state.tokens[token].invalidated = True

    def reset(self) -> None:
        """Forget every client, account, token and count (between tests)."""
        with self._lock:
            self._state = _State()
            self.lifetime = 3600
            self.tenants = None
            self.auto_approve = True

    # What happened -----------------------------------------------------------------------

    @property
    def grants(self) -> Counter[str]:
        """Grants answered with a token, per kind: client_credentials, refresh_token,
        device_code, jwt_bearer."""
        with self._lock:
            return Counter(self._state.grants)

    @property
    def requests(self) -> list[GrantRequest]:
        """Every request at a token endpoint, granted or refused, oldest first."""
        with self._lock:
            return list(self._state.requests)

    @property
    def tokens(self) -> dict[str, Issued]:
        """Every access token issued, by token (copies)."""
        with self._lock:
            return {k: Issued(**vars(v)) for k, v in self._state.tokens.items()}

    @property
    def refresh_tokens(self) -> set[str]:
        """The refresh tokens that would be honoured now."""
        with self._lock:
            return set(self._state.refresh_tokens)

    @property
    def introspections(self) -> list[str]:
        """The tokens asked about at /introspect, oldest first."""
        with self._lock:
            return list(self._state.introspections)

    def introspect(self, token: str) -> dict[str, Any]:
        """The RFC 7662 answer for `token`."""
        with self._lock:
            self._state.introspections.append(token)
            issued = self._state.tokens.get(token)
            if issued is None or not issued.live():
                return {"active": False}
            return {"active": True, "username": issued.user, "client_id": issued.client_id,
                    "scope": issued.scope, "exp": int(issued.expires_at),
                    "token_type": "Bearer"}

    # Grants (called by the HTTP handler, under the lock) ---------------------------------

    def _issue(self, user: str, client_id: str, grant: str, tenant: str | None, scope: str,
               lifetime: float | None = None) -> str:
        token = "at-" + secrets.token_urlsafe(32)
        expires_at = time.time() + (self.lifetime if lifetime is None else lifetime)
        self._state.tokens[token] = Issued(token, user, client_id, grant, tenant, scope,
                                           expires_at)
        return token

    def _answer(self, user: str, client_id: str, kind: str, tenant: str | None, scope: str,
                refresh: bool) -> dict[str, Any]:
        token = self._issue(user, client_id, kind, tenant, scope)
        answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer",
                                  "expires_in": int(self.lifetime)}
        if scope:  # RFC 6749 section 5.1: optional when it is the one asked for
            answer["scope"] = scope
        if refresh:
            answer["refresh_token"] = self.issue_refresh_token(client_id, user, scope)
        self._state.grants[kind] += 1
        return answer

    def grant(self, form: dict[str, str], basic: tuple[str, str] | None, tenant: str | None
              ) -> dict[str, Any]:
        """Answer one token request, or raise OAuthError."""
        grant_type = form.get("grant_type", "")
        kind = GRANT_KINDS.get(grant_type, grant_type)
        with self._lock:
            if kind == "refresh_token" and not basic and not form.get("client_id"):
                # A public client may leave its id to the refresh token it was issued.
                stored = self._state.refresh_tokens.get(form.get("refresh_token", ""))
                form = {**form, "client_id": stored.client_id if stored else ""}
            client_id = basic[0] if basic else form.get("client_id", "")
            scope = form.get("scope", "")
            try:
                answer = self._grant(kind, form, basic, tenant)
            except OAuthError as exc:
                self._state.requests.append(GrantRequest(kind, client_id, tenant, scope,
                                                         exc.error))
                raise
            self._state.requests.append(GrantRequest(kind, client_id, tenant, scope))
            return answer

    def _grant(self, kind: str, form: dict[str, str], basic: tuple[str, str] | None,
               tenant: str | None) -> dict[str, Any]:
        self._check_tenant(tenant)
        if kind == "jwt_bearer" and tenant == "google":
            return self._jwt_grant(form)
        client = self._client(form, basic)
        scope = form.get("scope", "")
        if kind == "client_credentials":
            if tenant not in (None, "google") and not scope.endswith("/.default"):
                raise OAuthError("invalid_scope", "AADSTS1002012: The provided value for "
                                 f"scope {scope} is not valid. Client credential flows must "
                                 "have a scope value with /.default suffixed to the resource "
                                 "identifier (application ID URI).")
            return self._answer(client.user, client.client_id, kind, tenant, scope, False)
        if kind == "refresh_token":
            return self._refresh_grant(client, form, tenant)
        if kind == "device_code":
            return self._device_grant(client, form, tenant)
        if kind == "authorization_code" and tenant == "google":
            return self._code_grant(client, form)
        raise OAuthError("unsupported_grant_type", f"grant_type {form.get('grant_type')!r} "
                         "is not supported")

    def _check_tenant(self, tenant: str | None) -> None:
        if tenant not in (None, "google") and self.tenants is not None \
                and tenant not in self.tenants:
            raise OAuthError("invalid_tenant", f"AADSTS90002: Tenant '{tenant}' not found. "
                             "Check to make sure you have the correct tenant ID and are "
                             "signing into the correct cloud.")

    def _client(self, form: dict[str, str], basic: tuple[str, str] | None) -> Client:
        """The client of a request; a confidential one (with a secret) must present it."""
        client_id, secret = basic if basic else (form.get("client_id", ""),
                                                 form.get("client_secret"))
        if client_id in self._state.refusals:
            raise self._state.refusals[client_id]
        client = self._state.clients.get(client_id)
        if client is None:
            raise OAuthError("unauthorized_client", f"AADSTS700016: Application with "
                             f"identifier '{client_id}' was not found in the directory.")
        if (secret is not None or client.secret is not None) and secret != client.secret:
            raise revoked_error(client_id)
        return client

    def _refresh_grant(self, client: Client, form: dict[str, str], tenant: str | None
                       ) -> dict[str, Any]:
        # Rotation: the presented refresh token is spent whatever the outcome.
        stored = self._state.refresh_tokens.pop(form.get("refresh_token", ""), None)
        if stored is None or stored.client_id != client.client_id:
            raise OAuthError("invalid_grant", "AADSTS70000: The provided value for the "
                             "'refresh_token' is not valid: it was already used, revoked "
                             "or issued to another client.")
        scope = form.get("scope") or stored.scope
        answer = self._answer(stored.user, client.client_id, "refresh_token", tenant, scope,
                              True)
        return self._with_identity(answer, client, stored.user, tenant)

    def _device_grant(self, client: Client, form: dict[str, str], tenant: str | None
                      ) -> dict[str, Any]:
        device = self._state.devices.get(form.get("device_code", ""))
        if device is None or device.client_id != client.client_id:
            raise OAuthError("expired_token", "AADSTS70020: The provided value for the "
                             "input parameter 'device_code' is not valid or has expired.")
        if device.user is None:
            raise OAuthError("authorization_pending", "AADSTS70016: OAuth 2.0 device flow "
                             "error. Authorization is pending. Continue polling.")
        del self._state.devices[form["device_code"]]
        answer = self._answer(device.user, client.client_id, "device_code", tenant,
                              device.scope, True)
        return self._with_identity(answer, client, device.user, tenant)

    def authorize(self, query: dict[str, str]) -> str:
        """Google's consent screen, approved at once for the client's user: answers where
        the browser goes next (the loopback redirect with a code), as a 302 would."""
        with self._lock:
            client = self._state.clients.get(query.get("client_id", ""))
            redirect = query.get("redirect_uri", "")
            if client is None or not redirect.startswith("http://127.0.0.1:"):
                raise OAuthError("invalid_request", "unknown client or redirect_uri")
            if query.get("response_type") != "code" or \
                    query.get("code_challenge_method") != "S256" or \
                    not query.get("code_challenge"):
                raise OAuthError("invalid_request", "a code with PKCE (S256) is required")
            code = "code-" + secrets.token_urlsafe(16)
            self._state.codes[code] = _Code(client.client_id, client.user,
                                            query.get("scope", ""), redirect,
                                            query["code_challenge"])
            return f"{redirect}?{urlencode({'code': code, 'state': query.get('state', '')})}"

    def _code_grant(self, client: Client, form: dict[str, str]) -> dict[str, Any]:
        stored = self._state.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        proof = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if stored is None or stored.client_id != client.client_id \
                or stored.redirect_uri != form.get("redirect_uri") \
                or proof.decode().rstrip("=") != stored.challenge:
            raise OAuthError("invalid_grant", "Malformed auth code, or the code_verifier "
                             "does not match the challenge.")
        return self._answer(stored.user, client.client_id, "authorization_code", "google",
                            stored.scope, True)

    def start_device_login(self, form: dict[str, str], tenant: str | None) -> dict[str, Any]:
        """Answer a device authorization request (RFC 8628)."""
        with self._lock:
            self._check_tenant(tenant)
            client = self._client(form, None)
            code = "dc-" + secrets.token_urlsafe(24)
            user_code = secrets.token_hex(4).upper()
            device = _Device(client.client_id, tenant, form.get("scope", ""), user_code)
            if self.auto_approve:
                device.user = client.user
            self._state.devices[code] = device
        verify = f"{self.url}/devicelogin"
        return {"device_code": code, "user_code": user_code, "verification_uri": verify,
                "expires_in": 900, "interval": 1,
                "message": f"To sign in, open {verify} and enter the code {user_code}."}

    def _with_identity(self, answer: dict[str, Any], client: Client, user: str,
                       tenant: str | None) -> dict[str, Any]:
        """A delegated Microsoft answer carries who logged in (id_token, client_info), from
        which msal keeps the account in its cache."""
        if tenant in (None, "google"):
            return answer
        # Stable across processes: a login kept by one is found again by the next.
        digest = hashlib.sha256(user.lower().encode()).hexdigest()
        oid = f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
        now = int(time.time())
        claims = {"iss": self.issuer(tenant), "aud": client.client_id, "sub": oid,
                  "oid": oid, "tid": tenant, "preferred_username": user, "name": user,
                  "iat": now, "nbf": now, "exp": now + 3600, "ver": "2.0"}
        answer["id_token"] = jwt.encode(claims, key="", algorithm="none")
        info = json.dumps({"uid": oid, "utid": tenant}).encode()
        answer["client_info"] = base64.urlsafe_b64encode(info).decode().rstrip("=")
        return answer

    def issuer(self, tenant: str) -> str:
        return f"{self.url}/{tenant}/v2.0"

    def openid_configuration(self, tenant: str) -> dict[str, Any]:
        self._check_tenant(tenant)
        base = f"{self.url}/{tenant}/oauth2/v2.0"
        return {"issuer": self.issuer(tenant), "token_endpoint": f"{base}/token",
                "authorization_endpoint": f"{base}/authorize",
                "device_authorization_endpoint": f"{base}/devicecode",
                "jwks_uri": f"{self.url}/{tenant}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token"],
                "grant_types_supported": ["authorization_code", "client_credentials",
                                          "refresh_token", DEVICE_CODE],
                "token_endpoint_auth_methods_supported": ["client_secret_post",
                                                          "client_secret_basic"],
                "tenant_region_scope": "EU", "cloud_instance_name": "127.0.0.1"}

    def _jwt_grant(self, form: dict[str, str]) -> dict[str, Any]:
        assertion = form.get("assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise OAuthError("invalid_grant", "Invalid JWT: malformed.") from None
        email = str(unverified.get("iss", ""))
        if email in self._state.refusals:
            raise self._state.refusals[email]
        account = self._state.accounts.get(email)
        if account is None or header.get("kid") != account.key_id:
            raise OAuthError("invalid_grant", "Invalid JWT Signature.")
        try:
            claims = jwt.decode(assertion, account.public_key, algorithms=["RS256"],
                                audience=[self.google_token_url, GOOGLE_AUDIENCE],
                                options={"require": ["exp", "iat", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise OAuthError("invalid_grant", "Invalid JWT: Token must be a short-lived "
                             "token (60 minutes) and in a reasonable timeframe.") from None
        except jwt.PyJWTError:
            raise OAuthError("invalid_grant", "Invalid JWT Signature.") from None
        scope = str(claims.get("scope", ""))
        subject = str(claims.get("sub") or "").lower()
        if GOOGLE_MAIL_SCOPE not in scope.split() or subject not in account.users:
            raise OAuthError("unauthorized_client", "Client is unauthorized to retrieve "
                             "access tokens using this method, or client not authorized for "
                             "any of the scopes requested.", 401)
        return self._answer(subject, email, "jwt_bearer", "google", scope, False)

    # Service ------------------------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._certs = make_certificates(self.root / "tls")
        https = _HttpServer((self.host, 0), _Handler, self)
        context = self._certs.server_context()
        # The handshake happens in the request's thread, not in the accepting loop.
        https.socket = context.wrap_socket(https.socket, server_side=True,
                                           do_handshake_on_connect=False)
        http = _HttpServer((self.host, 0), _Handler, self)
        self._servers = [https, http]
        self.port, self.http_port = (int(s.server_address[1]) for s in self._servers)
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                      name=f"token-server-{server.server_address[1]}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(10)
        self._servers, self._threads = [], []

    def log(self, line: str) -> None:
        with self._lock, self.log_path.open("a") as log:
            log.write(line + "\n")


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 owner: TokenServer) -> None:
        super().__init__(address, handler)
        self.owner = owner

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-request (Dovecot's idle keep-alive at its exit) belongs in
        # the server's log, not in the test's output.
        self.owner.log(f"{client_address}: {traceback.format_exc()}")


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        self.server.owner.log(f"{self.address_string()} {format % args}")

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        text = self.rfile.read(length).decode() if length else ""
        return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}

    def _basic(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            user, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        # RFC 6749 section 2.3.1: both halves are form-urlencoded before joining.
        return unquote(user.replace("+", " ")), unquote(secret.replace("+", " "))

    def do_GET(self) -> None:
        owner = self.server.owner
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts == ["google", "auth"]:
            query = {k: v[0] for k, v in parse_qs(self.path.partition("?")[2]).items()}
            try:
                location = owner.authorize(query)
            except OAuthError as exc:
                self._send(exc.status, exc.body())
                return
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            try:
                self._send(200, owner.openid_configuration(parts[0]))
            except OAuthError as exc:
                self._send(exc.status, exc.body())
            return
        self._send(404, {"error": "not_found", "error_description": self.path})

    def do_POST(self) -> None:
        owner = self.server.owner
        path = self.path.split("?")[0].strip("/")
        form = self._form()
        parts = path.split("/")
        try:
            if path == "introspect":
                self._send(200, owner.introspect(form.get("token", "")))
            elif path == "token":
                self._send(200, owner.grant(form, self._basic(), None))
            elif path == "google/token":
                self._send(200, owner.grant(form, self._basic(), "google"))
            elif len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
                self._send(200, owner.grant(form, self._basic(), parts[0]))
            elif len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "devicecode"]:
                self._send(200, owner.start_device_login(form, parts[0]))
            else:
                self._send(404, {"error": "not_found", "error_description": self.path})
        except OAuthError as exc:
            self._send(exc.status, exc.body())


# SMTP -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class XOAuth2Login:
    """One AUTH XOAUTH2 the relay accepted."""

    user: str
    token: str


# What Gmail and Outlook send as the challenge before refusing a token.
XOAUTH2_ERROR = {"status": "401", "schemes": "bearer", "scope": GOOGLE_MAIL_SCOPE}


def parse_xoauth2(blob: bytes) -> tuple[str, str] | None:
    """(user, token) from a decoded XOAUTH2 initial response, or None if malformed."""
    fields = dict(part.partition("=")[::2] for part in blob.decode(errors="replace")
                  .split("\x01") if part)
    auth = fields.get("auth", "")
    if "user" not in fields or not auth.lower().startswith("bearer "):
        return None
    return fields["user"], auth[7:].strip()


class _OAuthRecorder(_Recorder):
    """The relay's recorder, also answering AUTH XOAUTH2 by asking the token server."""

    def __init__(self, tokens: TokenServer, require_auth: bool) -> None:
        super().__init__()
        self.tokens = tokens
        self.require_auth = require_auth
        self.logins: list[XOAuth2Login] = []
        self.refused: list[XOAuth2Login] = []

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) > 1:
            try:
                blob: Any = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        parsed = parse_xoauth2(blob)
        if parsed is None:
            await server.push("501 5.5.2 Malformed XOAUTH2 response")
            return AuthResult(success=False, handled=True)
        user, token = parsed
        answer = self.tokens.introspect(token)
        login = XOAuth2Login(user, token)
        if answer.get("active") and str(answer.get("username", "")).lower() == user.lower():
            with self.changed:
                self.logins.append(login)
            return AuthResult(success=True, auth_data=login)
        with self.changed:
            self.refused.append(login)
        # As the big providers do: a JSON error as a challenge, then 535 after the client's
        # empty answer.
        if await server.challenge_auth(json.dumps(XOAUTH2_ERROR)) is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Username and Password not accepted (XOAUTH2)")

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if self.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"


class OAuthSmtp(RecordingSmtp):
    """A RecordingSmtp that offers AUTH XOAUTH2 on a plain loopback connection and accepts
    only tokens `tokens` says are live, for the user they were issued to. With
    `require_auth` (the default), MAIL before AUTH answers 530."""

    def __init__(self, tokens: TokenServer, require_auth: bool = True) -> None:
        super().__init__()
        self.tokens = tokens
        self._oauth = _OAuthRecorder(tokens, require_auth)
        self._recorder = self._oauth

    def _smtp_options(self) -> dict[str, Any]:
        return {"auth_require_tls": False}

    @property
    def logins(self) -> list[XOAuth2Login]:
        """Accepted AUTH XOAUTH2 logins, oldest first."""
        with self._oauth.changed:
            return list(self._oauth.logins)

    @property
    def refused_logins(self) -> list[XOAuth2Login]:
        """Refused AUTH XOAUTH2 attempts, oldest first."""
        with self._oauth.changed:
            return list(self._oauth.refused)
