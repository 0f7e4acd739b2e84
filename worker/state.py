"""The worker's bookkeeping as a pure state machine: events in, instructions out, no I/O, no clock.

The daemon (worker/daemon.py) turns what happens into events (a job assigned, a job ended, an upload
done or failed, a kill order, a tick) and carries out the instructions this module answers with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Phase(StrEnum):
    """Where one job held by this worker is."""

    RUNNING = "running"  # fetching its files or executing
    UPLOADING = "uploading"  # ended normally; results going up
    PENDING_UPLOAD = "pending_upload"  # an upload failed; retry later


@dataclass(frozen=True)
class Assigned:
    job: str


@dataclass(frozen=True)
class Ended:
    """The job's process is gone. ``ok``: exited by itself (results to upload); else a failure reason."""

    job: str
    ok: bool
    reason: str = ""
    killed: bool = False  # killed on the server's order: nothing to report


@dataclass(frozen=True)
class Uploaded:
    job: str


@dataclass(frozen=True)
class UploadFailed:
    job: str
    gone: bool = False  # the server no longer wants it (deleted, held, rescheduled)


@dataclass(frozen=True)
class KillOrder:
    job: str
    reason: str


@dataclass(frozen=True)
class Tick:
    now: float


Event = Assigned | Ended | Uploaded | UploadFailed | KillOrder | Tick


@dataclass(frozen=True)
class Upload:
    job: str


@dataclass(frozen=True)
class ReportFailure:
    job: str
    reason: str


@dataclass(frozen=True)
class ReportPending:
    job: str


@dataclass(frozen=True)
class Kill:
    job: str
    reason: str


@dataclass(frozen=True)
class Forget:
    """Drop the job's local files."""

    job: str


@dataclass(frozen=True)
class Stop:
    reason: str


Instruction = Upload | ReportFailure | ReportPending | Kill | Forget | Stop


@dataclass
class WorkerState:
    """Slots, the jobs held, and the pilot-job exit rules (max jobs, max idle time)."""

    slots: int
    max_jobs: int | None = None
    max_idle: float | None = None
    started_at: float = 0.0
    jobs: dict[str, Phase] = field(default_factory=dict)
    done: int = 0  # jobs ended (completed or failed) on this worker
    taken: int = 0  # jobs ever assigned
    last_busy: float = 0.0
    stopping: str | None = None
    pending_reported: set[str] = field(default_factory=set)  # DATAREQUEST already told to the server

    def __post_init__(self) -> None:
        self.last_busy = self.started_at

    def free_slots(self) -> int:
        """How many more jobs may be requested now."""
        if self.stopping is not None:
            return 0
        running = sum(1 for p in self.jobs.values() if p is Phase.RUNNING)
        free = self.slots - running
        if self.max_jobs is not None:
            free = min(free, self.max_jobs - self.taken)
        return max(free, 0)

    def held(self) -> list[str]:
        """Jobs to report in heartbeats (running, uploading or waiting to upload)."""
        return sorted(self.jobs)

    def handle(self, event: Event) -> list[Instruction]:
        """Apply one event; return what the daemon must do."""
        match event:
            case Assigned(job):
                self.jobs[job] = Phase.RUNNING
                self.taken += 1
                return []
            case Ended(job, ok, reason, killed):
                if job not in self.jobs:
                    return []
                if killed:
                    del self.jobs[job]
                    self.done += 1
                    return [Forget(job)]
                if ok:
                    self.jobs[job] = Phase.UPLOADING
                    return [Upload(job)]
                del self.jobs[job]
                self.done += 1
                return [ReportFailure(job, reason), Forget(job)]
            case Uploaded(job):
                self.pending_reported.discard(job)
                if self.jobs.pop(job, None) is None:
                    return []
                self.done += 1
                return [Forget(job)]
            case UploadFailed(job, gone):
                if job not in self.jobs:
                    return []
                if gone:
                    self.pending_reported.discard(job)
                    del self.jobs[job]
                    self.done += 1
                    return [Forget(job)]
                self.jobs[job] = Phase.PENDING_UPLOAD
                if job in self.pending_reported:
                    return []
                self.pending_reported.add(job)
                return [ReportPending(job)]
            case KillOrder(job, reason):
                if self.jobs.get(job) is Phase.RUNNING:
                    return [Kill(job, reason)]
                if job in self.jobs:  # finished here, but the server gave up on it: drop the results
                    del self.jobs[job]
                    self.pending_reported.discard(job)
                    return [Forget(job)]
                return []
            case Tick(now):
                return self._tick(now)
        raise TypeError(f"unknown event {event!r}")

    def retry_uploads(self) -> list[Instruction]:
        """Uploads to try again (called on the daemon's retry timer)."""
        out: list[Instruction] = []
        for job, phase in self.jobs.items():
            if phase is Phase.PENDING_UPLOAD:
                self.jobs[job] = Phase.UPLOADING
                out.append(Upload(job))
        return out

    def _tick(self, now: float) -> list[Instruction]:
        if self.jobs:
            self.last_busy = now
        if self.stopping is not None:
            return [Stop(self.stopping)] if not self.jobs else []
        if self.max_jobs is not None and self.taken >= self.max_jobs:
            self.stopping = f"ran {self.taken} job(s) (--max-jobs {self.max_jobs})"
        elif self.max_idle is not None and not self.jobs and now - self.last_busy >= self.max_idle:
            self.stopping = f"idle for {now - self.last_busy:.0f} s (--max-idle {self.max_idle:g})"
        if self.stopping is not None and not self.jobs:
            return [Stop(self.stopping)]
        return []

    def drain(self, reason: str) -> None:
        """Take no more work; stop once the jobs held are done."""
        if self.stopping is None:
            self.stopping = reason
