"""Signing in to the dashboard through a real OpenID provider, in a real browser.

The server is a confidential client (``web_client_id`` ``xwhep-web`` with its secret) of
tests/oidc/provider.py: the
login page's "Sign in with test" goes to the provider's own login form, and the provider's answer comes
back to /ui/oidc/callback, where the same checks and rules as xwlogin's apply.
"""

from __future__ import annotations

from typing import Any

from server.oidc.config import ProviderConfig
from tests.ui.conftest import new_page


async def _web_grid(grid_factory: Any, provider: Any, **kw: Any) -> Any:
    trust = ProviderConfig(
        name="test",
        issuer=provider.issuer,
        client_id="xwhep-cli",
        web_client_id="xwhep-web",
        client_secret="xwhep-web-secret",
        create_users=True,
        **kw,
    )
    grid = await grid_factory(oidc=(trust,))
    provider.add_client(
        "xwhep-web", secret="xwhep-web-secret", redirect_uris=[f"{grid.url}/ui/oidc/callback"]
    )
    return grid


async def _through_provider(page: Any, grid: Any, login: str, password: str) -> None:
    await page.goto(f"{grid.url}/ui/jobs")
    await page.click("text=Sign in with test")
    await page.fill("input[name=username]", login)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")


async def test_a_person_signs_in_through_the_provider_and_lands_where_they_were_going(
    grid_factory: Any, oidc_provider: Any, browser_for: Any
) -> None:
    grid = await _web_grid(grid_factory, oidc_provider)
    page = await new_page(await browser_for(grid))
    await _through_provider(page, grid, "alice", "alice-password")
    await page.wait_for_selector("header nav")
    assert page.url.startswith(f"{grid.url}/ui/jobs")
    assert await page.inner_text("header .who span") == "alice"
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert "xw_oidc" not in cookies  # the pending sign-in is forgotten once finished
    session = cookies["xw_session"]
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Lax"
    users = {u.login: u for u in await grid.admin.users()}
    assert users["alice"].rights.value == "STANDARD_USER"


async def test_a_refused_sign_in_is_the_login_page_with_its_reason_and_creates_nothing(
    grid_factory: Any, oidc_provider: Any, browser_for: Any
) -> None:
    grid = await _web_grid(grid_factory, oidc_provider)
    page = await new_page(await browser_for(grid))
    oidc_provider.tamper(aud="someone-else")
    await _through_provider(page, grid, "alice", "alice-password")
    await page.wait_for_selector("p.message")
    assert "ID token is for audience 'someone-else', not for xwhep-web" in await page.inner_text("p.message")
    assert "alice" not in {u.login for u in await grid.admin.users()}
    # an answer that does not belong to a sign-in begun in this browser is refused too
    await page.context.clear_cookies()
    await page.goto(f"{grid.url}/ui/oidc/callback?state=forged&code=stolen")
    assert "no sign-in in progress" in await page.inner_text("p.message")
    await page.goto(f"{grid.url}/ui/jobs")
    assert "/ui/login" in page.url  # and no session came of it
