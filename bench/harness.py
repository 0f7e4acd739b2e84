"""What every benchmark shares: options, statistics, machine facts, result records and their files.

A benchmark is a module with ``main()``; it measures, builds one :class:`Record` (one or more table
:class:`Row`\\ s plus free-form details), prints it as JSON and stores it in a results file that keeps
the latest record of each benchmark (``bench/results/latest.json`` for full runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
QUICK_DIR = Path(tempfile.gettempdir()) / "xwhep-bench-quick"
QUICK_RESULTS = QUICK_DIR / "latest.json"
DOC = ROOT / "docs" / "BENCHMARKS.md"


# --- options ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The options every benchmark takes."""

    quick: bool
    results: Path
    profile: bool
    keep: bool  # keep the temporary directory (server homes, logs) for inspection
    extra: argparse.Namespace


def options(name: str, doc: str, add: Callable[[argparse.ArgumentParser], None] | None = None) -> Options:
    """Parse the command line of ``python -m bench.<name>``."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI): seconds, not minutes")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"results file to update (default: {RESULTS.relative_to(ROOT)}, or a temp file with --quick)",
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also profile the server with py-spy in an extra run (default: on, off with --quick)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    if add is not None:
        add(parser)
    ns = parser.parse_args()
    results = ns.results or (QUICK_RESULTS if ns.quick else RESULTS)
    profile = (not ns.quick) if ns.profile is None else bool(ns.profile)
    return Options(quick=ns.quick, results=results, profile=profile, keep=ns.keep, extra=ns)


def command_line(name: str) -> str:
    """The exact command that reproduces this run (the results file left out: it only says where to write)."""
    args: list[str] = []
    skip = False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--results":
            skip = True
            continue
        if arg.startswith("--results="):
            continue
        args.append(arg)
    return " ".join(["python -m", f"bench.{name}", *args])


@contextlib.contextmanager
def workdir(opts: Options, name: str) -> Iterator[Path]:
    """A temporary directory for server homes and logs; removed afterwards unless ``--keep``."""
    path = Path(tempfile.mkdtemp(prefix=f"xwbench-{name}-"))
    path.chmod(0o711)  # worker directories under it must be traversable by jobs running as nobody
    try:
        yield path
    finally:
        if opts.keep:
            print(f"[bench] kept {path}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(path, ignore_errors=True)


def log(msg: str) -> None:
    """Progress on stderr (stdout carries the JSON record)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- statistics ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass(frozen=True)
class Spread:
    """The median of several runs and their range (a wide range is reported, not hidden)."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(values), min(values), max(values), len(values))


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds, and the sample count."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": float(len(ms)),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else math.nan,
    }


# --- machine -----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Cores, CPU model (/proc/cpuinfo), memory, Python and kernel, and the load when the run started."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = math.nan
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / (1 << 20)
    return {
        "cores": os.cpu_count() or 0,
        "cpu": model,
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(m: dict[str, Any]) -> str:
    return f"{m.get('cores')} cores, {m.get('cpu')}, Python {m.get('python')}"


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def machine_busy() -> float:
    """CPU seconds all processes of the machine used so far (every core, idle and iowait left out)."""
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0))


def self_cpu() -> float:
    """CPU seconds (user + system) this process used so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --- records -----------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table in docs/BENCHMARKS.md."""

    figure: str
    value: float | None  # None: not measured (``note`` says why)
    unit: str
    spread: Spread | None = None
    baseline: float | None = None
    baseline_unit: str = ""
    baseline_label: str = ""  # what the baseline is, measured in the same run
    ratio: float | None = None
    ratio_label: str = ""  # what the ratio divides
    anchor: str = ""  # published or external reference point
    goal: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Record:
    """The outcome of one benchmark run."""

    benchmark: str
    title: str
    command: str
    quick: bool
    rows: list[Row]
    details: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    date: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    machine: dict[str, Any] = field(default_factory=machine)
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = _clean(asdict(self))
        return cleaned


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, floats are rounded to 4 significant decimals."""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def load_results(path: Path) -> dict[str, Any]:
    """The records of a results file, by benchmark name ({} if there is none)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def store(record: Record, path: Path) -> None:
    """Replace this benchmark's record in the results file (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = load_results(path)
    data[record.benchmark] = record.to_json()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(sorted(data.items())), indent=1) + "\n")
    os.replace(tmp, path)


def emit(record: Record, opts: Options, started: float) -> None:
    """Print the record as JSON and store it."""
    record.duration_s = time.perf_counter() - started
    print(json.dumps(record.to_json(), indent=1))
    store(record, opts.results)
    log(f"{record.benchmark}: done in {record.duration_s:.0f} s, stored in {opts.results}")


def not_measured(figure: str, reason: str, unit: str = "") -> Row:
    return Row(figure=figure, value=None, unit=unit, note=f"not measured: {reason}")


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def run_benchmark(
    name: str,
    doc: str,
    measure: Callable[[Options, Path], Coroutine[Any, Any, Record]],
    add: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """The whole command of one benchmark: parse options, measure in a work dir, emit the record."""
    opts = options(name, doc, add)
    started = time.perf_counter()
    with workdir(opts, name) as where:
        record = asyncio.run(measure(opts, where))
    emit(record, opts, started)
