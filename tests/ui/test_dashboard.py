"""The dashboard in a real browser, without workers: sign-in, rights, CSRF, sign-out."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import expect

from common.schemas import JobIn, Validation
from tests.conftest import PASSWORD
from tests.ui.conftest import csrf_of, new_page, script_app, session_cookie, sign_in


async def test_sign_in_refuses_a_wrong_password_then_lets_the_right_one_in(grid, browser_for) -> None:  # type: ignore[no-untyped-def]
    await grid.add_user("alice")
    page = await new_page(await browser_for(grid))
    await page.goto(f"{grid.url}/ui/jobs")
    assert "/ui/login" in page.url  # anonymous: sent to sign in
    await page.fill("input[name=login]", "alice")
    await page.fill("input[name=password]", "not the password")
    await page.click("button[type=submit]")
    await expect(page.locator(".message")).to_have_text("wrong login or password")
    assert not [c for c in await page.context.cookies() if c["name"] == "xw_session"]

    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Jobs")  # back where it was going
    cookie = next(c for c in await page.context.cookies() if c["name"] == "xw_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] in ("Lax", "Strict")
    await expect(page.locator("header .who span")).to_have_text("alice")


async def test_another_users_private_job_is_not_found_by_its_url(grid, browser_for, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = await grid.add_user("alice")
    await grid.add_user("bob")
    app = await script_app(alice, tmp_path, "secret", "echo secret\n")
    job = await alice.submit(JobIn(app=app, label="private-run"))
    browser = await browser_for(grid)

    mine = await new_page(browser)
    await sign_in(mine, grid.url, "alice", PASSWORD)
    resp = await mine.goto(f"{grid.url}/ui/jobs/{job.uid}")
    assert resp is not None and resp.status == 200
    await expect(mine.locator("h1")).to_contain_text("private-run")

    theirs = await new_page(browser)
    await sign_in(theirs, grid.url, "bob", PASSWORD)
    resp = await theirs.goto(f"{grid.url}/ui/jobs/{job.uid}")
    assert resp is not None and resp.status == 404
    await expect(theirs.locator("h1")).to_have_text("Not found")
    assert "private-run" not in await theirs.content()
    await theirs.goto(f"{grid.url}/ui/jobs")
    assert job.uid not in await theirs.content()  # nor in bob's list
    resp = await theirs.goto(f"{grid.url}/ui/jobs/{job.uid}/live")
    assert resp is not None and resp.status == 404


async def test_a_form_without_its_csrf_token_is_refused(grid, browser_for, raw_http, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = await grid.add_user("alice")
    app = await script_app(alice, tmp_path, "idle", "sleep 1\n")
    job = await alice.submit(JobIn(app=app))
    page = await new_page(await browser_for(grid))
    await sign_in(page, grid.url, "alice", PASSWORD)
    hold = f"/ui/jobs/{job.uid}/hold"

    # the page's own session cookie, posted with aiohttp: only the form's token differs between tries
    http = raw_http(grid, await session_cookie(page))
    async with http.post(hold, data={"reason": "x"}, allow_redirects=False) as missing:
        assert missing.status == 403
        assert "CSRF" in await missing.text()
    async with http.post(hold, data={"csrf": "0" * 64}, allow_redirects=False) as wrong:
        assert wrong.status == 403
    assert (await alice.get_job(job.uid)).status.value == "PENDING"

    async with http.post(hold, data={"csrf": await csrf_of(page)}, allow_redirects=False) as right:
        assert right.status == 303  # the same request with the token goes through
    assert (await alice.get_job(job.uid)).status.value == "WAITING"


async def test_sign_out_ends_the_session_server_side(grid, browser_for, raw_http) -> None:  # type: ignore[no-untyped-def]
    await grid.add_user("alice")
    browser = await browser_for(grid)
    page = await new_page(browser)
    await sign_in(page, grid.url, "alice", PASSWORD)
    old = await session_cookie(page)
    http = raw_http(grid, old)
    async with http.get("/ui/jobs", allow_redirects=False) as before:
        assert before.status == 200  # the cookie works before signing out

    await page.click("header .who button")
    await page.wait_for_url("**/ui/login**")
    async with http.get("/ui/jobs", allow_redirects=False) as replay:
        assert replay.status == 303 and "/ui/login" in replay.headers["Location"]
    async with http.get("/ui/jobs/rows", headers={"X-Requested-With": "xw-ui"}) as fragment:
        assert fragment.status == 401
    await page.goto(f"{grid.url}/ui/jobs")
    assert "/ui/login" in page.url


async def test_users_page_is_for_administrators_only(grid, browser_for) -> None:  # type: ignore[no-untyped-def]
    await grid.add_user("alice")
    browser = await browser_for(grid)
    page = await new_page(browser)
    await sign_in(page, grid.url, "alice", PASSWORD)
    assert await page.locator("nav a[href='/ui/users']").count() == 0
    resp = await page.goto(f"{grid.url}/ui/users")
    assert resp is not None and resp.status == 403
    assert "admin@" not in await page.content()

    admin = await new_page(browser)
    await sign_in(admin, grid.url, "admin", grid.admin_cfg.password)
    resp = await admin.goto(f"{grid.url}/ui/users")
    assert resp is not None and resp.status == 200
    await expect(admin.locator("#users")).to_contain_text("alice")


async def test_a_password_change_ends_web_sessions(grid, browser_for) -> None:  # type: ignore[no-untyped-def]
    from common.schemas import UserPatch

    await grid.add_user("alice")
    page = await new_page(await browser_for(grid))
    await sign_in(page, grid.url, "alice", PASSWORD)
    me = (await grid.admin.users(login="alice"))[0]
    await grid.admin.patch_user(me.uid, UserPatch(password="another horse battery"))
    await page.goto(f"{grid.url}/ui/jobs")
    assert "/ui/login" in page.url


async def test_a_validated_jobs_page_shows_its_replicas(grid, browser_for, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = await grid.add_user("alice")
    app = await script_app(alice, tmp_path, "sim", "echo 42\n")
    job = await alice.submit(JobIn(app=app, label="checked", validation=Validation.copies(3)))
    page = await new_page(await browser_for(grid))
    await sign_in(page, grid.url, "alice", PASSWORD)
    await page.goto(f"{grid.url}/ui/jobs/{job.uid}")
    await expect(page.locator("[data-status]")).to_have_text("REPLICATING")
    await expect(page.locator("p.policy")).to_contain_text("quorum: 2 agreeing results")
    await expect(page.locator("table.replicas tbody tr")).to_have_count(3)
    await page.goto(f"{grid.url}/ui/jobs")
    assert job.replicas[0].uid not in await page.content()  # replicas are not jobs of the list
