"""Sampling profiles of running processes with py-spy, summarised as top self and inclusive costs."""

from __future__ import annotations

import asyncio
import collections
import re
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import ROOT, log
from bench.servers import stop_process

RATE = 100  # samples per second
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
OURS = ("common/", "server/", "client/", "worker/", "proxy/")
# Leaf frames of threads that wait (py-spy's idle detection does not work on every kernel): left out.
IDLE_LEAVES = (
    ("select", "selectors.py", ""),
    ("_worker", "concurrent/futures/thread.py", "81"),
    ("_connection_worker_thread", "aiosqlite/core.py", "59"),
    ("get", "queue.py", ""),
    ("wait", "threading.py", ""),
    ("_wait_for_tstate_lock", "threading.py", ""),
)


def _idle(func: str, file: str, line: str) -> bool:
    for f, suffix, ln in IDLE_LEAVES:
        if func.endswith(f) and file.endswith(suffix) and (not ln or ln == line):
            return True
    return False


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _short(path: str) -> str:
    """A file path made readable: relative to the repository or to site-packages."""
    for marker in (str(ROOT) + "/", "site-packages/", "/lib/python3"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return rest if marker != "/lib/python3" else "stdlib/" + rest.split("/", 1)[-1]
    return path


def _frame(text: str) -> tuple[str, str, str]:
    m = _FRAME.match(text.strip())
    if not m:
        return text.strip(), "?", ""
    return m["func"], _short(m["file"]), m["line"] or ""


def summarise(raw: str, top: int = 12) -> dict[str, Any]:
    """Top costs from py-spy's collapsed stacks: by leaf (self, with line) and by our functions."""
    total = idle = 0
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    ours_leaf: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        func, file, lineno = frames[-1]
        if _idle(func, file, lineno):
            idle += count
            continue
        total += count
        own[f"{func} ({file}:{lineno})"] += count
        seen: set[str] = set()
        deepest_ours = ""
        for func, file, lineno in frames:
            key = f"{func} ({file})"
            if file.startswith(OURS):
                deepest_ours = f"{func} ({file}:{lineno})"
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += count
        if deepest_ours:
            ours_leaf[deepest_ours] += count

    def pct(counter: collections.Counter[str]) -> list[list[Any]]:
        return [[name, round(100.0 * n / total, 1)] for name, n in counter.most_common(top)] if total else []

    return {
        "samples": total,  # busy samples: the percentages are of these
        "idle_samples_left_out": idle,
        "self": pct(own),  # where the CPU is, leaf frames with their line
        "ours_inclusive": pct(inclusive),  # our functions, with everything they call
        "ours_deepest": pct(ours_leaf),  # the deepest line of ours on each stack: what to change
    }


@dataclass
class Profiler:
    """``py-spy record`` on one process until :meth:`stop` (SIGINT makes py-spy write its output)."""

    pid: int
    out: Path
    proc: asyncio.subprocess.Process | None = None
    error: str = ""

    async def start(self) -> None:
        exe = py_spy()
        if exe is None:
            self.error = "py-spy not installed (.venv/bin/pip install py-spy)"
            return
        self.proc = await asyncio.create_subprocess_exec(
            exe,
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            str(RATE),
            "--format",
            "raw",
            "--output",
            str(self.out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(0.5)  # attach before the measured work starts
        if self.proc.returncode is not None:
            err = await self.proc.stderr.read() if self.proc.stderr else b""
            self.error = f"py-spy exited: {err.decode(errors='replace').strip()[-300:]}"

    async def stop(self) -> dict[str, Any]:
        if self.proc is None or self.error:
            return {"error": self.error or "not started"}
        await stop_process(self.proc, signal.SIGINT, grace=30)
        try:
            raw = self.out.read_text()
        except OSError as exc:
            err = await self.proc.stderr.read() if self.proc.stderr else b""
            return {"error": f"no py-spy output ({exc}); {err.decode(errors='replace')[-300:]}"}
        summary = summarise(raw)
        log(f"profile of pid {self.pid}: {summary['samples']} samples")
        return summary


async def start_profiler(pid: int, out: Path) -> Profiler:
    prof = Profiler(pid, out)
    await prof.start()
    return prof
