"""The worker's pure state machine: slots, job phases, kill orders, pilot-job exit rules."""

from __future__ import annotations

from worker.state import (
    Assigned,
    Ended,
    Forget,
    Kill,
    KillOrder,
    Phase,
    ReportFailure,
    ReportPending,
    Stop,
    Tick,
    Upload,
    Uploaded,
    UploadFailed,
    WorkerState,
)


def test_slots_fill_and_free() -> None:
    s = WorkerState(slots=2)
    assert s.free_slots() == 2
    s.handle(Assigned("a"))
    s.handle(Assigned("b"))
    assert s.free_slots() == 0
    assert s.handle(Ended("a", ok=True)) == [Upload("a")]
    assert s.free_slots() == 1, "an uploading job no longer takes a slot"
    assert s.held() == ["a", "b"], "but it is still reported in heartbeats"
    assert s.handle(Uploaded("a")) == [Forget("a")]
    assert s.held() == ["b"]
    assert s.done == 1


def test_failure_is_reported_and_forgotten() -> None:
    s = WorkerState(slots=1)
    s.handle(Assigned("a"))
    assert s.handle(Ended("a", ok=False, reason="wallclock 2 s exceeded")) == [
        ReportFailure("a", "wallclock 2 s exceeded"),
        Forget("a"),
    ]
    assert s.held() == []


def test_killed_job_is_not_reported() -> None:
    s = WorkerState(slots=1)
    s.handle(Assigned("a"))
    assert s.handle(KillOrder("a", "job deleted")) == [Kill("a", "job deleted")]
    assert s.handle(Ended("a", ok=False, reason="killed", killed=True)) == [Forget("a")]


def test_kill_order_for_finished_job_drops_results_and_unknown_is_ignored() -> None:
    s = WorkerState(slots=1)
    s.handle(Assigned("a"))
    s.handle(Ended("a", ok=True))
    s.handle(UploadFailed("a"))
    assert s.jobs["a"] is Phase.PENDING_UPLOAD
    assert s.handle(KillOrder("a", "job deleted")) == [Forget("a")]
    assert s.handle(KillOrder("zzz", "job deleted")) == []


def test_upload_failure_reports_pending_once_then_retries() -> None:
    s = WorkerState(slots=1)
    s.handle(Assigned("a"))
    s.handle(Ended("a", ok=True))
    assert s.handle(UploadFailed("a")) == [ReportPending("a")]
    assert s.retry_uploads() == [Upload("a")]
    assert s.handle(UploadFailed("a")) == [], "DATAREQUEST is reported once"
    assert s.retry_uploads() == [Upload("a")]
    assert s.handle(Uploaded("a")) == [Forget("a")]
    assert s.retry_uploads() == []


def test_upload_refused_for_good_forgets() -> None:
    s = WorkerState(slots=1)
    s.handle(Assigned("a"))
    s.handle(Ended("a", ok=True))
    assert s.handle(UploadFailed("a", gone=True)) == [Forget("a")]
    assert s.held() == []


def test_max_jobs_drains_then_stops() -> None:
    s = WorkerState(slots=4, max_jobs=2)
    assert s.free_slots() == 2
    s.handle(Assigned("a"))
    s.handle(Assigned("b"))
    assert s.free_slots() == 0
    assert s.handle(Tick(1.0)) == [], "still running: no stop yet"
    s.handle(Ended("a", ok=True))
    s.handle(Uploaded("a"))
    s.handle(Ended("b", ok=False, reason="x"))
    out = s.handle(Tick(2.0))
    assert len(out) == 1 and isinstance(out[0], Stop) and "max-jobs 2" in out[0].reason


def test_max_idle_stops_only_when_idle_long_enough() -> None:
    s = WorkerState(slots=1, max_idle=10.0, started_at=100.0)
    assert s.handle(Tick(105.0)) == []
    s.handle(Assigned("a"))
    assert s.handle(Tick(120.0)) == [], "busy"
    s.handle(Ended("a", ok=False, reason="x"))
    assert s.handle(Tick(125.0)) == [], "idle only 5 s since the last busy tick"
    out = s.handle(Tick(131.0))
    assert len(out) == 1 and isinstance(out[0], Stop) and "idle" in out[0].reason
    assert s.free_slots() == 0


def test_drain_waits_for_held_jobs() -> None:
    s = WorkerState(slots=2)
    s.handle(Assigned("a"))
    s.drain("signal")
    assert s.free_slots() == 0
    assert s.handle(Tick(1.0)) == []
    s.handle(Ended("a", ok=False, reason="x"))
    assert s.handle(Tick(2.0)) == [Stop("signal")]


def test_events_for_unknown_jobs_do_nothing() -> None:
    s = WorkerState(slots=1)
    assert s.handle(Ended("x", ok=True)) == []
    assert s.handle(Uploaded("x")) == []
    assert s.handle(UploadFailed("x")) == []
    assert s.done == 0
