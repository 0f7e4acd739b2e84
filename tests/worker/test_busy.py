"""The owner-busy rule (worker.busy): the pure decision, the load arithmetic, the meter, the status file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from worker.busy import (
    BusyPolicy,
    BusyState,
    CpuMeter,
    CpuReading,
    PauseStatus,
    Sample,
    decide,
    load_status,
    owner_load,
    read_cpu,
    save_status,
)

POLICY = BusyPolicy(threshold=50, busy_after=10, calm_after=30, sample_every=2)


def feed(state: BusyState, loads: Sequence[float], start: float = 0.0, step: float = 2.0) -> list[BusyState]:
    """Apply one sample per load, each ``step`` seconds long; every state after each."""
    seen = []
    t = start
    for load in loads:
        state = decide(POLICY, state, Sample(t, t + step, load))
        seen.append(state)
        t += step
    return seen


def test_a_spike_shorter_than_busy_after_does_not_pause() -> None:
    states = feed(BusyState(), [10, 95, 95, 10, 10, 10, 10])
    assert not any(s.paused for s in states)


def test_sustained_load_pauses_once_the_window_is_covered() -> None:
    states = feed(BusyState(), [80] * 6)
    paused_at = next(i for i, s in enumerate(states) if s.paused)
    assert paused_at == 4  # five 2 s samples cover the 10 s window
    assert states[paused_at].samples == () and states[paused_at].mean_load == pytest.approx(80)


def test_the_mean_decides_not_each_sample() -> None:
    # a brief dip (the owner's compiler waiting on the disk) does not cancel a busy period
    states = feed(BusyState(), [90, 90, 20, 90, 90])
    assert states[-1].paused
    # and a mean at the threshold is not above it
    assert not feed(BusyState(), [50] * 10)[-1].paused


def test_resuming_needs_calm_after_seconds_measured_after_the_pause() -> None:
    paused = feed(BusyState(), [80] * 5)[-1]
    assert paused.paused
    # the calm window starts at the pause: 14 calm samples (28 s) are not enough, the 15th is
    states = feed(paused, [5] * 15, start=10)
    assert [s.paused for s in states] == [True] * 14 + [False]
    # a busy moment inside the calm window keeps it paused while the mean stays above
    states = feed(paused, [5] * 5 + [100] * 10 + [5] * 5, start=10)
    assert all(s.paused for s in states)


def test_owner_load_leaves_out_our_own_cpu_and_is_bounded() -> None:
    a = CpuReading(at=100.0, busy=1000.0, ours=50.0)
    b = CpuReading(at=110.0, busy=1016.0, ours=60.0)  # 16 core-seconds busy, 10 of them ours
    assert owner_load(a, b, cores=2) == pytest.approx(30.0)  # 6 of 20 core-seconds
    assert owner_load(a, CpuReading(110.0, 1030.0, 50.0), cores=1) == 100.0
    assert owner_load(a, CpuReading(110.0, 1001.0, 60.0), cores=2) == 0.0  # counters read a bit apart
    assert owner_load(a, a, cores=2) == 0.0


def test_meter_turns_readings_into_samples() -> None:
    readings = iter([CpuReading(0, 0, 0), CpuReading(2, 3, 1), CpuReading(4, 3, 1)])
    meter = CpuMeter(read=lambda: next(readings), cores=2)
    first, second = meter(), meter()
    assert (first.start, first.end) == (0, 2) and first.load == pytest.approx(50.0)
    assert (second.start, second.end, second.load) == (2, 4, 0.0)


def test_a_busy_child_of_ours_is_not_the_owner() -> None:
    # A CPU burner we started counts as ours (like a job), so it must not make the owner look busy.
    before = read_cpu()
    spin = "import time\nwhile time.process_time() < 0.5: pass"  # CPU time, however loaded the machine
    burner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        burner.wait(timeout=90)
        after = read_cpu()  # the burner is reaped: its time is in our children's account now
    finally:
        burner.kill()
    ours = after.ours - before.ours
    assert ours >= 0.45, f"the burner's CPU time should count as ours, got {ours:.2f} s"


def test_status_file_round_trip(tmp_path: Path) -> None:
    status = PauseStatus(os.getpid(), True, time.time(), 83.4, 50.0)
    save_status(tmp_path, status)
    assert load_status(tmp_path) == status
    assert "yes, since" in status.describe() and "83% > 50%" in status.describe()
    save_status(tmp_path, PauseStatus(2**22 + 12345, False, time.time(), 1.0, 50.0))  # no such process
    assert load_status(tmp_path) is None
    assert load_status(tmp_path / "nowhere") is None
