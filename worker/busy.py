"""Step aside when the machine's owner is busy: measure the CPU that is not ours, decide pause/resume.

The owner's load is every core's busy time minus what this worker and everything below it (its jobs,
their sandboxes, whatever they forked) used, as a percentage of all cores. ``decide`` is the pure
rule: pause when the mean over ``busy_after`` seconds is above the threshold, resume when the mean
over ``calm_after`` seconds (measured since the pause) is at or below it. ``OwnerWatch`` samples and
tells the daemon; the daemon suspends and resumes the jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from common.config import write_private

logger = logging.getLogger(__name__)

SAMPLE_SECONDS = 2.0


@dataclass(frozen=True)
class BusyPolicy:
    """When the owner counts as busy: above ``threshold`` percent of all cores, sustained."""

    threshold: float
    busy_after: float = 10.0
    calm_after: float = 60.0
    sample_every: float = SAMPLE_SECONDS


@dataclass(frozen=True)
class Sample:
    """The owner's mean load (percent of all cores) from ``start`` to ``end`` (monotonic seconds)."""

    start: float
    end: float
    load: float


@dataclass(frozen=True)
class BusyState:
    """Paused or not, and the samples measured since the last change (what the next decision needs)."""

    paused: bool = False
    samples: tuple[Sample, ...] = ()
    mean_load: float | None = None  # the mean the last decision compared with the threshold

    def mean(self, window: float) -> float | None:
        """The time-weighted mean load over the last ``window`` seconds; None until samples cover it."""
        if not self.samples:
            return None
        now = self.samples[-1].end
        since = now - window
        if self.samples[0].start > since:
            return None
        total = weight = 0.0
        for s in self.samples:
            overlap = s.end - max(s.start, since)
            if overlap > 0:
                total += s.load * overlap
                weight += overlap
        return total / weight if weight > 0 else None


def decide(policy: BusyPolicy, state: BusyState, sample: Sample) -> BusyState:
    """The next state after one more sample (pure)."""
    window = policy.calm_after if state.paused else policy.busy_after
    since = sample.end - window
    kept = (*(s for s in state.samples if s.end > since), sample)
    # keep the oldest sample reaching back past the window: it tells whether the window is covered
    older = [s for s in state.samples if s.end <= since]
    if older and kept[0].start > since:
        kept = (older[-1], *kept)
    mean = BusyState(state.paused, kept).mean(window)
    if mean is not None and state.paused != (mean > policy.threshold):
        return BusyState(paused=not state.paused, mean_load=mean)  # the next window starts now
    return BusyState(state.paused, kept, mean)


@dataclass(frozen=True)
class CpuReading:
    """Cumulative CPU seconds: all cores busy, and this worker with everything below it."""

    at: float
    busy: float
    ours: float


def owner_load(before: CpuReading, after: CpuReading, cores: int) -> float:
    """Percent of all cores used by others between two readings, within 0..100 (pure)."""
    span = (after.at - before.at) * max(cores, 1)
    if span <= 0:
        return 0.0
    others = (after.busy - before.busy) - (after.ours - before.ours)
    return max(0.0, min(100.0, 100.0 * others / span))


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    # children_*: descendants already reaped, whose time moved into their parent's account
    return float(t.user + t.system + t.children_user + t.children_system)


def read_cpu() -> CpuReading:
    """Read the counters now (a scan of /proc: every few seconds, not more)."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    me = psutil.Process()
    ours = _cpu(me)
    with contextlib.suppress(psutil.Error):
        for p in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                ours += _cpu(p)
    return CpuReading(time.monotonic(), float(busy), ours)


class CpuMeter:
    """Each call: the owner's load since the previous call, as a Sample."""

    def __init__(self, read: Callable[[], CpuReading] = read_cpu, cores: int | None = None) -> None:
        self.read = read
        self.cores = cores or psutil.cpu_count() or os.cpu_count() or 1
        self.last = read()

    def __call__(self) -> Sample:
        now = self.read()
        sample = Sample(self.last.at, now.at, owner_load(self.last, now, self.cores))
        self.last = now
        return sample


# (paused, changed, load): called after every sample; load is the mean the decision was based on
OnSample = Callable[[bool, bool, float], None]


class OwnerWatch:
    """Samples the owner's load every few seconds and reports each decision to ``on_sample``."""

    def __init__(
        self, policy: BusyPolicy, on_sample: OnSample, meter: Callable[[], Sample] | None = None
    ) -> None:
        self.policy = policy
        self.on_sample = on_sample
        self.meter = meter
        self.state = BusyState()
        self.load = 0.0
        self.changed_at = time.time()
        self.event = asyncio.Event()  # set while paused

    @property
    def paused(self) -> bool:
        return self.state.paused

    async def run(self) -> None:
        """Sample until cancelled."""
        meter = self.meter if self.meter is not None else await asyncio.to_thread(CpuMeter)
        while True:
            await asyncio.sleep(self.policy.sample_every)
            try:
                sample = await asyncio.to_thread(meter)
            except (OSError, psutil.Error) as exc:  # a hiccup reading /proc: decide at the next sample
                logger.warning("cannot measure the owner's load: %s", exc)
                continue
            before = self.state.paused
            self.state = decide(self.policy, self.state, sample)
            self.load = self.state.mean_load if self.state.mean_load is not None else sample.load
            changed = self.state.paused != before
            if changed:
                self.changed_at = time.time()
                if self.state.paused:
                    self.event.set()
                else:
                    self.event.clear()
            self.on_sample(self.state.paused, changed, self.load)


STATUS_FILE = "status.json"


@dataclass(frozen=True)
class PauseStatus:
    """What ``xwworker status`` shows of a running worker: paused or not, since when, and why."""

    pid: int
    paused: bool
    since: float  # epoch seconds
    load: float
    threshold: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        if self.paused:
            return f"yes, since {when}: the owner's load was {self.load:.0f}% > {self.threshold:g}%"
        return f"no (the owner's load was {self.load:.0f}%, threshold {self.threshold:g}%, since {when})"


def save_status(work_dir: Path, status: PauseStatus) -> None:
    """Write WORKDIR/status.json atomically (readable: it holds no secret)."""
    write_private(work_dir / STATUS_FILE, json.dumps(dataclasses.asdict(status)) + "\n", mode=0o644)


def load_status(work_dir: Path) -> PauseStatus | None:
    """The last status a worker saved here, or None (none, unreadable, or its worker is gone)."""
    try:
        status = PauseStatus(**json.loads((work_dir / STATUS_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return status if psutil.pid_exists(status.pid) else None
