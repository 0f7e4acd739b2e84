"""The validator: replicas' results in, verdicts out, the validated job moved on.

A validated job (``jobs.policy`` set) never runs itself. Its replicas are jobs of their own
(server/validation/replicas.py) that workers claim and complete through the usual protocol, unaware of
each other (an attempt learns nothing of its siblings: their results are its job owner's data, their
digests are computed here, after the fact). When a replica ends, the status writer's observer wakes
the :class:`Validator`; it finds the replicas not judged yet (a partial index), and for each of their
jobs, in one transaction per batch:

1. computes each new result's canonical digest (file names and contents, not zip bytes);
2. groups the results that agree (bitwise on digests; other comparators on contents);
3. asks the pure :func:`server.validation.policy.decide` what to do: accept a group (the job's result
   becomes its first result's data, every other result is judged against it), wait for replicas still
   out, start more (the job shows INCONCLUSIVE when results disagree), or give up (ERROR, with why);
4. records each verdict as an event of the job and on the replica row (rejected results stay the
   owner's data), and updates the hosts' reliability; a host that loses trust has the jobs accepted on
   its word alone checked again (:func:`recheck`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.enums import JobStatus
from common.jobstates import FINAL, VALIDATION, Trigger
from common.schemas import ReplicaOut, Validation
from common.uri import new_uid
from server.authz import Actor, can_administer
from server.db.models import UNJUDGED, Attempt, Blob, Data, Event, Job, JobRef, table_of, utcnow
from server.scheduler.submission import INSERT_JOBS, insert_many
from server.scheduler.writer import Change, Move, Seen, event, insert_events, transition, transition_many
from server.store import DataStore
from server.validation import comparators, reliability
from server.validation.comparators import Verdict
from server.validation.digest import ResultContent, read_result
from server.validation.observers import note_started, note_verdicts
from server.validation.policy import Action, Decision, Result, Situation, decide
from server.validation.replicas import as_insert_row, replica_events, replica_rows

logger = logging.getLogger(__name__)

JOBS, JOB_REFS, EVENTS = table_of(Job), table_of(JobRef), table_of(Event)
BATCH = 64  # validated jobs judged per transaction
SWEEP = 5.0  # seconds between looks when nothing wakes the validator (a missed wake-up is not lost)
SETTLE = 0.05  # seconds a wake waits for the others of its moment
VALIDATION_VALUES = [s.value for s in VALIDATION]
OUTSTANDING = {JobStatus.PENDING, JobStatus.RUNNING, JobStatus.DATAREQUEST, JobStatus.WAITING}
# Verdicts of a replica (jobs.verdict): None until it ends, then one of these.
PENDING_VERDICT = "pending"  # its result is in, the quorum is not
CANCELLED = "cancelled"  # not needed any more (its job was decided or held), or it came too late
FAILED = "failed"  # it ended without a result
TRUSTED = "trusted"  # accepted alone, on its host's trust
OPEN_VERDICTS = (None, PENDING_VERDICT)  # a result not judged for good
# Through the partial index ix_jobs_unjudged (empty when nothing waits), never a scan of every finished
# job: SQLite's planner would rather take the status index, so it is told (PostgreSQL picks it itself).
_SQLITE_INDEX = "jobs INDEXED BY ix_jobs_unjudged"


def _unjudged(session: AsyncSession, columns: str, limit: int) -> Any:
    """Replicas that ended and wait to be judged (``columns`` of them, ``limit`` rows)."""
    sqlite = session.bind is not None and session.bind.dialect.name == "sqlite"
    source = _SQLITE_INDEX if sqlite else "jobs"
    return text(f"SELECT {columns} FROM {source} WHERE {UNJUDGED} LIMIT {int(limit)}")


_SET_VERDICT_ONLY = (
    update(JOBS).where(JOBS.c.uid == bindparam("w_uid")).values(verdict=bindparam("v_verdict"))
)
_SET_VERDICT = (
    update(JOBS)
    .where(JOBS.c.uid == bindparam("w_uid"))
    .values(verdict=bindparam("v_verdict"), digest=bindparam("v_digest"))
)


# --- starting replicas ----------------------------------------------------------------------------


async def spawn(
    session: AsyncSession, actor: Actor | None, job: Any, count: int, why: str, siblings: Sequence[Any] = ()
) -> list[str]:
    """Start ``count`` more replicas of ``job`` (a jobs row; ``siblings``: the rows of its replicas so
    far, whose OS/CPU class the new ones keep); their uids."""
    if count <= 0:
        return []
    classes = {s.hr_class for s in siblings if s.hr_class}
    policy = Validation(**job.validation)
    hr = next(iter(classes)) if classes else ("" if policy.homogeneous else None)
    uids = [new_uid() for _ in range(count)]
    rows = replica_rows(as_insert_row(job), uids, job.created, hr_class=hr)
    await insert_many(session, INSERT_JOBS, rows)
    refs = (await session.execute(select(JobRef.data_uid).where(JobRef.job_uid == job.uid))).scalars().all()
    if refs:
        await session.execute(insert(JOB_REFS), [{"job_uid": u, "data_uid": d} for u in uids for d in refs])
    started = event(actor, "work", job.uid, job.owner_uid, "replicate", reason=f"{why}: {', '.join(uids)}")
    await insert_events(session, [started, *replica_events(actor, rows)])
    note_started(session, count)  # workers wake once this commits
    return uids


async def start(session: AsyncSession, actor: Actor | None, uids: Iterable[str]) -> int:
    """Validated jobs among ``uids`` that just became PENDING (inputs arrived, released) go on with
    their replicas (REPLICATING); how many replicas were started. A job with no replica yet starts its
    first ones; one released with results already in hands them back to the validator (woken by the
    REPLICATE change: it reads their contents and starts what is still needed)."""
    rows = (
        await session.execute(
            select(JOBS).where(
                JOBS.c.uid.in_(list(uids)),
                JOBS.c.policy.is_not(None),
                JOBS.c.status == JobStatus.PENDING.value,
            )
        )
    ).all()
    moved = [r for r in rows if await transition(session, _seen(r), Trigger.REPLICATE, actor=actor)]
    if not moved:
        return 0
    replicas = await _replicas(session, [r.uid for r in moved])
    started = 0
    for job in moved:
        results = [
            r for r in replicas[job.uid] if r.status is JobStatus.COMPLETED and r.row.verdict in OPEN_VERDICTS
        ]
        if results:
            await session.execute(_SET_VERDICT_ONLY, [{"w_uid": r.uid, "v_verdict": None} for r in results])
        else:
            why = "replicas start"
            policy = Validation(**job.validation)
            started += len(
                await spawn(session, actor, job, policy.first_wave, why, [r.row for r in replicas[job.uid]])
            )
    return started


# --- reading results ------------------------------------------------------------------------------


MAX_JUDGED_BYTES = 256 << 20  # a result larger than this is not validated: its replica counts as failed


@dataclass(frozen=True)
class _Source:
    """Where a result's bytes are: inline in its blob row, or a file of the store."""

    inline: bytes | None
    path: Path | None


async def _sources(
    session: AsyncSession, store: DataStore | None, data_uids: Iterable[str]
) -> dict[str, _Source | str]:
    """Where each result data object's bytes are, or why it cannot be judged."""
    wanted = list(data_uids)
    if not wanted:
        return {}
    rows = await session.execute(
        select(Data.uid, Data.sha256, Data.size, Blob.inline)
        .join(Blob, Blob.sha256 == Data.sha256, isouter=True)
        .where(Data.uid.in_(wanted))
    )
    out: dict[str, _Source | str] = {uid: "its result data was deleted" for uid in wanted}
    for uid, sha, size, inline in rows:
        if (size or 0) > MAX_JUDGED_BYTES:
            out[uid] = f"its result is over {MAX_JUDGED_BYTES >> 20} MiB, too large to validate"
        elif inline is not None:
            out[uid] = _Source(inline, None)
        elif sha is not None and store is not None:
            out[uid] = _Source(None, store.path(sha))
        else:
            out[uid] = "its result has no content"
    return out


def _content(source: _Source, return_code: int | None) -> ResultContent | str:
    """A result as comparators see it (one that is not a readable zip is compared as its raw bytes),
    or why it cannot be read. Runs in a thread: unzipping is CPU work."""
    try:
        raw = source.inline if source.inline is not None else source.path.read_bytes() if source.path else b""
    except OSError as err:
        return f"its result cannot be read ({err.strerror or err})"
    try:
        files = read_result(raw, max_bytes=MAX_JUDGED_BYTES)
    except ValueError:
        files = {".raw": raw}
    return ResultContent(files, return_code)


# --- judging --------------------------------------------------------------------------------------


def _seen(row: Any) -> Seen:
    """What the status writer's compare-and-set expects of a jobs row read here."""
    status = JobStatus(row.status)
    return Seen(row.uid, status, row.retry, row.max_retries, row.owner_uid, row.attempt_uid, row.modified)


@dataclass
class _Replica:
    row: Any
    owner: str  # its host's owner: a quorum counts owners, not hosts
    digest: str | None = None
    content: ResultContent | None = None
    broken: str | None = None  # why its result cannot be judged (it then counts as failed)

    @property
    def uid(self) -> str:
        return str(self.row.uid)

    @property
    def status(self) -> JobStatus:
        return JobStatus(self.row.status)


async def _replicas(session: AsyncSession, parents: Sequence[str]) -> dict[str, list[_Replica]]:
    """The replicas of ``parents``, each with the owner its (last) attempt's host had when claimed."""
    attempts = table_of(Attempt)
    rows = await session.execute(
        select(JOBS, attempts.c.owner_uid.label("run_owner"))
        .join(attempts, attempts.c.uid == JOBS.c.attempt_uid, isouter=True)
        .where(JOBS.c.replica_of.in_(list(parents)))
        .order_by(JOBS.c.created)
    )
    out: dict[str, list[_Replica]] = {p: [] for p in parents}
    for r in rows:
        out[r.replica_of].append(_Replica(r, r.run_owner or f"host:{r.host_uid}", r.digest))
    return out


def _agree(a: _Replica, b: _Replica, policy: Validation, comparator: comparators.Comparator) -> Verdict:
    if policy.comparator == "bitwise":  # the digests say it all
        return Verdict.VALID if a.digest == b.digest else Verdict.INVALID
    assert a.content is not None and b.content is not None
    return comparators.compare(comparator, a.content, b.content, policy)


def _group(
    results: Sequence[_Replica], policy: Validation, comparator: comparators.Comparator
) -> list[list[_Replica]]:
    """Results that agree, in groups (a result joins the first group whose first result it matches)."""
    groups: list[list[_Replica]] = []
    for r in results:
        for g in groups:
            if _agree(g[0], r, policy, comparator) is Verdict.VALID:
                g.append(r)
                break
        else:
            groups.append([r])
    return groups


async def judge(
    session: AsyncSession,
    actor: Actor | None,
    parents: Sequence[str],
    store: DataStore | None,
    rng: Callable[[], float] = random.random,
) -> int:
    """Judge the validated jobs ``parents`` (the replicas of those not validating any more are marked
    as not needed); how many replicas were started. Reads and writes go in batches for all of them:
    one query for their replicas, one for the results' contents, one for the hosts' standings, one
    executemany per kind of write."""
    stmt = select(JOBS).where(JOBS.c.uid.in_(list(parents))).order_by(JOBS.c.uid)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)  # another process judges the rest
    jobs = (await session.execute(stmt)).all()
    replicas = await _replicas(session, [j.uid for j in jobs])
    batch = _Batch(actor)
    cases = [c for j in jobs if (c := _case(batch, j, replicas[j.uid])) is not None]
    await _load(session, store, cases)
    await _trust(session, cases)
    for case in cases:
        _decide(batch, case, rng())
    found = {j.uid for j in jobs}
    missing = [p for p in parents if p not in found]
    if missing:  # deleted (their replicas go with them), or locked by another process (it judges them)
        exist = set((await session.execute(select(JOBS.c.uid).where(JOBS.c.uid.in_(missing)))).scalars())
        orphans = await _replicas(session, [p for p in missing if p not in exist])
        batch.verdicts += [(r, CANCELLED) for rs in orphans.values() for r in _ended(rs)]
    return await batch.flush(session)


def _ended(replicas: Sequence[_Replica]) -> list[_Replica]:
    return [r for r in replicas if r.row.verdict is None and r.status in FINAL]


@dataclass
class _Case:
    """A validated job being judged, and its replicas sorted by what became of them."""

    job: Any
    policy: Validation
    comparator: comparators.Comparator
    replicas: Sequence[_Replica]
    done: list[_Replica]  # results in, not judged for good
    failed: list[_Replica]  # ended without a result
    outstanding: list[_Replica]  # queued or running
    made: int  # replicas that count as attempts (all but cancelled ones)
    trusted: bool = False  # adaptive: its one result comes from a host trusted for the app

    @property
    def new(self) -> list[_Replica]:
        return [r for r in self.done if r.row.verdict is None]


@dataclass
class _Batch:
    """The writes of one judging pass, done together by :meth:`flush`."""

    actor: Actor | None
    verdicts: list[tuple[_Replica, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    moves: dict[Trigger, list[Move]] = field(default_factory=dict)
    cancels: list[tuple[Any, str]] = field(default_factory=list)  # replica rows, why
    spawns: list[tuple[Any, int, str, list[Any]]] = field(default_factory=list)
    judged: dict[int, list[tuple[str, str, bool]]] = field(default_factory=dict)  # by trust_after

    def move(self, job: Any, trigger: Trigger, reason: str, values: dict[str, Any] | None = None) -> None:
        self.moves.setdefault(trigger, []).append(Move(_seen(job), reason, values))

    def verdict(self, job: Any, r: _Replica, verdict: str, *, event: bool = True) -> None:
        self.verdicts.append((r, verdict))
        if event:
            self.events.append(_verdict_event(self.actor, job, r, verdict))

    async def flush(self, session: AsyncSession) -> int:
        await _set_verdicts(session, self.verdicts)
        await insert_events(session, self.events)
        counted = Counter(v for _, v in self.verdicts if v != PENDING_VERDICT)
        if counted:
            note_verdicts(session, counted)
        for trigger, moves in self.moves.items():  # the jobs are locked: one executemany per shape
            await transition_many(session, moves, trigger, actor=self.actor, locked=True)
        for why in dict.fromkeys(w for _, w in self.cancels):
            await cancel(session, self.actor, [r for r, w in self.cancels if w == why], why)
        started = 0
        for job, count, why, siblings in self.spawns:
            started += len(await spawn(session, self.actor, job, count, why, siblings))
        for trust_after, judged in self.judged.items():
            outcomes = await reliability.record(session, judged, utcnow(), trust_after=trust_after)
            for host, app, out in outcomes:
                if out.lost_trust is not None:  # jobs accepted on its word, this pass's included
                    started += await recheck(session, self.actor, host, app, out.lost_trust)
        return started


def _case(batch: _Batch, job: Any, replicas: Sequence[_Replica]) -> _Case | None:
    """The job as the validator sees it, or None when there is nothing to decide (its replicas that
    ended are marked)."""
    status = JobStatus(job.status)
    if status is JobStatus.WAITING:  # held: failures are marked, results wait for the release
        for r in _ended(replicas):
            batch.verdict(job, r, FAILED if r.status is JobStatus.ERROR else PENDING_VERDICT, event=False)
        return None
    if status not in VALIDATION:  # decided or failed meanwhile: what ends now was not needed
        for r in _ended(replicas):
            batch.verdict(job, r, CANCELLED, event=False)
        return None
    policy = Validation(**job.validation)
    outstanding = [r for r in replicas if r.status in OUTSTANDING]
    try:
        comparator = comparators.load(policy.comparator)
    except ValueError as err:  # uninstalled since the job was submitted: nothing can judge it
        batch.move(job, Trigger.FAIL, f"cannot validate: {err}")
        batch.cancels += [(r.row, "job failed") for r in outstanding]
        return None
    return _Case(
        job,
        policy,
        comparator,
        replicas,
        done=[
            r
            for r in replicas
            if r.status is JobStatus.COMPLETED and r.row.verdict in (None, PENDING_VERDICT)
        ],
        failed=[
            r
            for r in replicas
            if (r.status is JobStatus.ERROR and r.row.verdict != CANCELLED) or r.row.verdict == FAILED
        ],
        outstanding=outstanding,
        made=sum(1 for r in replicas if r.row.verdict != CANCELLED),
    )


async def _load(session: AsyncSession, store: DataStore | None, cases: Sequence[_Case]) -> None:
    """Digests of new results, and contents where the comparator needs more than digests: one query
    for all the jobs, the reading and unzipping in a thread, one result at a time (a bitwise
    comparison keeps only the digest). A result that cannot be read makes its replica a failed one."""
    for c in cases:
        bitwise = c.policy.comparator == "bitwise"
        wanted = [r for r in c.done if not bitwise or r.digest is None]
        sources = await _sources(session, store, [r.row.result_uid for r in wanted])
        for r in wanted:
            source = sources[r.row.result_uid]
            content = (
                await asyncio.to_thread(_content, source, r.row.return_code)
                if isinstance(source, _Source)
                else source
            )
            if isinstance(content, str):
                r.broken = content
                continue
            r.digest = content.digest
            r.content = None if bitwise else content
        broken = [r for r in c.done if r.broken]
        if broken:
            c.done = [r for r in c.done if not r.broken]
            c.failed += broken


async def _trust(session: AsyncSession, cases: Sequence[_Case]) -> None:
    """Adaptive jobs with one result so far: whether its host is trusted for the app (one read)."""
    singles = [c for c in cases if c.policy.policy == "adaptive" and len(c.done) == 1 and c.made == 1]
    keys = [(c.done[0].row.host_uid, c.job.app_uid) for c in singles]
    standing = await reliability.standings(session, keys)
    now = utcnow()
    for c, key in zip(singles, keys, strict=True):
        c.trusted = standing[key].trusted(now)


def _decide(batch: _Batch, c: _Case, draw: float) -> None:
    job, status = c.job, JobStatus(c.job.status)
    groups = _group(c.done, c.policy, c.comparator)
    decision = decide(
        Situation(
            c.policy,
            [[Result(r.uid, r.owner) for r in g] for g in groups],
            len(c.outstanding),
            c.made,
            trusted_host=c.trusted,
            spot_draw=draw,
            failed=len(c.failed),
        )
    )
    for r in c.failed:
        if r.row.verdict in OPEN_VERDICTS:  # a run that ended without a result, or one that cannot be read
            batch.verdict(job, r, FAILED, event=r.broken is not None)
    if decision.action is Action.ACCEPT:
        by_uid = {r.uid: r for r in c.replicas}
        _accept(batch, c, decision, [by_uid[x.replica] for x in decision.accepted])
        return
    if decision.action is Action.GIVE_UP:
        for r in c.done:
            batch.verdict(job, r, Verdict.INCONCLUSIVE.value)
        batch.move(job, Trigger.FAIL, decision.reason)
        return
    for r in c.new:
        batch.verdict(job, r, PENDING_VERDICT)
    target = JobStatus.INCONCLUSIVE if decision.disagree else JobStatus.VALIDATING if c.done else status
    if target is not status:
        trigger = Trigger.DISAGREE if target is JobStatus.INCONCLUSIVE else Trigger.VALIDATE
        batch.move(job, trigger, decision.reason)
    if decision.action is Action.MORE:
        batch.spawns.append((job, decision.spawn, decision.reason, [r.row for r in c.replicas]))


def _accept(batch: _Batch, c: _Case, decision: Decision, group: Sequence[_Replica]) -> None:
    job, head = c.job, group[0]
    in_group = {r.uid for r in group}
    judged = batch.judged.setdefault(c.policy.trust_after, [])
    for r in c.done:
        if r.uid in in_group:
            verdict = TRUSTED if decision.trusted else Verdict.VALID.value
        else:
            v = _agree(head, r, c.policy, c.comparator)
            verdict = Verdict.INCONCLUSIVE.value if v is Verdict.INCONCLUSIVE else Verdict.INVALID.value
        batch.verdict(job, r, verdict)
        if verdict in (Verdict.VALID.value, Verdict.INVALID.value) and r.row.host_uid is not None:
            judged.append((r.row.host_uid, job.app_uid, verdict == Verdict.VALID.value))
    batch.move(
        job,
        Trigger.COMPLETE,
        f"{decision.reason}: result of replica {head.uid}",
        {
            "result_uid": head.row.result_uid,
            "return_code": head.row.return_code,
            "host_uid": head.row.host_uid,
        },
    )
    batch.cancels += [(r.row, f"not needed: job {job.uid} was validated") for r in c.outstanding]


async def _set_verdicts(session: AsyncSession, items: Sequence[tuple[_Replica, str]]) -> None:
    rows = [{"w_uid": r.uid, "v_verdict": v, "v_digest": r.digest} for r, v in items]
    if rows:
        await session.execute(_SET_VERDICT, rows)


def _verdict_event(actor: Actor | None, job: Any, r: _Replica, verdict: str) -> dict[str, Any]:
    what = f"not judged: {r.broken}" if r.broken else f"digest {r.digest}"
    return event(
        actor,
        "work",
        job.uid,
        job.owner_uid,
        "verdict",
        reason=f"replica {r.uid} on host {r.row.host_uid}: exit code {r.row.return_code}, {what}: {verdict}",
    )


async def replicas_out(
    session: AsyncSession, actor: Actor, jobs: Sequence[Any]
) -> dict[str, list[ReplicaOut]]:
    """The replicas of the validated ones among ``jobs`` (rows or objects), as the wire shows them, to
    those who control the job (its owner, its group's administrator, a super user): to anyone else
    who may read it, where its copies run and what their results' digests are would tell colluding
    hosts when they hold the whole quorum."""
    parents = [j.uid for j in jobs if getattr(j, "policy", None) is not None and can_administer(actor, j)]
    if not parents:
        return {}
    rows = await session.execute(
        select(
            JOBS.c.uid,
            JOBS.c.replica_of,
            JOBS.c.status,
            JOBS.c.host_uid,
            JOBS.c.digest,
            JOBS.c.verdict,
            JOBS.c.result_uid,
            JOBS.c.return_code,
        )
        .where(JOBS.c.replica_of.in_(parents))
        .order_by(JOBS.c.created)
    )
    out: dict[str, list[ReplicaOut]] = {p: [] for p in parents}
    for r in rows:
        out[r.replica_of].append(
            ReplicaOut(
                uid=r.uid,
                status=JobStatus(r.status),
                host=r.host_uid,
                digest=r.digest,
                verdict=r.verdict,
                result=r.result_uid,
                return_code=r.return_code,
            )
        )
    return out


async def outstanding(session: AsyncSession, job_uid: str) -> list[Any]:
    """The replicas of ``job_uid`` still queued or running (jobs rows)."""
    rows = await session.execute(
        select(JOBS).where(JOBS.c.replica_of == job_uid, JOBS.c.status.in_([s.value for s in OUTSTANDING]))
    )
    return list(rows.all())


async def cancel(session: AsyncSession, actor: Actor | None, replicas: Sequence[Any], why: str) -> None:
    """End replicas (jobs rows) still queued or running (their hosts drop them at the next heartbeat)."""
    if not replicas:
        return
    moved = await transition_many(session, [Move(_seen(r), why) for r in replicas], Trigger.FAIL, actor=actor)
    ended = [{"w_uid": r.uid, "v_verdict": CANCELLED} for r, m in zip(replicas, moved, strict=True) if m]
    if ended:  # one that finished meanwhile keeps its result for the validator
        await session.execute(_SET_VERDICT_ONLY, ended)


async def recheck(
    session: AsyncSession,
    actor: Actor | None,
    host: str,
    app: str,
    since: datetime,
) -> int:
    """Jobs accepted on ``host``'s trust alone since ``since`` are checked again: each gets another
    replica (the host's result stands only if another host agrees); how many."""
    parents = table_of(Job).alias("parent")
    stmt = (
        select(parents, JOBS.c.uid.label("trusted_replica"))
        .join(JOBS, JOBS.c.replica_of == parents.c.uid)
        .where(
            JOBS.c.verdict == TRUSTED,
            JOBS.c.host_uid == host,
            JOBS.c.app_uid == app,
            JOBS.c.completed >= since,
            parents.c.status == JobStatus.COMPLETED.value,
        )
    )
    count = 0
    for row in (await session.execute(stmt)).all():
        why = f"re-checking: host {host} lost the trust its result was accepted on"
        if await transition(session, _seen(row), Trigger.RECHECK, actor=actor, reason=why) is None:
            continue
        await session.execute(
            _SET_VERDICT_ONLY, [{"w_uid": row.trusted_replica, "v_verdict": PENDING_VERDICT}]
        )
        job = (await session.execute(select(JOBS).where(JOBS.c.uid == row.uid))).one()
        count += len(await spawn(session, actor, job, 1, why))
    return count


# --- the validator's loop -------------------------------------------------------------------------


class Validator:
    """Judges replicas as they end: woken by the status writer's observer, and every ``SWEEP`` seconds
    in case a wake-up was missed (another process ended them, or a pass failed).

    Every commit that ends a job wakes it, and most such jobs are not replicas: a wake waits ``SETTLE``
    seconds (the wakes of that moment become one) and looks on a reader connection whether any replica
    waits to be judged, so a grid without validation costs one indexed read per ``SETTLE`` at most, off
    the database's writer."""

    def __init__(self, rng: Callable[[], float] = random.random) -> None:
        self.wake = asyncio.Event()
        self.rng = rng

    def observe(self, changes: list[Change]) -> None:
        """The status writer's observer: a job that ended may be a replica, a job released may have
        results waiting."""
        if any(c.after in FINAL or c.trigger is Trigger.REPLICATE for c in changes):
            self.wake.set()

    async def run(
        self,
        sessions: async_sessionmaker[AsyncSession],
        store: DataStore,
        readers: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        """Judge until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), SWEEP)
            await asyncio.sleep(SETTLE)
            self.wake.clear()
            try:
                if await self.waiting(readers or sessions):
                    await self.pass_once(sessions, store)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("validator pass failed")
                await asyncio.sleep(1.0)

    @staticmethod
    async def waiting(sessions: async_sessionmaker[AsyncSession]) -> bool:
        """Whether any replica waits to be judged (one probe of the partial index)."""
        async with sessions() as session:
            return (await session.execute(_unjudged(session, "uid", 1))).first() is not None

    async def pass_once(self, sessions: async_sessionmaker[AsyncSession], store: DataStore) -> int:
        """Judge every job with replicas not judged yet, a batch per transaction; how many jobs."""
        judged = 0
        last: set[str] = set()
        while True:
            async with sessions() as session, session.begin():
                found = await session.execute(_unjudged(session, "DISTINCT replica_of", BATCH))
                parents = list(found.scalars())
                if not parents or set(parents) == last:  # none, or only jobs another process holds
                    return judged
                await judge(session, None, parents, store, self.rng)
            judged += len(parents)
            last = set(parents)
            if len(parents) < BATCH:
                return judged
