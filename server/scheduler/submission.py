"""Submission: one job or ten thousand, checked first, then stored in one transaction.

``POST /jobs`` and ``POST /jobs/batch`` both come here, so the two cannot drift. The order is:

1. every job is checked before anything is written (all-or-nothing; the transaction is the backstop):
   each distinct application is read once and needs execute (a job's rights are the requested rights
   AND the app's); the distinct input, env and stdin data of the whole request are read in one query
   and must be readable by the submitter; a label must be unique among the submitter's jobs (those that
   exist and the request's others: one query; the database's unique index is the backstop, 409 either
   way); the first job that fails names the request: ``jobs[i]: ...``
   with ``index`` in the problem document (a single ``POST /jobs`` keeps its plain messages);
2. jobs, their data references and their submit events go in as three Core ``INSERT`` statements, each
   one executemany (``insert_many``): no ORM object per job, no flush between a job and its references.

A job whose data all have content is PENDING, otherwise UNAVAILABLE until the last one arrives
(``lifecycle.inputs_arrived``). A validated job (its own or its app's policy, server/validation/) is
REPLICATING instead of PENDING, and its first replicas go into the same insert. Waking workers is the
caller's, after the commit: ``Submitted.pending`` says for how many jobs (replicas, for those).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, Insert, TypeDecorator, bindparam, insert, select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import AppType, DataStatus, JobStatus
from common.errors import Conflict, NotFound, ValidationFailed, XWError
from common.rights import Perm, parse_mode
from common.schemas import JobIn, ReplicaOut, Validation
from server.authz import Actor, can_raw, default_rights, require, require_may_insert
from server.db.models import App, Data, Event, Job, JobRef, table_of, utcnow
from server.scheduler.matching import platforms_of
from server.scheduler.writer import event, note_submitted
from server.validation import comparators
from server.validation.replicas import effective as effective_policy
from server.validation.replicas import encoded, first_replicas, replica_events

# A batch's JSON body may be this large (every other route keeps settings.max_json_bytes, 1 MiB):
# 10,000 jobs with a few hundred bytes of arguments each are a few MiB; the bound keeps one request's
# parsing memory in check. Read per request, so a test can lower it.
MAX_BATCH_BYTES = 64 << 20
# uids per ``IN (...)``: SQLite and asyncpg both take at most ~32,000 bound parameters per statement.
IN_CHUNK = 10_000
# Jobs of one request get strictly increasing ``created`` times (1 µs apart, at most 10 ms for a full
# batch): jobs are listed and claimed by ``created``, so the request's order is the queue's order.
TICK = timedelta(microseconds=1)

JOBS, JOB_REFS, EVENTS = table_of(Job), table_of(JobRef), table_of(Event)
# How the database names the unique index of labels when it refuses a row (PostgreSQL, SQLite).
LABEL_INDEX_MARKS = ("ux_jobs_owner_label", "jobs.owner_uid, jobs.label")


class EncodedJSON(TypeDecorator[str]):
    """A JSON column's value as text this module encoded: the column's own type for the database (no
    cast to text on PostgreSQL), without SQLAlchemy's encoder. A job's lists are mostly empty, and the
    encoder would run for each of them, four per job."""

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


FEW_ROWS = 64  # below this, insert_many leaves the rows to SQLAlchemy's executemany
JSON_COLUMNS = ("env", "inputs", "listen_ports", "forward_addresses", "validation")
INSERT_JOBS = insert(JOBS).values({c: bindparam(f"{c}_json", type_=EncodedJSON()) for c in JSON_COLUMNS})


@dataclass(frozen=True)
class Submitted:
    """What a submission stored: the jobs as asked and their rows as inserted (request order), and how
    many are PENDING."""

    jobs: Sequence[JobIn]
    rows: list[dict[str, Any]]
    pending: int
    replica_rows: list[dict[str, Any]] = field(default_factory=list)  # validated jobs' first replicas

    @property
    def uids(self) -> list[str]:
        return [row["uid"] for row in self.rows]

    def job(self, index: int) -> Job:
        """Job ``index`` as a transient object (for its reply: nothing is read back)."""
        job, row = self.jobs[index], self.rows[index]
        columns = {k: v for k, v in row.items() if not k.endswith("_json")}
        forwards = [f.model_dump() for f in job.forward_addresses]
        lists = {"env": list(job.env), "inputs": list(job.inputs), "listen_ports": list(job.listen_ports)}
        policy = json.loads(row["validation_json"]) if row.get("validation_json") else None
        return Job(**columns, **lists, forward_addresses=forwards, validation=policy)

    def replicas(self, index: int) -> list[ReplicaOut]:
        """Job ``index``'s first replicas, as the wire shows them."""
        uid = self.rows[index]["uid"]
        return [
            ReplicaOut(uid=r["uid"], status=JobStatus(r["status"]))
            for r in self.replica_rows
            if r["replica_of"] == uid
        ]


@dataclass(frozen=True)
class _AppFacts:
    """What every job of one application takes from it (computed once per app, not per job)."""

    uid: str
    access_rights: int
    wallclock: int | None
    min_memory: int
    platforms: str
    submitted: str  # the reason of its jobs' submit events
    validation: dict[str, Any] | None  # its policy (common.schemas.Validation), if it has one


def _at(err: XWError, index: int, batch: bool) -> XWError:
    """``err`` as the refusal of job ``index`` of a batch (a single submission keeps its message)."""
    if not batch:
        return err
    return type(err)(f"jobs[{index}]: {err.reason}", **{**err.extra, "index": index})


def _chunks(uids: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for uid in uids:
        chunk.append(uid)
        if len(chunk) == IN_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def _apps(session: AsyncSession, actor: Actor, uids: Collection[str]) -> dict[str, _AppFacts | XWError]:
    """Each application's facts, or why the actor may not submit to it."""
    found: dict[str, App] = {}
    for chunk in _chunks(uids):
        # ORM objects here are one per distinct app (usually one per request), not one per job
        found.update(
            (a.uid, a) for a in (await session.execute(select(App).where(App.uid.in_(chunk)))).scalars()
        )
    verdicts: dict[str, _AppFacts | XWError] = {}
    for uid in uids:
        app = found.get(uid)
        if app is None:
            verdicts[uid] = NotFound(f"no application {uid}")
            continue
        try:
            require(actor, app, Perm.EXECUTE, "application")  # not readable: not found; readable: 403
        except XWError as err:
            verdicts[uid] = err
            continue
        if AppType(app.type) is AppType.BINARY and not app.binaries:
            verdicts[uid] = ValidationFailed(
                f"application {app.name!r} has no binary yet; add one with xwsendapp"
            )
            continue
        verdicts[uid] = _AppFacts(
            app.uid,
            app.access_rights,
            app.wallclock,
            app.min_memory,
            platforms_of(app),
            f"app {app.name}",
            app.validation,
        )
    return verdicts


async def _data(session: AsyncSession, actor: Actor, uids: Collection[str]) -> dict[str, bool | XWError]:
    """For each data uid: whether it has content (AVAILABLE), or why the actor may not use it."""
    cols = (Data.uid, Data.owner_uid, Data.group_uid, Data.access_rights, Data.status)
    rows: dict[str, tuple[str | None, str | None, int, str]] = {}
    for chunk in _chunks(uids):
        for uid, owner, group, mode, status in await session.execute(
            select(*cols).where(Data.uid.in_(chunk))
        ):
            rows[uid] = (owner, group, mode, status)
    verdicts: dict[str, bool | XWError] = {}
    for uid in uids:
        facts = rows.get(uid)
        if facts is None:
            verdicts[uid] = NotFound(f"no data {uid}")
            continue
        owner, group, mode, status = facts
        if not can_raw(actor, owner, group, mode, Perm.READ):
            verdicts[uid] = NotFound(f"no data {uid} visible to {actor.login}")
        else:
            verdicts[uid] = status == DataStatus.AVAILABLE.value
    return verdicts


async def _labels_taken(session: AsyncSession, owner: str, labels: Collection[str]) -> dict[str, str]:
    """Which of ``labels`` the owner's existing jobs have: label -> that job's uid."""
    taken: dict[str, str] = {}
    for chunk in _chunks(labels):
        stmt = select(Job.label, Job.uid).where(Job.owner_uid == owner, Job.label.in_(chunk))
        taken.update((label, uid) for label, uid in await session.execute(stmt) if label is not None)
    return taken


def _label_refusal(label: str, taken: dict[str, str], given: dict[str, int], batch: bool) -> Conflict | None:
    """Why a job may not have ``label``: another job of the owner has it, or an earlier job of the
    request; ``given`` (label -> index in the request) is the request's labels so far."""
    if label in taken:
        return Conflict(
            f"label {label!r} is taken by your job {taken[label]}: labels are unique among your jobs "
            "(choose another, or remove that job first)",
            label=label,
            job=taken[label],
        )
    if label in given:
        first = f"jobs[{given[label]}]" if batch else "another job of this request"
        return Conflict(
            f"label {label!r} is also given to {first}: labels are unique among your jobs", label=label
        )
    return None


def _refs(job: JobIn) -> Sequence[str]:
    """The data a job reads, each once (inputs, env, stdin)."""
    if not (job.inputs or job.env or job.stdin):
        return ()  # most jobs of a big batch: nothing to build
    return list(dict.fromkeys([*job.inputs, *job.env, *([job.stdin] if job.stdin else [])]))


def check_policy(policy: Validation, job: JobIn | None = None) -> None:
    """Refuse a policy the server cannot apply (an unknown comparator), or a job it cannot apply to."""
    try:
        comparators.load(policy.comparator)
    except ValueError as err:
        raise ValidationFailed(str(err)) from None
    if job is not None and (job.listen_ports or job.forward_addresses or job.expected_host):
        raise ValidationFailed(
            "a validated job runs on several hosts at once: it cannot listen on ports, forward addresses "
            "or expect one host (submit it with --xwreplica 1 or to an app without validation)"
        )


def _new_uids(n: int) -> list[str]:
    """``n`` random (version 4) uids like ``common.uri.new_uid``'s, from one read of the system's random
    source: ``uuid.uuid4`` costs a read and an object per uid, 5 times as much for a batch."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])  # RFC 4122 variant
    h = raw.hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-{h[i + 12 : i + 16]}-{h[i + 16 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, 32 * n, 32)
    ]


def _json(values: list[Any]) -> str:
    return json.dumps(values) if values else "[]"  # most jobs' lists are empty: no encoder call


async def submit(session: AsyncSession, actor: Actor, jobs: Sequence[JobIn], *, batch: bool) -> Submitted:
    """Check ``jobs`` and insert them, their data references and their submit events in ``session``'s
    transaction; the first job refused raises (naming its index when ``batch``) and nothing is written."""
    require_may_insert(actor, "jobs")
    refs = [_refs(job) for job in jobs]
    apps = await _apps(session, actor, dict.fromkeys(job.app for job in jobs))
    data = await _data(session, actor, dict.fromkeys(uid for job_refs in refs for uid in job_refs))
    labels = dict.fromkeys(job.label for job in jobs if job.label)
    taken = await _labels_taken(session, actor.uid, labels) if labels else {}
    given: dict[str, int] = {}  # label -> the request's job that has it

    default = default_rights(actor)
    modes: dict[str, int] = {}  # requested mode text -> bits, parsed once
    now = utcnow()
    job_rows: list[dict[str, Any]] = []
    replica_rows: list[dict[str, Any]] = []
    ref_rows: list[dict[str, str]] = []
    event_rows: list[dict[str, Any]] = []
    pending = 0
    submit_event = event(actor, "work", "", actor.uid, "submit")  # the shape; each job fills its own
    for i, (job, job_refs, uid) in enumerate(zip(jobs, refs, _new_uids(len(jobs)), strict=True)):
        app = apps[job.app]
        if isinstance(app, XWError):
            raise _at(app, i, batch)
        ready = True
        for ref in job_refs:
            verdict = data[ref]
            if isinstance(verdict, XWError):
                raise _at(verdict, i, batch)
            ready = ready and verdict
        if job.label:
            refusal = _label_refusal(job.label, taken, given, batch)
            if refusal is not None:
                raise _at(refusal, i, batch)
            given[job.label] = i
        if job.access_rights is None:
            mode = default
        elif (mode := modes.get(job.access_rights, -1)) < 0:
            mode = modes[job.access_rights] = parse_mode(job.access_rights)
        policy = effective_policy(app.validation, job.validation)
        if policy is not None:
            try:
                check_policy(policy, job)
            except XWError as err:
                raise _at(err, i, batch) from None
        status = JobStatus.PENDING.value if ready else JobStatus.UNAVAILABLE.value
        if ready and policy is not None:
            status = JobStatus.REPLICATING.value
        created = now + i * TICK
        # The same keys in every row (one executemany); columns that start NULL are left out.
        job_rows.append(
            {
                "uid": uid,
                "owner_uid": actor.uid,
                "group_uid": actor.group_uid,
                "access_rights": mode & app.access_rights,
                "created": created,
                "modified": created,
                "app_uid": app.uid,
                "args": job.args,
                "env_json": _json(job.env),
                "stdin_uid": job.stdin,
                "inputs_json": _json(job.inputs),
                "label": job.label,
                "job_group": job.group,
                "expected_host": job.expected_host,
                "wallclock": job.wallclock or app.wallclock,
                "max_retries": job.max_retries,
                "retry": 0,
                "listen_ports_json": _json(job.listen_ports),
                "forward_addresses_json": _json([f.model_dump() for f in job.forward_addresses]),
                "status": status,
                "platforms": app.platforms,
                "memory": job.memory if job.memory is not None else app.min_memory,
                "cpu_seconds": 0.0,
                "max_rss": 0,
                "net_in": 0,
                "net_out": 0,
                "policy": policy.policy if policy else None,
                "validation_json": encoded(policy),
                "replica_of": None,
                "hr_class": None,
            }
        )
        replicas = first_replicas(job_rows[-1], policy, created) if ready and policy else []
        replica_rows.extend(replicas)
        pending += len(replicas) if policy else ready
        ref_rows.extend(
            {"job_uid": r, "data_uid": d} for r in [uid, *(x["uid"] for x in replicas)] for d in job_refs
        )
        why = f"{app.submitted}, validated: {len(replicas)} replica(s) started" if replicas else app.submitted
        event_rows.append({**submit_event, "object_uid": uid, "to_status": status, "reason": why})

    try:
        await insert_many(session, INSERT_JOBS, job_rows + replica_rows)
    except IntegrityError as exc:
        if not any(mark in str(exc) for mark in LABEL_INDEX_MARKS):
            raise
        # checked above, so another transaction of the same owner took one meanwhile (PostgreSQL)
        raise Conflict(
            "a label of these jobs was taken meanwhile by another submission of yours; nothing was stored"
        ) from None
    await insert_many(session, insert(JOB_REFS), ref_rows)
    await insert_many(session, insert(EVENTS), event_rows + replica_events(actor, replica_rows))
    note_submitted(session, len(job_rows))  # the metrics count them once the transaction commits
    return Submitted(jobs, job_rows, pending, replica_rows)


async def insert_many(session: AsyncSession, stmt: Insert, rows: list[dict[str, Any]]) -> None:
    """``session.execute(stmt, rows)`` for thousands of rows, as one executemany of the driver itself.

    SQLAlchemy's executemany builds a parameter dict per row and passes every value through a lookup
    and a processor call: for job rows that was half of the server's time on a batch. Here the Core
    statement is compiled for the session's dialect as SQLAlchemy would, each row becomes a tuple in the
    statement's parameter order, and only the values whose type has a processor on this dialect (dates on
    SQLite) go through it — SQLAlchemy's own processor for that type, so the database receives what
    ``session.execute`` would send. A few rows (a single ``POST /jobs``), or a dialect with named
    parameters, take ``session.execute``.
    """
    if len(rows) < FEW_ROWS:  # compiling here (~1 ms) costs more than SQLAlchemy's cached path for a few
        if rows:
            await session.execute(stmt, rows)
        return
    conn = await session.connection()
    dialect = conn.dialect
    compiled = stmt.compile(dialect=dialect, column_keys=list(rows[0]))
    names = compiled.positiontup
    if not names or not rows[0].keys() >= set(names):
        await session.execute(stmt, rows)
        return
    pick = itemgetter(*names)
    # One converter per type (a job's created and modified share one), remembering its last value: rows
    # of a batch repeat values (modified is created, every event has the same time), converted once.
    converters: dict[int, list[Any]] = {}  # id(type) -> [last value, its conversion, processor]
    processors: list[tuple[int, list[Any]]] = []
    for i, name in enumerate(names):
        impl = compiled.binds[name].type.dialect_impl(dialect)
        process = impl.bind_processor(dialect)
        if process is not None:
            processors.append((i, converters.setdefault(id(impl), [_NOTHING, None, process])))
    params: list[tuple[Any, ...]] = []
    for row in rows:
        values = pick(row) if len(names) > 1 else (row[names[0]],)
        if processors:
            converted = list(values)
            for i, memo in processors:
                value = converted[i]
                if value is not memo[0]:
                    memo[0], memo[1] = value, memo[2](value)
                converted[i] = memo[1]
            values = tuple(converted)
        params.append(values)
    await conn.exec_driver_sql(compiled.string, params)


_NOTHING = object()  # no value converted yet
