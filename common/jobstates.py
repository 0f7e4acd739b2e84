"""The job state machine: one pure table of (status, trigger) -> status. No I/O, no clock.

UNAVAILABLE --inputs_ready--> PENDING --claim--> RUNNING --complete--> COMPLETED
RUNNING --result_pending--> DATAREQUEST --complete--> COMPLETED
RUNNING or DATAREQUEST --lose/abort--> PENDING   (retry += 1; past max_retries -> ERROR)
any non-final --hold--> WAITING --release--> PENDING;  any non-final --fail--> ERROR

A validated job never runs itself: its replicas (jobs of their own) do, and it follows their results:
PENDING --replicate--> REPLICATING --validate--> VALIDATING (results agree so far, more are awaited)
REPLICATING or VALIDATING --disagree--> INCONCLUSIVE (more replicas started) --validate--> VALIDATING
REPLICATING, VALIDATING or INCONCLUSIVE --complete--> COMPLETED (a quorum agreed), --fail--> ERROR
COMPLETED --recheck--> VALIDATING (it was accepted on the word of a host that has since been caught lying)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from common.enums import JobStatus as S
from common.errors import IllegalTransition


class Trigger(StrEnum):
    """What happened to a job."""

    INPUTS_READY = "inputs_ready"  # every input data object is AVAILABLE
    CLAIM = "claim"  # a worker claimed it
    COMPLETE = "complete"  # results uploaded, return code known
    RESULT_PENDING = "result_pending"  # finished, result upload pending or failed
    FAIL = "fail"  # unrecoverable error (bad input, app missing, policy)
    LOSE = "lose"  # the worker went silent (heartbeat timeout)
    ABORT = "abort"  # the worker gave the job back (shutdown, activation window)
    HOLD = "hold"  # owner, admin or policy holds it
    RELEASE = "release"  # a held job is released
    REPLICATE = "replicate"  # replicas were created for it
    VALIDATE = "validate"  # a replica's result is in and no quorum yet
    DISAGREE = "disagree"  # replicas' results disagree: more are needed
    RECHECK = "recheck"  # its accepted result rests on a host that lost trust: check it again


FINAL = frozenset({S.COMPLETED, S.ERROR})
ACTIVE = frozenset({S.RUNNING, S.DATAREQUEST})
VALIDATION = frozenset({S.REPLICATING, S.VALIDATING, S.INCONCLUSIVE})  # a validated job's replicas work

# Retrying triggers go back to PENDING and count a retry; the rest are plain edges.
_RETRYING = frozenset({Trigger.LOSE, Trigger.ABORT})

_TABLE: dict[tuple[S, Trigger], S] = {
    (S.UNAVAILABLE, Trigger.INPUTS_READY): S.PENDING,
    (S.PENDING, Trigger.CLAIM): S.RUNNING,
    (S.PENDING, Trigger.REPLICATE): S.REPLICATING,
    (S.RUNNING, Trigger.COMPLETE): S.COMPLETED,
    (S.RUNNING, Trigger.RESULT_PENDING): S.DATAREQUEST,
    (S.RUNNING, Trigger.LOSE): S.PENDING,
    (S.RUNNING, Trigger.ABORT): S.PENDING,
    (S.DATAREQUEST, Trigger.COMPLETE): S.COMPLETED,
    (S.DATAREQUEST, Trigger.LOSE): S.PENDING,
    (S.WAITING, Trigger.RELEASE): S.PENDING,
    (S.COMPLETED, Trigger.RECHECK): S.VALIDATING,
}
for _s in VALIDATION:
    _TABLE[(_s, Trigger.COMPLETE)] = S.COMPLETED
    _TABLE[(_s, Trigger.VALIDATE)] = S.VALIDATING
    _TABLE[(_s, Trigger.DISAGREE)] = S.INCONCLUSIVE
for _s in (S.UNAVAILABLE, S.PENDING, S.RUNNING, S.DATAREQUEST, *VALIDATION):
    _TABLE[(_s, Trigger.HOLD)] = S.WAITING
for _s in (S.UNAVAILABLE, S.PENDING, S.RUNNING, S.DATAREQUEST, *VALIDATION, S.WAITING):
    _TABLE[(_s, Trigger.FAIL)] = S.ERROR


@dataclass(frozen=True)
class Step:
    """The outcome of a transition."""

    status: S
    retry: int
    reason: str = ""


def advance(status: S, trigger: Trigger, *, retry: int = 0, max_retries: int = 10) -> Step:
    """Apply ``trigger`` to a job in ``status``; raise IllegalTransition if the table has no such edge.

    A lost or aborted job goes back to PENDING with ``retry + 1``; once that exceeds ``max_retries``
    it goes to ERROR instead, with a reason saying so.
    """
    target = _TABLE.get((status, trigger))
    if target is None:
        raise IllegalTransition(
            f"a {status.value} job cannot {trigger.value}", job_status=status.value, trigger=trigger.value
        )
    if trigger in _RETRYING:
        retry += 1
        if retry > max_retries:
            return Step(S.ERROR, retry, f"gave up after {max_retries} retries")
    return Step(target, retry)


def allowed(status: S, trigger: Trigger) -> bool:
    """Whether the table has an edge for (status, trigger)."""
    return (status, trigger) in _TABLE


def edges() -> dict[tuple[S, Trigger], S]:
    """A copy of the transition table (for docs and tests)."""
    return dict(_TABLE)
