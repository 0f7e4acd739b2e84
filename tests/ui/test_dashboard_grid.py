"""The dashboard with real workers: a job appears and completes in the list without a reload, the list
filters, the job page shows its timeline and output, holds and releases, and downloads the result."""

from __future__ import annotations

import io
import re
import zipfile

import pytest
from playwright.async_api import expect

from common.enums import JobStatus
from common.schemas import JobIn
from tests.conftest import PASSWORD
from tests.grid.conftest import FINAL
from tests.ui.conftest import new_page, sign_in

pytestmark = pytest.mark.slow


async def test_jobs_live_filters_job_page_download_hold_release(local_grid, browser_for) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    grid = lg.grid
    alice = await grid.add_user("alice")
    app = await lg.script_app(alice, "greet", 'sleep "${2:-1}"\necho "hello $1"\necho "to stderr" >&2\n')
    page = await new_page(await browser_for(grid))
    await sign_in(page, grid.url, "alice", PASSWORD)
    await page.goto(f"{grid.url}/ui/jobs")
    await page.evaluate("window.__stayed = true")  # gone if the page reloads

    # submitted through the API: the open list shows it, then shows it COMPLETED, never reloading
    job = await alice.submit(JobIn(app=app, args="world 2", label="greeting"))
    row = page.locator(f"tr[data-job='{job.uid}']")
    await expect(row).to_be_visible(timeout=15_000)
    await expect(row.locator("[data-status]")).to_have_text("COMPLETED", timeout=60_000)
    assert await page.evaluate("window.__stayed === true")

    other = await alice.submit(JobIn(app=app, args="again 0", label="second"))
    done = await lg.wait_job(alice, other.uid, FINAL)
    assert done.status is JobStatus.COMPLETED

    # filters: by label, then by status (two at once), in the form
    await page.fill("input[name=label]", "greeting")
    await page.click(".filters button[type=submit]")
    await expect(page.locator("tr[data-job]")).to_have_count(1)
    await expect(page.locator(f"tr[data-job='{job.uid}']")).to_be_visible()
    await page.fill("input[name=label]", "")
    await page.check("input[name=status][value=PENDING]")
    await page.check("input[name=status][value=RUNNING]")
    await page.click(".filters button[type=submit]")
    await expect(page.locator("tr[data-job]")).to_have_count(0)
    await page.uncheck("input[name=status][value=PENDING]")
    await page.uncheck("input[name=status][value=RUNNING]")
    await page.check("input[name=status][value=COMPLETED]")
    await page.click(".filters button[type=submit]")
    await expect(page.locator("tr[data-job]")).to_have_count(2)

    # the job page: timeline, output preview, and the result download (the very zip the API gives)
    await page.click(f"tr[data-job='{job.uid}'] a")
    await expect(page.locator("h1")).to_have_text("Job greeting")
    timeline = page.locator(".timeline")
    await expect(timeline).to_contain_text("PENDING → RUNNING")
    await expect(timeline).to_contain_text("RUNNING → COMPLETED")
    await expect(page.locator("pre[data-preview='stdout.txt']")).to_contain_text("hello world")
    await expect(page.locator("pre[data-preview='stderr.txt']")).to_contain_text("to stderr")
    async with page.expect_download() as info:
        await page.click("#download")
    download = await info.value
    got = (await download.path()).read_bytes()
    finished = await alice.get_job(job.uid)
    expected = await lg.results(alice, finished)
    with zipfile.ZipFile(io.BytesIO(got)) as zf:
        assert {n: zf.read(n) for n in zf.namelist()} == expected
    assert (lg.tmp / f"{job.uid}.zip").read_bytes() == got

    # hold and release with the buttons, on a job that sleeps long enough
    slow = await alice.submit(JobIn(app=app, args="slowly 60", label="slow"))
    await page.goto(f"{grid.url}/ui/jobs/{slow.uid}")
    await page.evaluate("window.__stayed = true")
    status = page.locator("#job-live [data-status]")
    await expect(status).to_have_text("RUNNING", timeout=30_000)  # the page follows it by itself
    assert await page.evaluate("window.__stayed === true")
    await page.click("button[name=hold]")
    await expect(status).to_have_text("WAITING")
    assert (await alice.get_job(slow.uid)).status is JobStatus.WAITING
    await expect(page.locator(".timeline")).to_contain_text("held by alice")
    await page.click("button[name=release]")
    await expect(status).to_have_text(re.compile("PENDING|RUNNING"))
    await expect(page.locator(".timeline")).to_contain_text("released by alice")
    assert (await alice.get_job(slow.uid)).status in {JobStatus.PENDING, JobStatus.RUNNING}
