"""Screenshots of a demo grid for the README: ``XW_SCREENSHOTS=docs/img pytest tests/ui/test_screenshots.py``
writes overview.png and job.png (1200x800). Without XW_SCREENSHOTS the test skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.async_api import expect

from common.schemas import JobIn
from tests.grid.conftest import FINAL
from tests.ui.conftest import new_page, sign_in

OUT = os.environ.get("XW_SCREENSHOTS", "")


@pytest.mark.skipif(not OUT, reason="set XW_SCREENSHOTS=DIR to write the README's screenshots")
@pytest.mark.timeout(300)
async def test_screenshots(local_grid, browser_for) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    admin = lg.admin
    app = await lg.script_app(admin, "render", 'sleep "$2"\necho "frame $1 rendered"\n', rights="0755")
    jobs = [
        await admin.submit(JobIn(app=app, args=f"{i} {1 + i % 3}", label=f"frame-{i:03d}")) for i in range(12)
    ]
    for j in jobs[:8]:
        await lg.wait_job(admin, j.uid, FINAL)
    await admin.submit(JobIn(app=app, args="99 600", label="long-run"))
    held = await admin.submit(JobIn(app=app, args="98 600", label="held-run"))
    await admin.hold(held.uid, "waiting for calibration data")
    out = Path(OUT)
    out.mkdir(parents=True, exist_ok=True)
    page = await new_page(await browser_for(lg.grid))
    await sign_in(page, lg.grid.url, "admin", lg.grid.admin_cfg.password)
    await page.wait_for_timeout(2500)  # the chart draws from its first JSON answer
    await page.screenshot(path=str(out / "overview.png"))
    await page.goto(f"{lg.grid.url}/ui/jobs/{jobs[0].uid}")
    await expect(page.locator("pre[data-preview='stdout.txt']")).to_be_visible()
    await page.screenshot(path=str(out / "job.png"))
