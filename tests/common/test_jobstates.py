"""common.jobstates: the job state machine, checked exhaustively against a table written out here.

The expected table is written from the module docstring and ARCHITECTURE.md ("Job states"), not read
from ``edges()``. Where the spec is silent the table pins the module's choice, marked "choice" below.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque

import pytest

from common.enums import JobStatus as S
from common.errors import Conflict, IllegalTransition
from common.jobstates import ACTIVE, FINAL, Step, Trigger, advance, allowed, edges

T = Trigger

EXPECTED: dict[S, dict[Trigger, S]] = {
    S.UNAVAILABLE: {T.INPUTS_READY: S.PENDING, T.HOLD: S.WAITING, T.FAIL: S.ERROR},
    S.PENDING: {
        T.CLAIM: S.RUNNING,
        T.REPLICATE: S.REPLICATING,  # choice: only a pending original is replicated
        T.HOLD: S.WAITING,
        T.FAIL: S.ERROR,
    },
    S.RUNNING: {
        T.COMPLETE: S.COMPLETED,
        T.RESULT_PENDING: S.DATAREQUEST,
        T.LOSE: S.PENDING,
        T.ABORT: S.PENDING,
        T.HOLD: S.WAITING,
        T.FAIL: S.ERROR,
    },
    S.DATAREQUEST: {
        T.COMPLETE: S.COMPLETED,
        T.LOSE: S.PENDING,  # choice: the worker holding the result vanished, run it again
        T.HOLD: S.WAITING,
        T.FAIL: S.ERROR,
    },
    # a validated job follows its replicas (server/validation/): results in and agreeing so far
    # (VALIDATING), disagreeing (INCONCLUSIVE), a quorum (COMPLETED), no quorum possible (ERROR)
    **{
        s: {
            T.VALIDATE: S.VALIDATING,
            T.DISAGREE: S.INCONCLUSIVE,
            T.COMPLETE: S.COMPLETED,
            T.HOLD: S.WAITING,
            T.FAIL: S.ERROR,
        }
        for s in (S.REPLICATING, S.VALIDATING, S.INCONCLUSIVE)
    },
    # choice: HOLD on an already held job is refused rather than a WAITING -> WAITING self-edge
    S.WAITING: {T.RELEASE: S.PENDING, T.FAIL: S.ERROR},
    # the one edge out of a final state: its result was accepted on the word of a host since caught lying
    S.COMPLETED: {T.RECHECK: S.VALIDATING},
    S.ERROR: {},
}
RETRYING = {T.LOSE, T.ABORT}
PAIRS = list(itertools.product(S, Trigger))


def test_enums_are_the_ones_this_table_covers() -> None:
    assert set(EXPECTED) == set(S)
    assert {t.value for t in Trigger} == {
        "inputs_ready",
        "claim",
        "complete",
        "result_pending",
        "fail",
        "lose",
        "abort",
        "hold",
        "release",
        "replicate",
        "validate",
        "disagree",
        "recheck",
    }


def test_final_and_active_sets() -> None:
    assert frozenset({S.COMPLETED, S.ERROR}) == FINAL
    assert frozenset({S.RUNNING, S.DATAREQUEST}) == ACTIVE


@pytest.mark.parametrize(("status", "trigger"), PAIRS, ids=[f"{s.value}-{t.value}" for s, t in PAIRS])
def test_every_pair(status: S, trigger: Trigger) -> None:
    target = EXPECTED[status].get(trigger)
    assert allowed(status, trigger) is (target is not None)
    if target is None:
        with pytest.raises(IllegalTransition) as info:
            advance(status, trigger, retry=3, max_retries=10)
        assert info.value.extra == {"job_status": status.value, "trigger": trigger.value}
        assert status.value in info.value.reason and trigger.value in info.value.reason
        return
    step = advance(status, trigger, retry=3, max_retries=10)
    assert step.status is target
    assert step.retry == (4 if trigger in RETRYING else 3)
    assert step.reason == ""


@pytest.mark.parametrize("status", sorted(FINAL))
@pytest.mark.parametrize("trigger", [t for t in Trigger if t is not T.RECHECK])
def test_final_states_accept_nothing_but_a_recheck(status: S, trigger: Trigger) -> None:
    assert not allowed(status, trigger)
    with pytest.raises(IllegalTransition):
        advance(status, trigger)


@pytest.mark.parametrize("status", [s for s in S if s not in (S.COMPLETED, S.ERROR)])
def test_any_non_final_can_fail(status: S) -> None:
    assert advance(status, T.FAIL) == Step(S.ERROR, 0)


@pytest.mark.parametrize(
    "status",
    [S.UNAVAILABLE, S.PENDING, S.RUNNING, S.DATAREQUEST, S.REPLICATING, S.VALIDATING, S.INCONCLUSIVE],
)
def test_hold_then_release_goes_to_pending(status: S) -> None:
    held = advance(status, T.HOLD, retry=2)
    assert held == Step(S.WAITING, 2)
    assert advance(held.status, T.RELEASE, retry=held.retry) == Step(S.PENDING, 2)


def test_illegal_transition_is_a_409_conflict() -> None:
    with pytest.raises(Conflict) as info:
        advance(S.PENDING, T.COMPLETE)
    assert isinstance(info.value, IllegalTransition)
    assert info.value.status == 409
    assert info.value.code == "illegal-transition"


def test_illegal_transition_problem_document_keeps_http_status() -> None:
    """RFC 9457: ``status`` of the problem document is the HTTP status; the job status goes elsewhere."""
    with pytest.raises(IllegalTransition) as info:
        advance(S.PENDING, T.COMPLETE)
    doc = info.value.problem()
    assert doc["status"] == 409
    assert doc["type"] == "urn:xwhep:problem:illegal-transition"
    assert "PENDING" in doc["detail"]


@pytest.mark.parametrize(
    ("retry", "max_retries", "status", "new_retry"),
    [
        (0, 10, S.PENDING, 1),
        (5, 10, S.PENDING, 6),
        (9, 10, S.PENDING, 10),  # retry becomes max_retries: still allowed
        (10, 10, S.ERROR, 11),  # retry would exceed max_retries: give up
        (11, 10, S.ERROR, 12),
        (0, 0, S.ERROR, 1),  # no retries at all
        (0, 1, S.PENDING, 1),
        (1, 1, S.ERROR, 2),
    ],
)
@pytest.mark.parametrize(
    ("status_from", "trigger"), [(S.RUNNING, T.LOSE), (S.RUNNING, T.ABORT), (S.DATAREQUEST, T.LOSE)]
)
def test_retry_boundary(
    status_from: S, trigger: Trigger, retry: int, max_retries: int, status: S, new_retry: int
) -> None:
    step = advance(status_from, trigger, retry=retry, max_retries=max_retries)
    assert step.status is status
    assert step.retry == new_retry
    if status is S.ERROR:
        assert step.reason == f"gave up after {max_retries} retries"
    else:
        assert step.reason == ""


def test_default_max_retries_is_ten() -> None:
    assert advance(S.RUNNING, T.LOSE, retry=9).status is S.PENDING
    assert advance(S.RUNNING, T.LOSE, retry=10).status is S.ERROR


def test_lost_job_loop_until_error() -> None:
    status, retry, history = S.PENDING, 0, []
    while status is not S.ERROR:
        status = advance(status, T.CLAIM, retry=retry).status
        step = advance(status, T.LOSE, retry=retry, max_retries=2)
        status, retry = step.status, step.retry
        history.append((status, retry))
    assert history == [(S.PENDING, 1), (S.PENDING, 2), (S.ERROR, 3)]


@pytest.mark.parametrize("trigger", [t for t in Trigger if t not in RETRYING])
def test_non_retrying_triggers_keep_retry(trigger: Trigger) -> None:
    for status in S:
        if trigger in EXPECTED[status]:
            assert advance(status, trigger, retry=7, max_retries=0).retry == 7


def test_happy_paths() -> None:
    path = [(T.INPUTS_READY, S.PENDING), (T.CLAIM, S.RUNNING), (T.COMPLETE, S.COMPLETED)]
    status = S.UNAVAILABLE
    for trigger, expected in path:
        status = advance(status, trigger).status
        assert status is expected
    status = advance(S.RUNNING, T.RESULT_PENDING).status
    assert status is S.DATAREQUEST
    assert advance(status, T.COMPLETE).status is S.COMPLETED


def test_edges_is_a_copy_equal_to_the_table() -> None:
    table = edges()
    expected = {(s, t): target for s, row in EXPECTED.items() for t, target in row.items()}
    assert table == expected
    table.clear()
    assert allowed(S.PENDING, T.CLAIM)
    assert edges() == expected


def _reachable(start: S) -> set[S]:
    seen, todo = {start}, deque([start])
    while todo:
        status = todo.popleft()
        for trigger in Trigger:
            if allowed(status, trigger):
                nxt = advance(status, trigger).status
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
    return seen


def test_every_state_reachable_and_every_job_can_finish() -> None:
    assert _reachable(S.UNAVAILABLE) == set(S)
    for status in S:
        assert _reachable(status) & FINAL, status


def test_step_is_frozen() -> None:
    step = advance(S.PENDING, T.CLAIM)
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.status = S.ERROR  # type: ignore[misc]
