"""``xwsweep``: a first parameter sweep — register an app, submit N jobs, watch them, fetch results."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from client.api import XWClient
from client.config import ConfigError, load_config
from common.enums import AppType, JobStatus
from common.errors import Conflict, XWError
from common.schemas import AppIn, Binary, JobIn, JobOut

APP = "xwsweep-square"
SCRIPT = '#!/bin/sh\nn="$1"\necho "$n squared is $((n * n)) (computed on $(hostname) in $XWSCRATCHPATH)"\n'
FINAL = {JobStatus.COMPLETED, JobStatus.ERROR}


async def sweep(cfg_path: Path | None, jobs: int, out: Path, console: Console) -> int:
    """Run the sweep; returns the number of jobs that did not complete with exit code 0."""
    async with XWClient(load_config(cfg_path)) as xw:
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "square.sh"
            script.write_text(SCRIPT)
            data = await xw.send_file(script, name=f"{APP}.sh", access_rights="1700")
        try:
            app = await xw.send_app(
                AppIn(name=APP, type=AppType.SCRIPT, binaries=[Binary(os="ANY", cpu="ANY", data=data.uid)])
            )
        except Conflict:
            app = (await xw.apps(name=APP))[0]
        console.print(f"registered app {APP} ({xw.uri(app.uid)})")
        label = f"sweep-{int(time.time())}"
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> JobOut:
            async with sem:
                return await xw.submit(JobIn(app=app.uid, args=str(i), group=label))

        t0 = time.perf_counter()
        submitted = await asyncio.gather(*(one(i) for i in range(1, jobs + 1)))
        console.print(f"submitted {jobs} jobs in {time.perf_counter() - t0:.1f} s (job group {label})")
        done: dict[str, JobOut] = {}
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("running", total=jobs)
            while len(done) < jobs:
                for job in await xw.jobs(group=label):
                    if job.status in FINAL:
                        done[job.uid] = job
                bar.update(task, completed=len(done))
                if len(done) < jobs:
                    await asyncio.sleep(0.5)
        console.print(f"all {jobs} jobs ended in {time.perf_counter() - t0:.1f} s; fetching results")
        out.mkdir(parents=True, exist_ok=True)
        failed = 0
        lines = []
        for job in sorted(submitted, key=lambda j: int(j.args)):
            final = done[job.uid]
            if final.status is not JobStatus.COMPLETED or final.result is None or final.return_code != 0:
                failed += 1
                continue
            dest = out / f"{final.uid}.zip"
            await xw.download(final.result, dest)
            with zipfile.ZipFile(dest) as zf:
                lines.append(zf.read("stdout.txt").decode().strip())
        (out / "squares.txt").write_text("\n".join(lines) + "\n")
        console.print(f"{len(lines)} results in {out}; first: {lines[0] if lines else '-'}")
        if failed:
            console.print(f"[red]{failed} job(s) did not complete with exit code 0[/red]")
        return failed


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--xwconfig", "config", type=click.Path(path_type=Path), default=None)
@click.option("--jobs", type=click.IntRange(1, 100000), default=100, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("sweep"), show_default=True)
def main(config: Path | None, jobs: int, out: Path) -> None:
    """Register a small app, submit JOBS jobs, watch them complete, fetch their results."""
    console = Console(stderr=False, soft_wrap=True)  # a long path stays whole in logs and pipes
    try:
        failed = asyncio.run(sweep(config, jobs, out, console))
    except (XWError, ConfigError) as exc:
        click.echo(f"xwsweep: error: {getattr(exc, 'reason', exc)}", err=True)
        sys.exit(1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
