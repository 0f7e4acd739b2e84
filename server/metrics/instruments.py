"""The server's counters and histograms, fed by the status writer's observers and a few handlers.

What is counted here lives in this process's memory (or, under ``xwserver run --processes N``, in
prometheus-client's per-process files, summed at scrape: see server/metrics/exposition.py). Figures that
are database state — jobs by status, workers alive — are read from the database at scrape time instead
(server/metrics/database.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.registry import Collector

from common.enums import JobStatus
from common.jobstates import ACTIVE, FINAL, Trigger
from server.db.models import utcnow
from server.scheduler.writer import Change

PREFIX = "xwhep_"
# Wide buckets: a job may wait or run for 10 ms or for a day; 21 buckets cost one scan per observation.
DURATION_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
)  # fmt: skip
# A claim is usually answered within milliseconds; a parked work request waits up to its long-poll.
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, *DURATION_BUCKETS[:13])
COMPLETED, ERROR, RUNNING, DATAREQUEST = (
    JobStatus.COMPLETED,
    JobStatus.ERROR,
    JobStatus.RUNNING,
    JobStatus.DATAREQUEST,
)
CLAIM = Trigger.CLAIM
assert FINAL == {COMPLETED, ERROR} and ACTIVE == {RUNNING, DATAREQUEST}, "observe() spells these sets out"
OUTCOMES = {COMPLETED: "completed", ERROR: "error"}
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route of a request no route matched (its raw path is never a label)
# The validator's verdicts on replicas (server/validation/): a bounded label set, anything else is "other".
VERDICTS = ("valid", "invalid", "inconclusive", "trusted", "cancelled", "failed")
OTHER_VERDICT = "other"


class ServerMetrics:
    """One process's instruments (made unregistered: server/metrics/exposition.py chooses the registry)."""

    def __init__(self) -> None:
        self.submitted = Counter(
            PREFIX + "jobs_submitted", "Jobs submitted (POST /jobs and /jobs/batch).", registry=None
        )
        self.finished = Counter(
            PREFIX + "jobs_finished",
            "Jobs that reached a final status, by outcome.",
            ["outcome"],
            registry=None,
        )
        self.transitions = Counter(
            PREFIX + "job_transitions", "Job status changes, by trigger.", ["trigger"], registry=None
        )
        self.queue_wait = Histogram(
            PREFIX + "job_queue_wait_seconds",
            "From a job's (re)queueing as PENDING to its claim by a worker.",
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.run_time = Histogram(
            PREFIX + "job_run_seconds",
            "From a job's claim to its final status, for jobs that finish from RUNNING or DATAREQUEST.",
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.claim_wait = Histogram(
            PREFIX + "claim_wait_seconds",
            "From a work request's arrival to the claim that answers it with jobs (long-polls included).",
            buckets=CLAIM_BUCKETS,
            registry=None,
        )
        self.longpolls = Gauge(
            PREFIX + "longpolls_waiting",
            "Work requests parked waiting for a job (summed over live server processes).",
            multiprocess_mode="livesum",
            registry=None,
        )
        self.data_received = Counter(
            PREFIX + "data_received_bytes", "Data content received: uploads and results.", registry=None
        )
        self.data_sent = Counter(
            PREFIX + "data_sent_bytes",
            "Data content served: downloads and workers' job files.",
            registry=None,
        )
        self.requests = Counter(
            PREFIX + "http_requests",
            "HTTP requests answered, by method, route template and status class.",
            ["method", "route", "code"],
            registry=None,
        )
        self.verdicts = Counter(
            PREFIX + "validation_verdicts",
            "Verdicts of the result validator on replicas (runs of validated jobs), by verdict.",
            ["verdict"],
            registry=None,
        )
        self._completed = self.finished.labels(OUTCOMES[COMPLETED])
        self._errors = self.finished.labels(OUTCOMES[ERROR])
        self._triggers = {t: self.transitions.labels(t.value) for t in Trigger}
        self._requests: dict[tuple[str, str, str], Any] = {}  # bounded: methods x routes x classes
        # every verdict's series exists from the start (at 0), so that a rate over it is defined at once
        self._verdicts = {v: self.verdicts.labels(v) for v in (*VERDICTS, OTHER_VERDICT)}

    def collectors(self) -> list[Collector]:
        """Every instrument (what a single process registers for its scrapes)."""
        return [
            self.submitted,
            self.finished,
            self.transitions,
            self.queue_wait,
            self.run_time,
            self.claim_wait,
            self.longpolls,
            self.data_received,
            self.data_sent,
            self.requests,
            self.verdicts,
        ]

    # --- fed by the status writer (server/scheduler/writer.py), after each commit -------------------------

    def observe(self, changes: list[Change]) -> None:
        """The status writer's observer: outcomes, transitions, queue waits and run times.

        The times come from the changes themselves (``Change.since``, read with the job by the caller):
        no query here. Counters move once per run of equal triggers (a transaction's changes mostly share
        one), not once per job; enums are compared by identity (hashing a StrEnum member runs Python).
        """
        now = utcnow()
        trigger: Trigger | None = None
        same = completed = errors = 0
        for change in changes:
            if change.trigger is not trigger:
                if trigger is not None:
                    self._triggers[trigger].inc(same)
                trigger, same = change.trigger, 0
            same += 1
            after = change.after
            final = after is COMPLETED or after is ERROR
            if final:
                if after is COMPLETED:
                    completed += 1
                else:
                    errors += 1
            since = change.since
            if since is None:
                continue
            if trigger is CLAIM:
                self.queue_wait.observe(max((now - since).total_seconds(), 0.0))
            elif final and (change.before is RUNNING or change.before is DATAREQUEST):
                self.run_time.observe(max((now - since).total_seconds(), 0.0))
        if trigger is not None:
            self._triggers[trigger].inc(same)
        if completed:
            self._completed.inc(completed)
        if errors:
            self._errors.inc(errors)

    def jobs_submitted(self, count: int) -> None:
        """The status writer's submission observer: ``count`` jobs were stored."""
        self.submitted.inc(count)

    # --- fed by the validator (server/validation/observers.py), after each commit ------------------------

    def verdicts_judged(self, counts: Mapping[str, int]) -> None:
        """The verdict observer: how many replicas got each verdict in one committed transaction (a verdict
        outside ``VERDICTS`` counts as "other": no free text in a label)."""
        other = self._verdicts[OTHER_VERDICT]
        for verdict, n in counts.items():
            if n > 0:
                self._verdicts.get(verdict, other).inc(n)

    # --- fed by the HTTP layer -------------------------------------------------------------------------

    def request(self, method: str, route: str | None, status: int) -> None:
        """Count one answered request (``route``: the matched route's template, None if none matched)."""
        if route is None:
            route = UNMATCHED
            method = method if method in HTTP_METHODS else "other"  # no free text in a label
        key = (method, route, f"{status // 100}xx")
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(*key)
        child.inc()


def base64_size(text: str) -> int:
    """The number of bytes a base64 text decodes to (without decoding it)."""
    return len(text) // 4 * 3 - text[-2:].count("=")
