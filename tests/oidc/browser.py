"""A scripted "browser" for OpenID Connect tests: fills login forms with requests + html.parser.

Stdlib + requests only, so that it also runs as a script, as the browser of Python's ``webbrowser``.
On Python 3.11 ``webbrowser`` does NOT split ``$BROWSER`` into a command and arguments: with
``BROWSER="/venv/bin/python .../browser.py %s"`` the whole string is taken as the program name and
opening fails. ``BROWSER`` must name one executable, which then gets the URL as its only argument;
``write_browser_command(dir)`` writes such a wrapper script and returns its path:

    os.environ["BROWSER"] = write_browser_command(tmp_path)
    os.environ["XW_TEST_BROWSER_LOGIN"] = "alice"; os.environ["XW_TEST_BROWSER_PASSWORD"] = "..."

``webbrowser`` reads ``BROWSER`` once per process (reset ``webbrowser._tryorder = None`` when
changing it in-process). Its GenericBrowser waits for the command, so the exit status matters.
"""

from __future__ import annotations

import os
import shlex
import sys
import threading
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

LOOPBACK = ("127.0.0.1", "::1", "localhost")
USERNAME_FIELDS = ("username", "login", "user", "email", "identifier")
PREFERRED_BUTTONS = ("approve", "accept", "allow", "login", "continue", "submit", "yes")
MAX_STEPS = 12


class BrowserError(RuntimeError):
    """The flow did not reach the redirect URI (bad credentials, error page, loop...)."""


class Form:
    def __init__(self, action: str, method: str) -> None:
        self.action = action
        self.method = method
        self.inputs: list[dict[str, str]] = []  # attrs of <input> and <button>


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif tag in ("input", "button") and self.forms:
            a.setdefault("type", "submit" if tag == "button" else "text")
            self.forms[-1].inputs.append(a)


def parse_forms(page: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(page)
    return parser.forms


def fill(form: Form, values: dict[str, str], button: str | None = None) -> dict[str, str]:
    """Form data: hidden/preset inputs as found, ``values`` by field name or kind
    (``"username"`` fills the login field, ``"password"`` any password field) and one submit button."""
    data: dict[str, str] = {}
    buttons: list[dict[str, str]] = []
    for field in form.inputs:
        name, kind = field.get("name", ""), field["type"].lower()
        if kind == "submit":
            if name:
                buttons.append(field)
            continue
        if not name or (kind in ("checkbox", "radio") and "checked" not in field):
            continue
        if name in values:
            data[name] = values[name]
        elif kind == "password" and "password" in values:
            data[name] = values["password"]
        elif kind in ("text", "email") and name in USERNAME_FIELDS and "username" in values:
            data[name] = values["username"]
        else:
            data[name] = field.get("value", "")
    wanted = (button,) if button else PREFERRED_BUTTONS
    chosen = next((b for w in wanted for b in buttons if b.get("value", "").lower() == w), None)
    if chosen is None and buttons and not button:
        chosen = buttons[0]
    if chosen is not None:
        data[chosen["name"]] = chosen.get("value", "")
    return data


def _is_callback(url: str, redirect_uri: str | None, server_netloc: str) -> bool:
    parts = urlsplit(url)
    if redirect_uri:
        want = urlsplit(redirect_uri)
        return (parts.scheme, parts.netloc, parts.path) == (want.scheme, want.netloc, want.path)
    return parts.netloc != server_netloc and parts.hostname in LOOPBACK


def browser_login(
    authorize_url: str, login: str, password: str, session: requests.Session | None = None
) -> requests.Response:
    """Log in at the authorization server and GET the loopback redirect URI it redirects to.

    Returns the response of the redirect URI (i.e. of the client's loopback listener)."""
    s = session or requests.Session()
    redirect_uri = parse_qs(urlsplit(authorize_url).query).get("redirect_uri", [None])[0]
    server_netloc = urlsplit(authorize_url).netloc
    values = {"username": login, "password": password}
    r = s.get(authorize_url, allow_redirects=False, timeout=10)
    for _ in range(MAX_STEPS):
        if r.is_redirect:
            target = urljoin(r.url, r.headers["Location"])
            if _is_callback(target, redirect_uri, server_netloc):
                return s.get(target, allow_redirects=False, timeout=10)
            r = s.get(target, allow_redirects=False, timeout=10)
            continue
        forms = parse_forms(r.text) if "html" in r.headers.get("Content-Type", "") else []
        if r.status_code >= 400 or not forms:
            raise BrowserError(f"{r.request.method} {r.url} -> {r.status_code}: {r.text[:300]}")
        form = next((f for f in forms if any(i["type"] == "password" for i in f.inputs)), forms[-1])
        action = urljoin(r.url, form.action or r.url)
        data = fill(form, values)
        if form.method == "post":
            r = s.post(action, data=data, allow_redirects=False, timeout=10)
        else:
            r = s.get(action, params=data, allow_redirects=False, timeout=10)
    raise BrowserError(f"no redirect to the client after {MAX_STEPS} steps (last: {r.url})")


def device_approve(
    verification_uri: str, user_code: str, login: str, password: str, deny: bool = False
) -> requests.Response:
    """Fill the device verification page (``verification_uri`` or ``verification_uri_complete``).
    Raises BrowserError unless the page answers 2xx."""
    s = requests.Session()
    r = s.get(verification_uri, timeout=10)
    forms = parse_forms(r.text)
    if r.status_code >= 400 or not forms:
        raise BrowserError(f"GET {verification_uri} -> {r.status_code}: {r.text[:300]}")
    form = forms[0]
    values = {"user_code": user_code, "username": login, "password": password}
    data = fill(form, values, button="deny" if deny else "approve")
    r = s.post(urljoin(r.url, form.action or r.url), data=data, timeout=10)
    if r.status_code >= 400:
        raise BrowserError(f"POST {r.url} -> {r.status_code}: {r.text[:300]}")
    return r


class LoopbackListener:
    """A client's loopback redirect listener on 127.0.0.1:<free port> (``url`` ends in /callback):
    records the query of every request in ``queries`` and answers 200."""

    def __init__(self) -> None:
        got: list[dict[str, str]] = []
        self.queries = got

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                got.append({k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()})
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"You can close this window.")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/callback"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> LoopbackListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_browser_command(directory: str | os.PathLike[str], python: str = sys.executable) -> str:
    """Write an executable wrapper that runs this file with ``python``; its path is a value for
    ``BROWSER`` that Python's webbrowser accepts (it must be a single program path)."""
    path = Path(directory) / "xw-test-browser"
    cmd = f'exec {shlex.quote(python)} {shlex.quote(str(Path(__file__).resolve()))} "$@"\n'
    path.write_text("#!/bin/sh\n" + cmd)
    path.chmod(0o755)
    return str(path)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: browser.py AUTHORIZE_URL (login/password from XW_TEST_BROWSER_LOGIN/PASSWORD)")
        return 2
    try:
        r = browser_login(
            argv[1], os.environ["XW_TEST_BROWSER_LOGIN"], os.environ["XW_TEST_BROWSER_PASSWORD"]
        )
    except (BrowserError, requests.RequestException, KeyError) as exc:
        print(f"browser.py: {exc!r}", file=sys.stderr)
        return 1
    return 0 if r.status_code < 400 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
