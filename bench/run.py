"""Run every benchmark, each as its own process, and write the report.

``python -m bench.run``: full sizes; stores bench/results/latest.json and rewrites docs/BENCHMARKS.md
(``make bench``). ``python -m bench.run --quick``: tiny sizes, results and report in a temporary directory,
docs/BENCHMARKS.md untouched (``make bench-quick``, part of CI). Exits non-zero if any benchmark crashed;
a crashed benchmark still gets its line in the report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench import report
from bench.harness import (
    DOC,
    QUICK_DIR,
    QUICK_RESULTS,
    RESULTS,
    ROOT,
    Record,
    Row,
    command_line,
    load_results,
    machine,
    store,
)

# name -> (full-run timeout s, quick timeout s)
BENCHMARKS = {
    "dispatch": (900, 240),
    "latency": (600, 180),
    "scale": (1200, 180),
    "submit": (1500, 180),
    "relay": (600, 180),
    "data": (600, 180),
    "connections": (900, 180),
    "processes": (1200, 300),
    "metrics": (1200, 300),
    "validation": (900, 180),
}


def run_one(name: str, quick: bool, results: Path, timeout: float, extra: list[str]) -> str:
    """Run ``python -m bench.NAME``; '' on success, else why it failed."""
    cmd = [sys.executable, "-m", f"bench.{name}", "--results", str(results), *extra]
    if quick:
        cmd.append("--quick")
    print(f"\n=== {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # the servers it started (each in a session of its own) go with it: an orphaned server would
        # load the machine under every later benchmark
        family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()
        return f"timed out after {timeout:.0f} s"
    print(
        f"=== {name}: exit {proc.returncode} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True
    )
    if proc.returncode != 0:
        return f"exit code {proc.returncode}"
    try:
        json.loads(out)
    except ValueError:
        return "did not print its JSON record"
    return ""


def crashed_record(name: str, reason: str, quick: bool) -> Record:
    rec = Record(
        benchmark=name,
        title=name,
        command=command_line(name) + (" --quick" if quick else ""),
        quick=quick,
        rows=[Row(figure=name, value=None, unit="", note=f"not measured: the benchmark crashed ({reason})")],
    )
    rec.details = {"crashed": reason}
    return rec


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated benchmarks (default: all)")
    parser.add_argument("--doc", type=Path, default=None, help="report to write")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled runs")
    ns = parser.parse_args()
    names = [n for n in ns.only.split(",") if n] or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    final_results = QUICK_RESULTS if ns.quick else RESULTS
    doc = ns.doc or (QUICK_DIR / "BENCHMARKS.md" if ns.quick else DOC)
    # a fresh results file per run, so a crashed benchmark never leaves an older record in the report
    scratch = Path(tempfile.mkdtemp(prefix="xwbench-run-")) / "results.json"
    extra = ["--no-profile"] if ns.no_profile else []
    print(f"machine: {machine()}", file=sys.stderr)
    failed: dict[str, str] = {}
    t0 = time.perf_counter()
    for name in names:
        full_timeout, quick_timeout = BENCHMARKS[name]
        reason = run_one(name, ns.quick, scratch, quick_timeout if ns.quick else full_timeout, extra)
        if reason:
            failed[name] = reason
            store(crashed_record(name, reason, ns.quick), scratch)
    merged = {} if ns.quick else load_results(final_results)
    merged.update(load_results(scratch))
    final_results.parent.mkdir(parents=True, exist_ok=True)
    final_results.write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")
    report.write(final_results, doc, quick=ns.quick)
    os.unlink(scratch)
    os.rmdir(scratch.parent)
    print(f"\nresults: {final_results}\nreport:  {doc}\ntotal:   {time.perf_counter() - t0:.0f} s")
    for rec in (load_results(final_results).get(n, {}) for n in names):
        for row in rec.get("rows", []):
            value = (
                f"{report.num(row['value'])} {row['unit']}" if row.get("value") is not None else row["note"]
            )
            print(f"  {row['figure']}: {value}")
    if failed:
        print(f"\nFAILED: {', '.join(f'{k} ({v})' for k, v in failed.items())}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
