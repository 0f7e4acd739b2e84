"""OpenID Connect sign-in at a provider: discovery, the browser and device flows, refresh and revocation.

Pure protocol (no click, no xwhep server): authlib speaks OAuth 2; this module adds what a command-line
client needs around it (a loopback redirect per RFC 8252, the device grant's polling per RFC 8628, bounded
waits, one-line errors). Signatures are the server's business: the client checks only its own nonce.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import queue
import re
import socketserver
import threading
import time
import webbrowser
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session, OAuthError

from common.errors import TransportError, Unauthorized, ValidationFailed

HTTP_TIMEOUT = 10.0  # seconds for one call to the provider (discovery, token, device endpoints)
LOGIN_TIMEOUT = 300.0  # seconds for the person to finish signing in
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_INTERVAL = 5.0  # RFC 8628's default polling interval
SLOW_DOWN_STEP = 5.0  # RFC 8628 3.5: add 5 s to the interval on slow_down
STOP_POLL = 0.2  # how often a blocked wait looks at its stop event
LOOPBACK_NAMES = frozenset({"localhost"})
CALLBACK_PATH = "/callback"
DONE_PAGE = (
    b"<!doctype html><title>xwhep sign-in</title><p>xwhep has the answer of your identity provider. "
    b"You may close this window and go back to the terminal.</p>"
)
ENDPOINTS = (
    "authorization_endpoint",
    "token_endpoint",
    "device_authorization_endpoint",
    "revocation_endpoint",
)

Say = Callable[[str], None]


@dataclass(frozen=True)
class Provider:
    """A provider as discovered: who it is, who we are to it, and its endpoints."""

    name: str
    issuer: str
    client_id: str
    scopes: tuple[str, ...]
    metadata: Mapping[str, Any]
    timeout: float = HTTP_TIMEOUT

    def endpoint(self, key: str) -> str:
        url = self.metadata.get(key)
        if not isinstance(url, str) or not url:
            raise TransportError(f"{self.issuer} has no {key} in its discovery document")
        return url

    def session(self, **kwargs: Any) -> OAuth2Session:
        """An authlib session for a public client (no secret) with bounded calls."""
        return OAuth2Session(
            client_id=self.client_id,
            token_endpoint_auth_method="none",
            code_challenge_method="S256",
            default_timeout=self.timeout,
            **kwargs,
        )


@dataclass(frozen=True)
class Tokens:
    """What a sign-in or a refresh brings back: the ID token to exchange, and what renews it."""

    id_token: str
    refresh_token: str | None
    nonce: str | None  # the nonce this sign-in sent (None for the device grant and refresh)


# --- discovery --------------------------------------------------------------------------------------


def check_url(url: str, what: str) -> str:
    """Refuse anything but https, except plain http to this machine (a provider run locally, tests)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and _loopback(host):
        return url
    raise Unauthorized(f"{what} {url!r} must be https:// (http:// only on 127.0.0.1, ::1 or localhost)")


def _loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback and host in ("127.0.0.1", "::1")
    except ValueError:
        return False


def discover(
    name: str, issuer: str, client_id: str, scopes: tuple[str, ...] | list[str], timeout: float = HTTP_TIMEOUT
) -> Provider:
    """Read the provider's discovery document; the ``issuer`` it names must be ``issuer`` exactly."""
    check_url(issuer, "issuer")
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    with requests.Session() as http:
        resp = _call(issuer, timeout, http.get, url, timeout=timeout)
    if resp.status_code != 200:
        raise TransportError(f"{issuer}: discovery answered HTTP {resp.status_code}")
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise TransportError(f"{issuer}: the discovery document is not a JSON object")
    if doc.get("issuer") != issuer:
        raise Unauthorized(f"{url} names the issuer {doc.get('issuer')!r}, not {issuer!r}: refused")
    for key in ENDPOINTS:
        if isinstance(doc.get(key), str):
            check_url(doc[key], key)
    return Provider(name, issuer, client_id, tuple(scopes), doc, timeout)


def choose_flow(device: bool) -> str:
    """``device`` when asked or when no browser can be started here, else ``browser``."""
    if device:
        return "device"
    try:
        webbrowser.get()
    except webbrowser.Error:
        return "device"
    return "browser"


# --- the browser flow (authorization code + PKCE, loopback redirect) ------------------------------


def login_browser(
    provider: Provider,
    *,
    timeout: float = LOGIN_TIMEOUT,
    say: Say = print,
    open_url: Callable[[str], object] = webbrowser.open,
    stop: threading.Event | None = None,
    port: int = 0,
) -> Tokens:
    """Sign in through a browser: the provider redirects to a one-shot listener on 127.0.0.1.

    The listener's port is random (RFC 8252 says providers must accept any loopback port); ``port``
    fixes it for a provider that matches registered redirect URIs exactly."""
    verifier, state, nonce = generate_token(64), generate_token(32), generate_token(32)
    with _CallbackServer(port) as callback:  # listening before any browser can be sent to it
        session = provider.session(scope=" ".join(provider.scopes), redirect_uri=callback.redirect_uri)
        url, _ = session.create_authorization_url(
            provider.endpoint("authorization_endpoint"), state=state, code_verifier=verifier, nonce=nonce
        )
        say(f"If no browser opened, visit: {url}")
        try:
            open_url(url)
        except webbrowser.Error:
            pass  # the printed URL is the way then
        params = callback.wait(timeout, stop)
    if params.get("state") != state:
        raise Unauthorized("state mismatch: the answer that reached this sign-in is not from its login")
    if "error" in params:
        raise Unauthorized(f"{provider.issuer} refused the sign-in: {_oauth_reason(params)}")
    if not params.get("code"):
        raise Unauthorized(f"{provider.issuer} sent the browser back without a code")
    token = _call(
        provider.issuer,
        provider.timeout,
        session.fetch_token,
        provider.endpoint("token_endpoint"),
        grant_type="authorization_code",
        code=params["code"],
        code_verifier=verifier,
    )
    return _tokens(provider, token, nonce)


class _Listener(socketserver.TCPServer):
    allow_reuse_address = True  # a fixed --port used by the previous sign-in is free again at once


class _CallbackServer:
    """A listener on 127.0.0.1 port 0 answering ``GET /callback?...`` once, in its own thread."""

    def __init__(self, port: int = 0) -> None:
        answers: queue.Queue[dict[str, str]] = queue.Queue()
        self.answers = answers

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != CALLBACK_PATH:
                    self.send_error(404)
                    return
                query = parse_qs(parts.query, keep_blank_values=True)
                answers.put({k: v[0] for k, v in query.items()})
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(DONE_PAGE)))
                self.end_headers()
                self.wfile.write(DONE_PAGE)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the terminal is the person's: no access log on it

        try:
            self.server = _Listener(("127.0.0.1", port), Handler)
        except OSError as exc:
            raise ValidationFailed(
                f"cannot listen on 127.0.0.1:{port} for the sign-in: {exc.strerror}"
            ) from None
        self.port = self.server.server_address[1]
        self.redirect_uri = f"http://127.0.0.1:{self.port}{CALLBACK_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(STOP_POLL,), daemon=True)

    def __enter__(self) -> _CallbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def wait(self, timeout: float, stop: threading.Event | None) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unauthorized(f"the sign-in was not completed within {timeout:g} s")
            if stop is not None and stop.is_set():
                raise Unauthorized("sign-in interrupted")
            try:
                return self.answers.get(timeout=min(left, STOP_POLL))
            except queue.Empty:
                continue


# --- the device flow (RFC 8628) -------------------------------------------------------------------


def login_device(
    provider: Provider,
    *,
    timeout: float = LOGIN_TIMEOUT,
    say: Say = print,
    sleep: Callable[[float], object] | None = None,
    stop: threading.Event | None = None,
) -> Tokens:
    """Sign in on another device: show a code and a URL, then poll until the person approves or refuses.

    ``sleep`` waits between polls (default: the ``stop`` event's wait, so that an interrupt ends it).
    """
    pause = sleep or (stop or threading.Event()).wait
    session = provider.session()
    endpoint = provider.endpoint("device_authorization_endpoint")
    body = {"client_id": provider.client_id, "scope": " ".join(provider.scopes)}
    resp = _call(
        provider.issuer, provider.timeout, session.request, "POST", endpoint, data=body, withhold_token=True
    )
    doc = _json_object(provider, resp)
    if "error" in doc:
        raise Unauthorized(f"{provider.issuer} refused a device sign-in: {_oauth_reason(doc)}")
    try:
        device_code, user_code = str(doc["device_code"]), str(doc["user_code"])
        verification_uri = str(doc["verification_uri"])
        interval = float(doc.get("interval") or DEVICE_INTERVAL)
        expires_in = float(doc.get("expires_in") or timeout)
    except (KeyError, TypeError, ValueError):
        raise TransportError(f"{provider.issuer}: malformed device authorization answer") from None
    say(f"To sign in, visit {verification_uri} and enter the code {user_code}")
    if doc.get("verification_uri_complete"):
        say(f"or open {doc['verification_uri_complete']}")
    deadline = time.monotonic() + min(expires_in, timeout)
    token_endpoint = provider.endpoint("token_endpoint")
    while True:
        if time.monotonic() + interval > deadline:
            raise Unauthorized(f"the sign-in was not approved within {min(expires_in, timeout):g} s")
        pause(interval)
        if stop is not None and stop.is_set():
            raise Unauthorized("sign-in interrupted")
        try:
            token = session.fetch_token(token_endpoint, grant_type=DEVICE_GRANT, device_code=device_code)
        except OAuthError as err:
            if err.error == "authorization_pending":
                continue
            if err.error == "slow_down":
                interval += SLOW_DOWN_STEP
                continue
            if err.error == "access_denied":
                why = _oauth_reason(err)
                raise Unauthorized(f"the sign-in was refused at {provider.issuer}: {why}") from None
            if err.error == "expired_token":
                raise Unauthorized("the sign-in code expired unapproved: run xwlogin again") from None
            raise Unauthorized(f"{provider.issuer}: {_oauth_reason(err)}") from None
        except (requests.RequestException, ValueError) as exc:
            raise _unreachable(provider.issuer, provider.timeout, exc) from None
        return _tokens(provider, token, None)


# --- refresh and revocation -----------------------------------------------------------------------


def refresh(provider: Provider, refresh_token: str) -> Tokens:
    """A new ID token (and the refresh token, rotated or not) for a sign-in that is still alive."""
    session = provider.session()
    token = _call(
        provider.issuer,
        provider.timeout,
        session.refresh_token,
        provider.endpoint("token_endpoint"),
        refresh_token=refresh_token,
    )
    tokens = _tokens(provider, token, None)
    return Tokens(tokens.id_token, tokens.refresh_token or refresh_token, None)


def revoke(provider: Provider, refresh_token: str) -> bool:
    """Revoke a refresh token if the provider offers revocation; whether it said yes. Never raises XWError
    for a provider that cannot do it: signing out here does not depend on it."""
    url = provider.metadata.get("revocation_endpoint")
    if not isinstance(url, str) or not url:
        return False
    try:
        resp = provider.session().revoke_token(url, refresh_token, token_type_hint="refresh_token")
    except (requests.RequestException, OAuthError, ValueError):
        return False
    return bool(resp.ok)


# --- helpers --------------------------------------------------------------------------------------


def id_token_claims(id_token: str) -> dict[str, Any]:
    """The claims of an ID token, read WITHOUT checking its signature (the server verifies it)."""
    try:
        payload = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        raise Unauthorized("the provider's ID token is malformed") from None
    if not isinstance(claims, dict):
        raise Unauthorized("the provider's ID token is malformed")
    return claims


def _tokens(provider: Provider, token: Mapping[str, Any], nonce: str | None) -> Tokens:
    id_token = token.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise Unauthorized(f"{provider.issuer} answered without an ID token (is 'openid' among the scopes?)")
    if nonce is not None and id_token_claims(id_token).get("nonce") != nonce:
        raise Unauthorized(f"the ID token from {provider.issuer} lacks this sign-in's nonce: refused")
    refresh_token = token.get("refresh_token")
    return Tokens(id_token, refresh_token if isinstance(refresh_token, str) else None, nonce)


def _call(issuer: str, limit: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One call to the provider, its failures as one-line xwhep errors."""
    try:
        return fn(*args, **kwargs)
    except OAuthError as err:
        raise Unauthorized(f"{issuer}: {_oauth_reason(err)}") from None
    except (requests.RequestException, ValueError) as exc:
        raise _unreachable(issuer, limit, exc) from None


def _unreachable(issuer: str, timeout: float, exc: BaseException) -> TransportError:
    if isinstance(exc, requests.Timeout):
        return TransportError(f"the identity provider {issuer} did not answer within {timeout:g} s")
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return TransportError(f"the identity provider {issuer} answered HTTP {exc.response.status_code}")
    if isinstance(exc, requests.ConnectionError):
        found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
        why = found[1].strip() if found else type(exc).__name__
        return TransportError(f"cannot reach the identity provider {issuer}: {why}")
    if isinstance(exc, requests.RequestException):
        return TransportError(f"cannot talk to the identity provider {issuer}: {type(exc).__name__}")
    return TransportError(f"the identity provider {issuer} answered nonsense: {' '.join(str(exc).split())}")


def _json_object(provider: Provider, resp: requests.Response) -> dict[str, Any]:
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise TransportError(f"{provider.issuer} answered HTTP {resp.status_code} without a JSON object")
    return doc


def _oauth_reason(err: OAuthError | Mapping[str, Any]) -> str:
    if isinstance(err, Mapping):
        code, description = err.get("error"), err.get("error_description")
    else:
        code, description = err.error, err.description
    text = f"{code}: {description}" if description else str(code)
    return " ".join(text.split())
