"""A real OpenID Connect provider on 127.0.0.1, built on authlib's server classes, for tests.

    with TestProvider() as op:
        op.add_user("alice", "alice-password", groups=["physics"])
        ...  # op.issuer == "http://127.0.0.1:<port>"

Grants: authorization code (PKCE S256 required for every client, OpenID ID tokens with nonce),
refresh token (rotated; every refresh answer carries a fresh ID token when the scope has
``openid``) and the RFC 8628 device code grant. Clients: ``xwhep-cli`` (public, any loopback
redirect URI ``http://127.0.0.1:<port>/<path>``) and ``xwhep-web`` (confidential).

Plain http: authlib >= 1.9 already treats ``http://127.0.0.1`` / ``http://localhost`` as secure
transport (RFC 8252 §7.3, ``authlib.common.security.is_secure_transport``), so this provider does
NOT set the process-wide ``AUTHLIB_INSECURE_TRANSPORT`` variable (which would also silence the
https check of the client under test). Beware: pytest-iam's ``iam_configuration`` fixture sets it.

Test knobs: ``rotate_keys``, ``tamper``/``untamper``, ``mint_id_token``, ``down``/``up``
(``down(hang=True)`` keeps the port open but never answers), ``expire_device_codes``, and the
``jwks_fetches`` / ``discovery_fetches`` counters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, InvalidRequestError, grants, scope_to_list
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint, DeviceCodeGrant, DeviceCredentialDict
from authlib.oidc.core.grants import OpenIDCode
from flask import Flask, Response, jsonify, request, session
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, KeySetSerialization, RSAKey
from werkzeug.serving import BaseWSGIServer, make_server

Key = RSAKey | ECKey
SCOPES = ["openid", "profile", "email", "groups", "offline_access"]
ALL_GRANTS = ("authorization_code", "refresh_token", DeviceCodeGrant.GRANT_TYPE)
LOOPBACK_HOSTS = ("127.0.0.1", "::1")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _new_key(alg: str) -> Key:
    if alg == "ES256":
        return ECKey.generate_key("P-256", auto_kid=True)
    return RSAKey.generate_key(2048, auto_kid=True)


@dataclass
class User:
    login: str
    password: str
    sub: str
    email: str
    name: str
    groups: list[str]

    def claims(self) -> dict[str, Any]:
        return {
            "sub": self.sub,
            "email": self.email,
            "name": self.name,
            "preferred_username": self.login,
            "groups": list(self.groups),
        }


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str | None = None
    redirect_uris: list[str] = field(default_factory=list)
    loopback: bool = False  # accept http://127.0.0.1:<any port>/<any path> (RFC 8252 §7.3)
    grant_types: tuple[str, ...] = ALL_GRANTS
    scope: str = " ".join(SCOPES)

    @property
    def auth_method(self) -> str:
        return "client_secret_basic" if self.client_secret else "none"

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        allowed = scope_to_list(self.scope)
        return " ".join(s for s in scope_to_list(scope or "") if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        if redirect_uri in self.redirect_uris:
            return True
        if not self.loopback:
            return False
        try:
            parts = urlsplit(redirect_uri)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            return False
        return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS and not parts.fragment

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and hmac.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.client_secret:
            return method in ("client_secret_basic", "client_secret_post")
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class AuthCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: User
    auth_time: int
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class Token:
    client_id: str
    user: User
    scope: str
    access_token: str
    refresh_token: str | None
    expires_at: float
    auth_time: int
    revoked: bool = False

    def check_client(self, client: ClientMixin) -> bool:
        return bool(client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope


# --- authlib grant subclasses; each reaches the TestProvider through ``server.provider`` ---


class _Server(AuthorizationServer):  # type: ignore[misc]
    provider: TestProvider


class _CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post", "none"]

    def save_authorization_code(self, code: str, req: Any) -> None:
        data = req.payload.data
        self.server.provider._codes[code] = AuthCode(
            code=code,
            client_id=req.client.get_client_id(),
            redirect_uri=req.payload.redirect_uri or "",
            scope=req.scope or "",
            user=req.user,
            auth_time=int(session.get("auth_time", time.time())),
            nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            expires_at=time.time() + 600,
        )

    def query_authorization_code(self, code: str, client: Client) -> AuthCode | None:
        item: AuthCode | None = self.server.provider._codes.get(code)
        if item and item.client_id == client.client_id and item.expires_at > time.time():
            return item
        return None

    def delete_authorization_code(self, authorization_code: AuthCode) -> None:
        self.server.provider._codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: AuthCode) -> User:
        return authorization_code.user


class _RequiredS256(CodeChallenge):  # type: ignore[misc]
    """PKCE for every authorization request, S256 only (authlib's own ``required`` only checks the
    token request of public clients)."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        state = grant.request.payload.state
        if not data.get("code_challenge"):
            raise InvalidRequestError("'code_challenge' is required", redirect_uri=redirect_uri, state=state)
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError(
                "'code_challenge_method' must be S256", redirect_uri=redirect_uri, state=state
            )
        super().validate_code_challenge(grant, redirect_uri)


class _OpenIDCode(OpenIDCode):  # type: ignore[misc]
    def exists_nonce(self, nonce: str, req: Any) -> bool:
        return False

    def process_token(self, grant: Any, response: tuple[int, dict[str, Any], Any]) -> dict[str, Any]:
        _, token, _ = response
        if "openid" in scope_to_list(token.get("scope") or ""):
            code: AuthCode = grant.request.authorization_code
            token["id_token"] = grant.server.provider._id_token(
                code.client_id, code.user, code.auth_time, code.nonce, token.get("access_token")
            )
        return token


def _add_id_token(grant: Any, response: tuple[int, dict[str, Any], Any]) -> None:
    """after_create_token_response hook of the refresh and device grants."""
    _, token, _ = response
    if "openid" not in scope_to_list(token.get("scope") or ""):
        return
    req = grant.request
    auth_time = req.refresh_token.auth_time if req.refresh_token else req.credential["auth_time"]
    token["id_token"] = grant.server.provider._id_token(
        req.client.get_client_id(), req.user, auth_time, None, token.get("access_token")
    )


def _id_token_extension(grant: Any) -> None:
    grant.register_hook("after_create_token_response", _add_id_token)


class _RefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        tok = self.server.provider._refresh.get(refresh_token)
        return tok if tok and not tok.revoked else None

    def authenticate_user(self, refresh_token: Token) -> User:
        return refresh_token.user

    def revoke_old_credential(self, refresh_token: Token) -> None:
        refresh_token.revoked = True


class _DeviceEndpoint(DeviceAuthorizationEndpoint):  # type: ignore[misc]
    def get_verification_uri(self) -> str:
        return str(self.server.provider.issuer) + "/device"

    def save_device_credential(self, client_id: str, scope: str, data: dict[str, Any]) -> None:
        prov = self.server.provider
        data["interval"] = prov.device_interval
        data["expires_in"] = prov.device_expires_in
        cred = DeviceCredentialDict(
            client_id=client_id, scope=scope, expires_at=time.time() + prov.device_expires_in, **data
        )
        cred["last_poll"] = None
        prov._device[data["device_code"]] = cred


class _DeviceGrant(DeviceCodeGrant):  # type: ignore[misc]
    def query_device_credential(self, device_code: str) -> DeviceCredentialDict | None:
        return self.server.provider._device.get(device_code)

    def query_user_grant(self, user_code: str) -> tuple[User, bool] | None:
        found: tuple[User, bool] | None = self.server.provider._device_grants.get(user_code)
        return found

    def should_slow_down(self, credential: DeviceCredentialDict) -> bool:
        now, last = time.monotonic(), credential["last_poll"]
        credential["last_poll"] = now
        if last is not None and now - last < credential["interval"]:
            credential["interval"] += 5  # RFC 8628 §3.5
            return True
        return False

    def create_token_response(self) -> Any:
        cred = self.request.credential
        result = super().create_token_response()
        self.server.provider._device.pop(cred["device_code"], None)  # a device code is used once
        self.server.provider._device_grants.pop(cred["user_code"], None)
        return result


# --- HTML ---

_PAGE = "<!doctype html><html><head><title>{title}</title></head><body><h1>{title}</h1>{body}</body></html>"


def _form(action: str, fields: dict[str, str], buttons: Iterable[tuple[str, str]], error: str = "") -> str:
    rows = [f'<p class="error">{html.escape(error)}</p>' if error else ""]
    rows.append(f'<form method="post" action="{html.escape(action)}">')
    for name, value in fields.items():
        kind = "hidden" if name == "csrf_token" else "password" if name == "password" else "text"
        rows.append(f'<input type="{kind}" name="{name}" value="{html.escape(value)}">')
    rows += [f'<button type="submit" name="action" value="{v}">{t}</button>' for v, t in buttons]
    return "".join(rows) + "</form>"


def _csrf() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(16)
    return str(session["csrf"])


def _csrf_ok() -> bool:
    sent = request.form.get("csrf_token", "")
    return bool(sent) and hmac.compare_digest(sent, session.get("csrf", ""))


class TestProvider:
    """An OpenID provider on 127.0.0.1:<free port> serving in a daemon thread."""

    __test__ = False  # not a pytest test class

    def __init__(self, signing_alg: str = "RS256", device_interval: int = 1, device_expires_in: int = 600):
        self.signing_alg = signing_alg
        self.device_interval = device_interval
        self.device_expires_in = device_expires_in
        self.access_token_lifetime = 3600
        self.id_token_lifetime = 3600
        self.users: dict[str, User] = {}
        self.clients: dict[str, Client] = {}
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.requests: list[str] = []  # "METHOD /path" of every request answered
        self._lock = threading.RLock()
        self._keys: list[Key] = [_new_key(signing_alg)]  # [0] signs; all are published
        self._tamper: dict[str, Any] = {}
        self._codes: dict[str, AuthCode] = {}
        self._tokens: dict[str, Token] = {}
        self._refresh: dict[str, Token] = {}
        self._device: dict[str, DeviceCredentialDict] = {}
        self._device_grants: dict[str, tuple[User, bool]] = {}
        self._answering = threading.Event()
        self._answering.set()
        self._httpd: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.app = self._make_app()
        self.add_client("xwhep-cli", loopback=True)
        self.add_client("xwhep-web", secret="xwhep-web-secret", redirect_uris=["http://127.0.0.1/callback"])

    # --- lifecycle ---

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TestProvider:
        self._httpd = make_server("127.0.0.1", self.port, self._wsgi, threaded=True)
        self.port = self._httpd.server_port
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="oidc-provider", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._answering.set()  # release hanging requests
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def down(self, hang: bool = False) -> None:
        """Closed port (connection refused), or with ``hang`` an open port that never answers."""
        if hang:
            self._answering.clear()
        else:
            self.stop()

    def up(self) -> None:
        """Answer again, on the same port (same issuer)."""
        self._answering.set()
        if self._httpd is None:
            self.start()

    def __enter__(self) -> TestProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        self._answering.wait()
        return self.app.wsgi_app(environ, start_response)

    # --- users, clients, keys ---

    def add_user(
        self,
        login: str,
        password: str,
        sub: str | None = None,
        email: str | None = None,
        name: str | None = None,
        groups: Iterable[str] = (),
    ) -> User:
        user = User(
            login=login,
            password=password,
            sub=sub or str(uuid.uuid4()),
            email=email or f"{login}@example.org",
            name=name or login.capitalize(),
            groups=list(groups),
        )
        with self._lock:
            self.users[login] = user
        return user

    def add_client(
        self,
        client_id: str,
        secret: str | None = None,
        redirect_uris: Iterable[str] = (),
        loopback: bool = False,
        grant_types: Iterable[str] = ALL_GRANTS,
        scope: str = " ".join(SCOPES),
    ) -> Client:
        client = Client(client_id, secret, list(redirect_uris), loopback, tuple(grant_types), scope)
        with self._lock:
            self.clients[client_id] = client
        return client

    @property
    def kid(self) -> str:
        return str(self._keys[0].kid)

    def jwks(self) -> KeySetSerialization:
        with self._lock:
            return KeySet(list(self._keys)).as_dict(private=False)

    def rotate_keys(self, keep_old: bool = False) -> str:
        """A new current signing key (new kid); the old ones leave the JWKS unless ``keep_old``."""
        with self._lock:
            key = _new_key(self.signing_alg)
            self._keys = [key, *self._keys] if keep_old else [key]
            return str(key.kid)

    def expire_device_codes(self) -> None:
        with self._lock:
            for cred in self._device.values():
                cred["expires_at"] = time.time() - 1

    # --- ID tokens and their tampering ---

    def tamper(
        self,
        *,
        alg: str | None = None,
        bad_signature: bool = False,
        unknown_kid: bool = False,
        drop: Iterable[str] = (),
        **claims: Any,
    ) -> None:
        """Make every ID token issued from now on (until ``untamper``) wrong in the chosen way:
        claim overrides (``aud="other"``, ``exp=<past>``, ``nbf=<future>``, ``nonce="x"``...),
        claims removed (``drop=["nonce"]``), ``alg="none"`` (unsigned), ``alg="HS256"`` (HMAC with
        the current public key's PEM as secret), ``bad_signature`` (unpublished key, current kid),
        ``unknown_kid`` (unpublished key, kid not in the JWKS)."""
        with self._lock:
            self._tamper = dict(
                alg=alg, bad_signature=bad_signature, unknown_kid=unknown_kid, drop=list(drop), claims=claims
            )

    def untamper(self) -> None:
        with self._lock:
            self._tamper = {}

    def mint_id_token(
        self,
        aud: str = "xwhep-cli",
        login: str | None = None,
        claims: dict[str, Any] | None = None,
        nonce: str | None = None,
        alg: str | None = None,
        bad_signature: bool = False,
        unknown_kid: bool = False,
        drop: Iterable[str] = (),
    ) -> str:
        """An ID token for ``login`` (default: the first user) without running a flow."""
        with self._lock:
            user = self.users[login] if login else next(iter(self.users.values()))
            base = self._claims(aud, user, int(time.time()), nonce, None)
            base.update(claims or {})
            for name in drop:
                base.pop(name, None)
            return self._sign(base, alg, bad_signature, unknown_kid)

    def _claims(
        self, aud: str, user: User, auth_time: int, nonce: str | None, access_token: str | None
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": aud,
            "iat": now,
            "exp": now + self.id_token_lifetime,
            "auth_time": auth_time,
            **user.claims(),
        }
        if nonce:
            claims["nonce"] = nonce
        if access_token and self.signing_alg in ("RS256", "ES256"):
            claims["at_hash"] = _b64(hashlib.sha256(access_token.encode()).digest()[:16])
        return claims

    def _id_token(
        self, aud: str, user: User, auth_time: int, nonce: str | None, access_token: str | None
    ) -> str:
        with self._lock:
            claims = self._claims(aud, user, auth_time, nonce, access_token)
            t = self._tamper
            if not t:
                return self._sign(claims, None, False, False)
            claims.update(t["claims"])
            for name in t["drop"]:
                claims.pop(name, None)
            return self._sign(claims, t["alg"], t["bad_signature"], t["unknown_kid"])

    def _sign(self, claims: dict[str, Any], alg: str | None, bad_signature: bool, unknown_kid: bool) -> str:
        current = self._keys[0]
        alg = alg or self.signing_alg
        if alg == "none":
            header = {"alg": "none", "typ": "JWT", "kid": current.kid}
            return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."
        if alg == "HS256":  # key confusion: HMAC keyed with the published public key
            header = {"alg": "HS256", "typ": "JWT", "kid": current.kid}
            signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
            secret = current.as_pem(private=False)
            mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
            return f"{signing_input}.{_b64(mac)}"
        key, kid = current, current.kid
        if bad_signature or unknown_kid:
            key = _new_key(alg)
            kid = current.kid if bad_signature else key.kid
        return jwt.encode({"alg": alg, "typ": "JWT", "kid": kid}, claims, key, algorithms=[alg])

    # --- Flask app ---

    def _make_app(self) -> Flask:
        app = Flask(f"oidc-provider-{id(self)}")
        app.secret_key = secrets.token_bytes(32)
        app.config["SESSION_COOKIE_NAME"] = "oidc_session"
        app.config["OAUTH2_REFRESH_TOKEN_GENERATOR"] = True
        app.config["OAUTH2_SCOPES_SUPPORTED"] = SCOPES
        server = _Server(app, query_client=self.clients.get, save_token=self._save_token)
        server.provider = self
        server.register_grant(_CodeGrant, [_RequiredS256(), _OpenIDCode(require_nonce=False)])
        server.register_grant(_RefreshGrant, [_id_token_extension])
        server.register_grant(_DeviceGrant, [_id_token_extension])
        server.register_endpoint(_DeviceEndpoint(server))

        @app.after_request
        def _record(resp: Response) -> Response:
            self.requests.append(f"{request.method} {request.path}")
            return resp

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Response:
            with self._lock:
                self.discovery_fetches += 1
            return jsonify(self.discovery())

        @app.get("/jwks")
        def jwks() -> Response:
            with self._lock:
                self.jwks_fetches += 1
            return jsonify(self.jwks())

        @app.route("/authorize", methods=["GET", "POST"])
        def authorize() -> Any:
            try:
                grant = server.get_consent_grant(end_user=None)
            except OAuth2Error as error:
                return server.handle_error_response(None, error)
            user = self.users.get(session.get("login", ""))
            message = ""
            if user is None and request.method == "POST":
                candidate = self.users.get(request.form.get("username", ""))
                if not _csrf_ok():
                    return Response("CSRF check failed", status=400)
                if candidate and hmac.compare_digest(candidate.password, request.form.get("password", "")):
                    user = candidate
                    session["login"], session["auth_time"] = user.login, int(time.time())
                else:
                    message = "Invalid username or password"
            if user is None:
                action = request.full_path  # keeps the authorization request's query string
                fields = {"username": "", "password": "", "csrf_token": _csrf()}
                body = _form(action, fields, [("login", "Log in")], message)
                return Response(_PAGE.format(title="Log in", body=body), status=401 if message else 200)
            return server.create_authorization_response(grant_user=user, grant=grant)  # auto-consent

        @app.post("/token")
        def token() -> Any:
            return server.create_token_response()

        @app.post("/device_authorization")
        def device_authorization() -> Any:
            return server.create_endpoint_response("device_authorization")

        @app.route("/device", methods=["GET", "POST"])
        def device() -> Any:
            user_code = request.values.get("user_code", "").strip().upper()
            if request.method == "GET":
                fields = {"user_code": user_code, "username": "", "password": "", "csrf_token": _csrf()}
                body = _form("/device", fields, [("approve", "Approve"), ("deny", "Deny")])
                return Response(_PAGE.format(title="Connect a device", body=body))
            if not _csrf_ok():
                return Response("CSRF check failed", status=400)
            user = self.users.get(request.form.get("username", ""))
            if not user or not hmac.compare_digest(user.password, request.form.get("password", "")):
                return Response(_PAGE.format(title="Invalid username or password", body=""), status=401)
            with self._lock:
                cred = next((c for c in self._device.values() if c["user_code"] == user_code), None)
                if cred is None or cred.is_expired():
                    return Response(_PAGE.format(title="Unknown or expired code", body=""), status=400)
                approved = request.form.get("action", "approve") != "deny"
                self._device_grants[user_code] = (user, approved)
                cred["auth_time"] = int(time.time())
            title = "Device approved" if approved else "Device denied"
            return Response(_PAGE.format(title=title, body=""))

        @app.route("/userinfo", methods=["GET", "POST"])
        def userinfo() -> Any:
            auth = request.headers.get("Authorization", "")
            tok = self._tokens.get(auth[7:]) if auth[:7].lower() == "bearer " else None
            if tok is None or tok.revoked or tok.expires_at < time.time():
                return Response("", status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return jsonify(tok.user.claims())

        return app

    def _save_token(self, token: dict[str, Any], req: Any) -> None:
        if req.authorization_code is not None:
            auth_time = req.authorization_code.auth_time
        elif req.refresh_token is not None:
            auth_time = req.refresh_token.auth_time
        else:
            auth_time = req.credential["auth_time"]
        tok = Token(
            client_id=req.client.get_client_id(),
            user=req.user,
            scope=token.get("scope", ""),
            access_token=token["access_token"],
            refresh_token=token.get("refresh_token"),
            expires_at=time.time() + token.get("expires_in", self.access_token_lifetime),
            auth_time=auth_time,
        )
        with self._lock:
            self._tokens[tok.access_token] = tok
            if tok.refresh_token:
                self._refresh[tok.refresh_token] = tok

    def discovery(self) -> dict[str, Any]:
        iss = self.issuer
        return {
            "issuer": iss,
            "authorization_endpoint": f"{iss}/authorize",
            "token_endpoint": f"{iss}/token",
            "device_authorization_endpoint": f"{iss}/device_authorization",
            "jwks_uri": f"{iss}/jwks",
            "userinfo_endpoint": f"{iss}/userinfo",
            "response_types_supported": ["code"],
            "grant_types_supported": list(ALL_GRANTS),
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
            "scopes_supported": SCOPES,
            "subject_types_supported": ["public"],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "email",
                "name",
                "preferred_username",
                "groups",
            ],
        }
