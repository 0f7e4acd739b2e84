"""A real browser (Debian's chromium, driven by Playwright) against a real server over real TLS.

The browser trusts exactly our server's certificate: chromium's ``--ignore-certificate-errors-spki-list``
pins the SHA-256 of its public key, so TLS is still verified against that one key and nothing else.
Nothing here downloads a browser: without /usr/bin/chromium (or Playwright) the UI tests skip.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.grid.conftest import local_grid  # noqa: F401  (the fixture, for these tests too)

CHROMIUM = os.environ.get("XW_CHROMIUM", "/usr/bin/chromium")

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - the dev dependencies hold it
    async_playwright = None  # type: ignore[assignment]


def spki_pin(cert: Path) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a certificate, as chromium's pin list takes it."""
    pub = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = pub.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def needs_browser() -> None:
    if async_playwright is None or shutil.which(CHROMIUM) is None:
        pytest.skip(f"needs Playwright and chromium at {CHROMIUM} (apt-get install chromium)")


@pytest.fixture
async def browser_for() -> AsyncIterator[Callable[[Any], Awaitable[Browser]]]:
    """``await browser_for(grid)``: a headless chromium that accepts only that grid's certificate."""
    needs_browser()
    pw = await async_playwright().start()
    launched: list[Browser] = []

    async def launch(grid: Any) -> Browser:
        pin = spki_pin(grid.settings.server_cert)
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[f"--ignore-certificate-errors-spki-list={pin}"],
        )
        launched.append(browser)
        return browser

    try:
        yield launch
    finally:
        for b in launched:
            await b.close()
        await pw.stop()


async def new_page(browser: Browser) -> Page:
    context = await browser.new_context(viewport={"width": 1200, "height": 800}, accept_downloads=True)
    return await context.new_page()


async def sign_in(page: Page, url: str, login: str, password: str) -> None:
    """Sign in through the form (from wherever the dashboard sends an anonymous visitor)."""
    await page.goto(f"{url}/ui/")
    await page.fill("input[name=login]", login)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")
    await page.wait_for_selector("header nav")


async def script_app(xw: Any, tmp: Path, name: str, body: str) -> str:
    """Register a private script application for ``xw`` and return its uid."""
    from common.enums import AppType
    from common.schemas import AppIn, Binary

    path = tmp / f"{name}.sh"
    path.write_text("#!/bin/sh\n" + body)
    data = await xw.send_file(path, access_rights="1700")
    app = await xw.send_app(
        AppIn(name=name, type=AppType.SCRIPT, binaries=[Binary(os="ANY", cpu="ANY", data=data.uid)])
    )
    return str(app.uid)


async def session_cookie(page: Page) -> str:
    """The dashboard's session cookie in the page's browser context."""
    cookies = await page.context.cookies()
    return next(c["value"] for c in cookies if c["name"] == "xw_session")


async def csrf_of(page: Page) -> str:
    """The session's CSRF token as the page's forms carry it."""
    return str(await page.get_attribute("header input[name=csrf]", "value"))


@pytest.fixture
async def raw_http() -> AsyncIterator[Callable[[Any, str], Any]]:
    """``raw_http(grid, cookie)``: an aiohttp session that verifies the grid's CA and sends only the
    given session cookie (no redirects followed): to post what a browser's form would not."""
    import ssl

    import aiohttp

    made: list[aiohttp.ClientSession] = []

    def make(grid: Any, cookie: str) -> aiohttp.ClientSession:
        ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
        http = aiohttp.ClientSession(
            base_url=grid.url,
            connector=aiohttp.TCPConnector(ssl=ctx),
            headers={"Cookie": f"xw_session={cookie}"},
        )
        made.append(http)
        return http

    try:
        yield make
    finally:
        for http in made:
            await http.close()
