"""Result validation: what replication costs and what it catches, with simulated workers of which 20%
lie, on SQLite.

Every scenario runs on a fresh ``xwserver run`` process with a fresh fleet of simulated workers, each
its own WORKER_USER, XWClient and enrolled host (so every host has an owner of its own, and a job's
replicas may go to any two of them), speaking xwworker's protocol as in bench/dispatch.py:
``POST /hosts/{h}/work?wait=0&max=S`` claims up to S jobs (a long-poll of ``IDLE_WAIT`` s when the last
claim found nothing), ``POST /hosts/{h}/results`` completes them with small result zips inline. No job
runs: an honest worker's result for a job with arguments A is a zip with ``stdout.txt`` = "answer A"
(return code 0); an *independent* liar answers random content, different every time; a *colluding*
liar answers the same wrong content ("answer A wrong") for the same job, so colluders agree. Jobs are
submitted with ``POST /jobs/batch``; the server makes the replicas, compares their results and accepts
one. When every submitted job is COMPLETED or ERROR, the outcome is read from the server's database:
a job whose accepted replica's digest (``jobs.digest``) is not the digest of the honest answer
(``canonical_digest`` of its files) is a wrong result accepted; its attempts are the ``attempts`` rows
of its replicas.

* **(a) independent liars, adaptive policy** (the defaults): a warm-up in which honest hosts earn trust
  (10 agreeing results in a row), then a measured phase: wrong results accepted (goal 0), attempts per
  job (goal <= 1.3 after the warm-up), liars quarantined, honest hosts trusted.
* **(b) colluding liars**: quorum 2, quorum 3 and adaptive, each beside the rate at which colluders
  drawn at random with probability f = 0.2 win the race to k agreeing results,
  P_k = f^k * sum_{j<k} C(k-1+j, j) (1-f)^j.
* **(c) server CPU per job**: an honest fleet, jobs without validation and jobs with quorum 2, in
  interleaved rounds on one server (the order swapped every round): server CPU per accepted job from
  the submission to the last verdict, medians of the rounds and of their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import datetime as dt
import hashlib
import io
import math
import random
import statistics
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from bench.dispatch import Fleet
from bench.harness import (
    Options,
    Record,
    Row,
    Spread,
    command_line,
    log,
    machine_busy,
    raise_nofile,
    ratio,
    run_benchmark,
    self_cpu,
)
from bench.profiling import start_profiler
from bench.servers import Server, add_user, running_server
from client.api import XWClient
from common.enums import AppType, UserRights
from common.errors import TooManyRequests, XWError
from common.schemas import AppIn, Binary, InlineResult, JobIn, Validation
from server.db.models import Attempt, Event, Host, HostReliability, Job
from server.validation.digest import canonical_digest, read_result

NAME = "validation"
SLOTS = 4  # jobs a simulated worker claims per request (a volunteer's free cores)
IDLE_WAIT = 1.0  # s: the long-poll of a worker whose last claim found nothing
BACKOFF_MAX = 8.0  # s: after an error answer, a worker waits 1 s, then twice as long each time, at most this
RESULT_TRIES = 5
POLL = 0.1  # s between two looks at the database for the jobs still open
LIAR_SHARE = 0.2
SEED = 20261126
HONEST, INDEPENDENT, COLLUDING = "honest", "independent liar", "colluding liar"
FINAL = ("COMPLETED", "ERROR")
ACCEPTED = ("valid", "trusted")
GOAL_WRONG = "no wrong result accepted from independent liars"
GOAL_ATTEMPTS = "<= 1.3 attempts per job once hosts are trusted (adaptive)"
NOTES = [
    "Quarantines shrink the effective share of liars over time: a liar whose results lose comparisons "
    "gets invalid verdicts, its error rate passes the threshold and it gets no more work of the app, so "
    "later races are drawn from a fleet with fewer liars. The static theory P_k(f = 0.2) assumes every "
    "result comes from a liar with probability 0.2 throughout, so measured rates can be below it; the "
    "colluders' observed share of attempts, and P_k at that share, are given beside it.",
    "Adaptive with colluders: a colluder's result accepted on its host's trust (unless spot-checked, "
    "rate 0.1) is wrong whatever the race; the untrusted part is the k = 2 race. Its theory line is that "
    "race, applied to the jobs decided by agreement, not on trust.",
    "A wrong result accepted: a COMPLETED job whose accepted replica (verdict valid or trusted, its result "
    "the job's) has a digest other than canonical_digest of the honest answer's files; cross-checked "
    "with the kind of host that made it.",
    f"A worker claims up to {SLOTS} replicas at once. The server queues each replica at a random point "
    "within 10 ms of its job's place, so one claim takes copies of unrelated jobs and two hosts seldom "
    "meet on more than one job at a time (queued side by side, as in an earlier run, the same pair of "
    f"hosts met on blocks of {SLOTS} jobs: colluders agreed a block at once, and honest hosts outvoted on a "
    "block were quarantined).",
    "Simulated workers run nothing: each completes what it claims at once with a result zip built for "
    "the job, so the rates are of the server's validation path (claims, results, verdicts), not of jobs.",
]


@dataclass(frozen=True)
class Sizes:
    workers: int
    warmup: int  # (a): jobs in which honest hosts earn trust
    measured: int  # (a): jobs measured after the warm-up
    collusion: int  # (b): jobs per policy
    cpu_jobs: int  # (c): jobs per run
    cpu_rounds: int  # (c): rounds (one run without validation and one with quorum 2 each)
    stall_s: float  # a phase that makes no progress for this long is a failure


FULL = Sizes(workers=200, warmup=3000, measured=2000, collusion=1500, cpu_jobs=1000, cpu_rounds=3, stall_s=60)
QUICK = Sizes(workers=10, warmup=100, measured=60, collusion=60, cpu_jobs=60, cpu_rounds=1, stall_s=20)


def race(f: float, k: int) -> float:
    """Probability that liars drawn with probability ``f`` reach ``k`` agreeing results first."""
    return f**k * sum(math.comb(k - 1 + j, j) * (1 - f) ** j for j in range(k))


# --- results the simulated workers send ----------------------------------------------------------------


def result_zip(stdout: str) -> bytes:
    """A results zip like a worker's (built at the time of sending: its timestamps vary)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("stdout.txt", stdout)
        zf.writestr("stderr.txt", "")
    return buf.getvalue()


def honest_answer(args: str) -> str:
    return f"answer {args}\n"


def answer(kind: str, args: str, rng: random.Random) -> str:
    if kind == HONEST:
        return honest_answer(args)
    if kind == COLLUDING:
        return f"answer {args} wrong\n"
    return f"answer {args} {rng.getrandbits(64):016x}\n"  # an independent liar: never the same twice


@cache
def honest_digest(args: str) -> str:
    """The canonical digest of the honest result of a job with arguments ``args``."""
    return canonical_digest(read_result(result_zip(honest_answer(args))), 0)


# --- the simulated fleet -----------------------------------------------------------------------------


@dataclass
class Tally:
    """What the simulated workers did so far (a phase's share: :meth:`since`)."""

    claims: int = 0
    empty_claims: int = 0
    attempts: int = 0
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    throttled: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)  # request: error

    def copy(self) -> Tally:
        return Tally(
            self.claims,
            self.empty_claims,
            self.attempts,
            self.by_kind.copy(),
            self.refused.copy(),
            self.throttled,
            self.errors.copy(),
        )

    def since(self, before: Tally) -> Tally:
        return Tally(
            self.claims - before.claims,
            self.empty_claims - before.empty_claims,
            self.attempts - before.attempts,
            self.by_kind - before.by_kind,
            self.refused - before.refused,
            self.throttled - before.throttled,
            self.errors - before.errors,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "claims": self.claims,
            "empty_claims": self.empty_claims,
            "attempts": self.attempts,
            "attempts_by_kind": dict(self.by_kind),
            "refused": dict(self.refused.most_common(5)),
            "refused_total": sum(self.refused.values()),
            "throttled": self.throttled,
            "errors": dict(self.errors.most_common(5)),
            "errors_total": sum(self.errors.values()),
        }


@dataclass
class Sim:
    """dispatch's Fleet (one WORKER_USER, client and host each, heartbeating) and what each host answers.

    Its workers work from enrolment to :meth:`aclose`, across the phases of a scenario: idle, each keeps
    a long-poll open, and jobs submitted for the next phase reach them at once."""

    fleet: Fleet
    kinds: list[str]
    rng: random.Random
    tally: Tally = field(default_factory=Tally)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @property
    def kind_of(self) -> dict[str, str]:
        return dict(zip(self.fleet.hosts, self.kinds, strict=True))

    @classmethod
    async def enrol(cls, server: Server, admin: XWClient, n: int, liar_kind: str | None) -> Sim:
        t0 = time.perf_counter()
        fleet = await Fleet.enrol(server, admin, n)
        rng = random.Random(SEED)
        liars = set(rng.sample(range(n), round(LIAR_SHARE * n))) if liar_kind else set()
        kinds = [liar_kind if i in liars and liar_kind else HONEST for i in range(n)]
        log(f"{n} simulated workers enrolled in {time.perf_counter() - t0:.1f} s ({len(liars)} liars)")
        sim = cls(fleet, kinds, rng)
        sim._task = asyncio.create_task(sim._drive())
        return sim

    def check(self) -> None:
        """Raise the error that stopped the workers, if they stopped."""
        if self._task is not None and self._task.done():
            self._task.result()
            raise RuntimeError("the simulated workers stopped")

    async def aclose(self) -> None:
        """Stop the workers, their requests cut short (the scenario is over, its server stops next)."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.fleet.aclose()

    async def _drive(self) -> None:
        """Every worker claims and completes jobs until stopped (what it claimed it always completes)."""
        stop, tally = self._stop, self.tally

        async def work(xw: XWClient, host: str, kind: str) -> None:
            idle = False
            backoff = 1.0
            while not stop.is_set():
                try:
                    got = await xw.claim_work(host, IDLE_WAIT if idle else 0, SLOTS)
                    backoff = 1.0
                except TooManyRequests as err:
                    tally.throttled += 1
                    await asyncio.sleep(err.retry_after or IDLE_WAIT)
                    continue
                except XWError as err:  # as xwworker: count it, back off, ask again
                    tally.errors[f"POST /work: {err.reason}"[:120]] += 1
                    await asyncio.sleep(backoff)
                    backoff = min(2 * backoff, BACKOFF_MAX)
                    continue
                tally.claims += 1
                idle = not got
                if not got:
                    tally.empty_claims += 1
                    continue
                results = []
                for a in got:
                    raw = result_zip(answer(kind, a.job.args, self.rng))
                    results.append(
                        InlineResult(
                            attempt=a.attempt,
                            return_code=0,
                            content=base64.b64encode(raw).decode(),
                            sha256=hashlib.sha256(raw).hexdigest(),
                        )
                    )
                for _ in range(RESULT_TRIES):
                    try:
                        reply = await xw.send_results(host, results)
                        break
                    except XWError as err:  # as xwworker: count it, back off, send them again
                        tally.errors[f"POST /results: {err.reason}"[:120]] += 1
                        await asyncio.sleep(backoff)
                        backoff = min(2 * backoff, BACKOFF_MAX)
                else:
                    raise RuntimeError(f"results of {len(results)} attempts refused {RESULT_TRIES} times")
                tally.attempts += len(got)
                tally.by_kind[kind] += len(got)
                for reason in reply.refused.values():
                    tally.refused[reason[:100]] += 1

        fleet = self.fleet
        await asyncio.gather(
            *(work(xw, h, k) for xw, h, k in zip(fleet.clients, fleet.hosts, self.kinds, strict=True))
        )


# --- the server's database, read directly -------------------------------------------------------------


@dataclass(frozen=True)
class Parent:
    uid: str
    status: str
    reason: str | None
    result: str | None
    args: str


@dataclass(frozen=True)
class Replica:
    uid: str
    parent: str
    status: str
    verdict: str | None
    digest: str | None
    host: str | None
    result: str | None
    reason: str | None


@dataclass
class Snapshot:
    """One application's jobs, replicas, attempts and host reliability at one moment."""

    parents: dict[str, Parent]
    replicas: dict[str, list[Replica]]  # by parent
    attempts: dict[str, list[tuple[str, str | None]]]  # job uid -> (host, result) per attempt
    reliability: list[dict[str, Any]]
    quarantine_hosts: set[str]  # hosts whose hosts.quarantine names the app


class Database:
    """The server's SQLite database, read-only, from this process (no server CPU spent on looking)."""

    def __init__(self, server: Server) -> None:
        path = server.home / "xwhep.db"
        self.engine: Engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")

    def close(self) -> None:
        self.engine.dispose()

    def final_parents(self, app: str) -> int:
        """Jobs of ``app`` (replicas left out) that are COMPLETED or ERROR."""
        stmt = select(func.count()).where(Job.app_uid == app, Job.replica_of.is_(None), Job.status.in_(FINAL))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def attempts(self, app: str) -> int:
        """Attempts (claims) at jobs of ``app``, replicas included."""
        stmt = select(func.count()).select_from(Attempt).join(Job, Job.uid == Attempt.job_uid)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt.where(Job.app_uid == app)).scalar_one())

    def snapshot(self, app: str) -> Snapshot:
        with self.engine.connect() as conn:
            parents: dict[str, Parent] = {}
            replicas: dict[str, list[Replica]] = collections.defaultdict(list)
            cols = (
                Job.uid,
                Job.status,
                Job.status_reason,
                Job.result_uid,
                Job.args,
                Job.replica_of,
                Job.verdict,
                Job.digest,
                Job.host_uid,
            )
            for r in conn.execute(select(*cols).where(Job.app_uid == app)):
                if r.replica_of is None:
                    parents[r.uid] = Parent(r.uid, r.status, r.status_reason, r.result_uid, r.args)
                else:
                    replicas[r.replica_of].append(
                        Replica(
                            r.uid,
                            r.replica_of,
                            r.status,
                            r.verdict,
                            r.digest,
                            r.host_uid,
                            r.result_uid,
                            r.status_reason,
                        )
                    )
            attempts: dict[str, list[tuple[str, str | None]]] = collections.defaultdict(list)
            stmt = (
                select(Attempt.job_uid, Attempt.host_uid, Attempt.result_uid)
                .join(Job, Job.uid == Attempt.job_uid)
                .where(Job.app_uid == app)
            )
            for a in conn.execute(stmt):
                attempts[a.job_uid].append((a.host_uid, a.result_uid))
            rel = [
                dict(r._mapping)
                for r in conn.execute(select(HostReliability.__table__).where(HostReliability.app_uid == app))
            ]
            quarantined = {
                h.uid for h in conn.execute(select(Host.uid, Host.quarantine)) if app in (h.quarantine or {})
            }
        return Snapshot(parents, dict(replicas), dict(attempts), rel, quarantined)

    def events(self, uids: Iterable[str]) -> list[dict[str, Any]]:
        stmt = (
            select(Event.at, Event.object_uid, Event.action, Event.from_status, Event.to_status, Event.reason)
            .where(Event.object_uid.in_(list(uids)))
            .order_by(Event.id)
        )
        with self.engine.connect() as conn:
            return [
                {k: str(v) if v is not None else None for k, v in r._mapping.items()}
                for r in conn.execute(stmt)
            ]

    def spot_checks(self) -> int:
        """Events that say a trusted host's result was sent for a check."""
        stmt = select(func.count()).where(Event.reason.like("%spot check%"))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())


# --- what happened -------------------------------------------------------------------------------------


def accepted_replica(snap: Snapshot, p: Parent) -> Replica | None:
    """The replica whose result the job took (verdict valid or trusted, its result the job's)."""
    for r in snap.replicas.get(p.uid, []):
        if r.verdict in ACCEPTED and r.result is not None and r.result == p.result:
            return r
    return None


def host_of(snap: Snapshot, r: Replica) -> str | None:
    """The host that made a replica's result: the replica's host, else the attempt that sent it."""
    if r.host:
        return r.host
    for host, result in snap.attempts.get(r.uid, []):
        if result is not None and result == r.result:
            return host
    return None


def phase_stats(snap: Snapshot, uids: Sequence[str], kind_of: dict[str, str]) -> dict[str, Any]:
    """Outcome of the jobs ``uids``: completed, failed, wrong results accepted, attempts, verdicts."""
    out: dict[str, Any] = {"jobs": len(uids)}
    completed = errors = still_open = wrong = wrong_trusted = liar_accepted = replicas = attempts = 0
    trusted_accepts = no_accepted = 0
    verdicts: collections.Counter[str] = collections.Counter()
    by_kind: collections.Counter[str] = collections.Counter()
    accepted_kind: collections.Counter[str] = collections.Counter()
    error_reasons: collections.Counter[str] = collections.Counter()
    examples: list[dict[str, Any]] = []
    for uid in uids:
        p = snap.parents.get(uid)
        if p is None:
            still_open += 1
            continue
        reps = snap.replicas.get(uid, [])
        replicas += len(reps)
        for r in reps:
            verdicts[r.verdict or "(none)"] += 1
            for host, _ in snap.attempts.get(r.uid, []):
                attempts += 1
                by_kind[kind_of.get(host, "unknown host")] += 1
        if p.status == "ERROR":
            errors += 1
            error_reasons[(p.reason or "")[:160]] += 1
            continue
        if p.status != "COMPLETED":
            still_open += 1
            continue
        completed += 1
        acc = accepted_replica(snap, p)
        if acc is None:
            no_accepted += 1
            if len(examples) < 5:
                examples.append({"job": uid, "problem": "COMPLETED without an accepted replica"})
            continue
        kind = kind_of.get(host_of(snap, acc) or "", "unknown host")
        accepted_kind[kind] += 1
        trusted_accepts += acc.verdict == "trusted"
        liar_accepted += kind != HONEST
        if acc.digest != honest_digest(p.args):
            wrong += 1
            wrong_trusted += acc.verdict == "trusted"
            if len(examples) < 5:
                examples.append(
                    {
                        "job": uid,
                        "problem": "wrong result accepted",
                        "accepted": acc.uid,
                        "verdict": acc.verdict,
                        "host_kind": kind,
                        "replicas": [(r.uid, r.status, r.verdict, kind_of.get(r.host or "")) for r in reps],
                    }
                )
    total_attempts = sum(by_kind.values())
    liar_attempts = total_attempts - by_kind.get(HONEST, 0)
    out.update(
        completed=completed,
        error=errors,
        open=still_open,
        wrong_accepted=wrong,
        wrong_accepted_on_trust=wrong_trusted,
        accepted_from_liar_hosts=liar_accepted,  # cross-check of wrong_accepted by who made the result
        accepted_on_trust=trusted_accepts,
        completed_without_accepted_replica=no_accepted,
        wrong_rate=wrong / completed if completed else math.nan,
        attempts=attempts,
        attempts_per_job=attempts / len(uids) if uids else math.nan,
        replicas_per_job=replicas / len(uids) if uids else math.nan,
        liar_share_of_attempts=liar_attempts / total_attempts if total_attempts else math.nan,
        attempts_by_kind=dict(by_kind),
        accepted_by_kind=dict(accepted_kind),
        verdicts=dict(verdicts),
        error_reasons=dict(error_reasons.most_common(5)),
        examples=examples,
    )
    return out


def by_thirds(snap: Snapshot, uids: Sequence[str], kind_of: dict[str, str]) -> list[dict[str, Any]]:
    """The liars' share of attempts and the wrong results accepted in each third of the jobs, in the
    order they were submitted (and queued): how the liars' weight changed as they were quarantined."""
    n = len(uids)
    out = []
    for i in range(3):
        part = phase_stats(snap, uids[i * n // 3 : (i + 1) * n // 3], kind_of)
        out.append(
            {
                "jobs": part["jobs"],
                "liar_share_of_attempts": part["liar_share_of_attempts"],
                "wrong_accepted": part["wrong_accepted"],
                "wrong_rate": part["wrong_rate"],
                "attempts_per_job": part["attempts_per_job"],
            }
        )
    return out


def trust_stats(snap: Snapshot, kind_of: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per kind of host: how many, how many trusted and quarantined for the app, their error rates."""
    now = dt.datetime.now(dt.UTC)
    unknown = "unknown host"
    kinds = sorted(set(kind_of.values()) | {kind_of.get(r["host_uid"], unknown) for r in snap.reliability})
    per: dict[str, dict[str, Any]] = {
        kind: {
            "hosts": sum(k == kind for k in kind_of.values()),
            "with_record": 0,
            "trusted": 0,
            "quarantined": 0,
            "quarantined_now": 0,
            "in_hosts_quarantine": 0,
        }
        for kind in kinds
    }
    rates: dict[str, list[float]] = collections.defaultdict(list)
    reasons: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for row in snap.reliability:
        kind = kind_of.get(row["host_uid"], unknown)
        s = per[kind]
        s["with_record"] += 1
        s["trusted"] += row["trusted_since"] is not None
        rates[kind].append(float(row["error_rate"]))
        until = row["quarantined_until"]
        if until is not None:
            s["quarantined"] += 1
            if until.tzinfo is None:
                until = until.replace(tzinfo=dt.UTC)
            s["quarantined_now"] += until > now
            reasons[kind][(row["reason"] or "")[:120]] += 1
    for host in snap.quarantine_hosts:
        per.setdefault(kind_of.get(host, unknown), {"hosts": 0}).setdefault("in_hosts_quarantine", 0)
        per[kind_of.get(host, unknown)]["in_hosts_quarantine"] += 1
    for kind, s in per.items():
        s["error_rate_median"] = statistics.median(rates[kind]) if rates[kind] else math.nan
        s["quarantine_reasons"] = dict(reasons[kind].most_common(3))
    return per


# --- running one phase -----------------------------------------------------------------------------------


async def run_phase(
    server: Server,
    sim: Sim,
    db: Database,
    submitter: XWClient,
    app: str,
    jobs: Sequence[JobIn],
    label: str,
    stall_s: float,
    profile: Path | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """Submit ``jobs`` and wait, while the fleet works, until every one is COMPLETED or ERROR; their uids,
    the phase's costs (server CPU from the submission to the last verdict)."""
    loop = asyncio.get_running_loop()
    before = await asyncio.to_thread(db.final_parents, app)
    attempts0 = await asyncio.to_thread(db.attempts, app)
    target = before + len(jobs)
    prof = await start_profiler(server.pid, profile) if profile else None
    tally0 = sim.tally.copy()
    srv0, cli0, all0, t0 = server.sample(), self_cpu(), machine_busy(), time.perf_counter()
    uids = await submitter.submit_many(jobs)
    srv_submitted, submit_s = server.sample(), time.perf_counter() - t0
    done, last_change = before, loop.time()
    while True:
        sim.check()
        now_done = await asyncio.to_thread(db.final_parents, app)
        if now_done >= target:
            break
        if now_done != done:
            done, last_change = now_done, loop.time()
        elif loop.time() - last_change > stall_s:
            diag = await asyncio.to_thread(stall_report, db, app, uids, sim.kind_of)
            log(f"{label}: stalled: {diag}")
            raise RuntimeError(
                f"{label}: {target - now_done} of {len(jobs)} jobs not COMPLETED nor ERROR after "
                f"{stall_s:.0f} s without progress: {diag}"
            )
        await asyncio.sleep(POLL)
    elapsed = time.perf_counter() - t0
    srv1, cli1, all1 = server.sample(), self_cpu(), machine_busy()
    tally = sim.tally.since(tally0)
    summary = await prof.stop() if prof else None
    attempts = await asyncio.to_thread(db.attempts, app) - attempts0
    server_cpu = srv1.cpu - srv0.cpu
    n = len(jobs)
    costs: dict[str, Any] = {
        "jobs": n,
        "elapsed_s": elapsed,
        "submit_s": submit_s,
        "jobs_per_s": n / elapsed,
        "server_cpu_s": server_cpu,
        "server_cpu_ms_per_job": 1000 * server_cpu / n,
        "attempts": attempts,  # claims in the database (the workers' tally may miss the last replies)
        "attempts_per_job": attempts / n,
        "server_cpu_ms_per_attempt": 1000 * server_cpu / attempts if attempts else math.nan,
        "server_submit_cpu_ms_per_job": 1000 * (srv_submitted.cpu - srv0.cpu) / n,
        "server_cpu_busy": server_cpu / elapsed,
        "client_cpu_busy": (cli1 - cli0) / elapsed,
        "others_cpu_busy": max(0.0, (all1 - all0) - server_cpu - (cli1 - cli0)) / elapsed,
        "workers": tally.as_dict(),
        **({"profile": summary} if summary else {}),
    }
    log(
        f"{label}: {n} jobs in {elapsed:.1f} s, {attempts} attempts "
        f"({attempts / n:.2f}/job), server {costs['server_cpu_ms_per_job']:.2f} ms CPU/job"
        + (f", {sum(tally.refused.values())} results refused" if tally.refused else "")
        + (f", {sum(tally.errors.values())} error answers: {dict(tally.errors)}" if tally.errors else "")
    )
    return uids, costs


def stall_report(db: Database, app: str, uids: Sequence[str], kind_of: dict[str, str]) -> dict[str, Any]:
    """What the jobs still open look like: statuses, their replicas and verdicts, the event log of one."""
    snap = db.snapshot(app)
    wanted = set(uids)
    parents = collections.Counter(p.status for u, p in snap.parents.items() if u in wanted)
    reps = collections.Counter(
        f"{r.status}/{r.verdict}" for u, rs in snap.replicas.items() if u in wanted for r in rs
    )
    stuck = [p for u, p in snap.parents.items() if u in wanted and p.status not in FINAL][:5]
    examples = [
        {
            "job": p.uid,
            "status": p.status,
            "reason": p.reason,
            "replicas": [
                (r.uid, r.status, r.verdict, kind_of.get(r.host or "", r.host), r.reason)
                for r in snap.replicas.get(p.uid, [])
            ],
        }
        for p in stuck
    ]
    events = db.events([stuck[0].uid, *(r.uid for r in snap.replicas.get(stuck[0].uid, []))]) if stuck else []
    return {"parents": dict(parents), "replicas": dict(reps), "stuck": examples, "events_of_first": events}


def batch(app: str, prefix: str, n: int, validation: Validation | None = None) -> list[JobIn]:
    return [JobIn(app=app, args=f"{prefix}{i}", validation=validation) for i in range(n)]


async def register_app(xw: XWClient, where: Path, name: str, validation: Validation | None) -> str:
    """A script application (its jobs never run here: the workers are simulated), with ``validation``."""
    path = where / f"{name}.sh"
    path.write_text('#!/bin/sh\necho "answer $*"\n')
    data = await xw.send_file(path, access_rights="1700")
    app = await xw.send_app(
        AppIn(
            name=name,
            type=AppType.SCRIPT,
            binaries=[Binary(os="ANY", cpu="ANY", data=data.uid)],
            validation=validation,
        )
    )
    return app.uid


async def submitter_of(server: Server, admin: XWClient) -> XWClient:
    await add_user(admin, "submitter", UserRights.STANDARD_USER)
    return server.client("submitter")


# --- the scenarios -------------------------------------------------------------------------------------


async def independent_liars(where: Path, sizes: Sizes) -> dict[str, Any]:
    """(a): adaptive policy (defaults), 20% independent liars: a warm-up, then a measured phase."""
    async with running_server(where / "independent") as server:
        admin = server.admin()
        sim = await Sim.enrol(server, admin, sizes.workers, INDEPENDENT)
        db = Database(server)
        try:
            submitter = await submitter_of(server, admin)
            app = await register_app(submitter, where, "adaptive-independent", Validation(policy="adaptive"))
            warm, warm_cost = await run_phase(
                server, sim, db, submitter, app, batch(app, "w", sizes.warmup), "(a) warm-up", sizes.stall_s
            )
            snap = await asyncio.to_thread(db.snapshot, app)
            trust_warm = trust_stats(snap, sim.kind_of)
            measured, measured_cost = await run_phase(
                server,
                sim,
                db,
                submitter,
                app,
                batch(app, "m", sizes.measured),
                "(a) measured",
                sizes.stall_s,
            )
            snap = await asyncio.to_thread(db.snapshot, app)
            out: dict[str, Any] = {
                "warmup": {**phase_stats(snap, warm, sim.kind_of), "costs": warm_cost},
                "measured": {**phase_stats(snap, measured, sim.kind_of), "costs": measured_cost},
                "all": phase_stats(snap, [*warm, *measured], sim.kind_of),
                "warmup_thirds": by_thirds(snap, warm, sim.kind_of),
                "trust_after_warmup": trust_warm,
                "trust_at_end": trust_stats(snap, sim.kind_of),
                "spot_checks_events": await asyncio.to_thread(db.spot_checks),
            }
            wrong = [e["job"] for e in out["all"]["examples"] if e["problem"] == "wrong result accepted"]
            if wrong:  # must not happen: what the server did with them, for the report
                out["events_of_wrong"] = await asyncio.to_thread(db.events, wrong[:3])
            out["fleet"] = sim.tally.as_dict()
        finally:
            db.close()
            await sim.aclose()
    m = out["measured"]
    log(
        f"(a): wrong accepted {out['all']['wrong_accepted']}, "
        f"attempts/job measured {m['attempts_per_job']:.3f} "
        f"(warm-up {out['warmup']['attempts_per_job']:.3f}); trust at end {out['trust_at_end']}"
    )
    return out


COLLUSION_POLICIES = {
    "quorum 2": (Validation(policy="quorum", quorum=2), 2),
    "quorum 3": (Validation(policy="quorum", quorum=3), 3),
    "adaptive": (Validation(policy="adaptive"), 2),
}


async def colluding_liars(where: Path, sizes: Sizes, label: str) -> dict[str, Any]:
    """(b): one policy against 20% colluding liars (their wrong results agree)."""
    validation, k = COLLUSION_POLICIES[label]
    slug = label.replace(" ", "")
    async with running_server(where / f"colluding-{slug}") as server:
        admin = server.admin()
        sim = await Sim.enrol(server, admin, sizes.workers, COLLUDING)
        db = Database(server)
        try:
            submitter = await submitter_of(server, admin)
            app = await register_app(submitter, where, f"colluding-{slug}", validation)
            uids, cost = await run_phase(
                server,
                sim,
                db,
                submitter,
                app,
                batch(app, "c", sizes.collusion),
                f"(b) {label}",
                sizes.stall_s,
            )
            snap = await asyncio.to_thread(db.snapshot, app)
            stats = phase_stats(snap, uids, sim.kind_of)
            thirds = by_thirds(snap, uids, sim.kind_of)
            trust = trust_stats(snap, sim.kind_of)
            spot = await asyncio.to_thread(db.spot_checks)
            fleet = sim.tally.as_dict()
        finally:
            db.close()
            await sim.aclose()
    f_obs = stats["liar_share_of_attempts"]
    by_race = stats["completed"] - stats["accepted_on_trust"]
    wrong_race = stats["wrong_accepted"] - stats["wrong_accepted_on_trust"]
    out = {
        **stats,
        "k": k,
        "costs": cost,
        "fleet": fleet,
        "thirds": thirds,
        "trust": trust,
        "spot_checks_events": spot,
        "theory_f": LIAR_SHARE,
        "theory_rate": race(LIAR_SHARE, k),
        "theory_rate_at_observed_share": race(f_obs, k) if not math.isnan(f_obs) else math.nan,
        "decided_by_agreement": by_race,
        "wrong_by_agreement": wrong_race,
        "wrong_rate_by_agreement": wrong_race / by_race if by_race else math.nan,
    }
    log(
        f"(b) {label}: wrong {stats['wrong_accepted']}/{stats['completed']} = {stats['wrong_rate']:.4f} "
        f"(theory {out['theory_rate']:.4f}), {stats['attempts_per_job']:.2f} attempts/job, "
        f"{stats['error']} ERROR; colluders {trust.get(COLLUDING)}"
    )
    return out


async def cpu_per_job(where: Path, sizes: Sizes, profile: bool) -> dict[str, Any]:
    """(c): an honest fleet, jobs without validation and with quorum 2, interleaved rounds, one server."""
    q2 = Validation(policy="quorum", quorum=2)
    rounds: list[dict[str, Any]] = []
    out: dict[str, Any] = {"jobs_per_run": sizes.cpu_jobs, "rounds": rounds}
    async with running_server(where / "cpu") as server:
        admin = server.admin()
        sim = await Sim.enrol(server, admin, sizes.workers, None)
        db = Database(server)
        try:
            submitter = await submitter_of(server, admin)
            app = await register_app(submitter, where, "honest", None)
            # warm-up, not counted: caches, the first claims of every host, the database's first pages
            for mode, v in (("none", None), ("quorum 2", q2)):
                await run_phase(
                    server,
                    sim,
                    db,
                    submitter,
                    app,
                    batch(app, f"warm-{mode[0]}-", max(20, sizes.cpu_jobs // 5), v),
                    f"(c) warm-up {mode}",
                    sizes.stall_s,
                )
            for r in range(sizes.cpu_rounds):
                order = ("none", "quorum 2") if r % 2 == 0 else ("quorum 2", "none")
                entry: dict[str, Any] = {"order": list(order)}
                for mode in order:
                    v = q2 if mode == "quorum 2" else None
                    uids, cost = await run_phase(
                        server,
                        sim,
                        db,
                        submitter,
                        app,
                        batch(app, f"r{r}-{mode[0]}-", sizes.cpu_jobs, v),
                        f"(c) round {r + 1}/{sizes.cpu_rounds} {mode}",
                        sizes.stall_s,
                    )
                    snap = await asyncio.to_thread(db.snapshot, app)
                    completed = sum(snap.parents[u].status == "COMPLETED" for u in uids if u in snap.parents)
                    cost["completed"] = completed
                    cost["server_cpu_ms_per_accepted_job"] = (
                        1000 * cost["server_cpu_s"] / completed if completed else math.nan
                    )
                    if v is not None:
                        st = phase_stats(snap, uids, sim.kind_of)
                        cost["wrong_accepted"] = st["wrong_accepted"]
                        cost["verdicts"] = st["verdicts"]
                    entry["plain" if v is None else "quorum2"] = cost
                rounds.append(entry)
            if profile:
                _, run = await run_phase(
                    server,
                    sim,
                    db,
                    submitter,
                    app,
                    batch(app, "prof-", sizes.cpu_jobs // 2, q2),
                    "(c) profiled quorum 2",
                    sizes.stall_s,
                    where / "validation.pyspy",
                )
                out["profile"] = run.pop("profile", {"error": "no profile"})
                out["profiled_run"] = run
            snap = await asyncio.to_thread(db.snapshot, app)
            out["trust"] = trust_stats(snap, sim.kind_of)
            out["fleet"] = sim.tally.as_dict()
        finally:
            db.close()
            await sim.aclose()
    return out


# --- the record ----------------------------------------------------------------------------------------


def rows_for(d: dict[str, Any]) -> list[Row]:
    workers = d["sizes"]["workers"]
    liars = round(LIAR_SHARE * workers)
    who = f"{workers} simulated workers, {liars} of them liars, SQLite"
    rows: list[Row] = []
    errors = d.get("server_errors", {})
    retried = (
        f"; the server answered {errors['total']:,} worker requests with an error (the workers retried, as "
        f"xwworker does): {'; '.join(f'{n} x {why}' for why, n in errors['by_request'].items())}"
        if errors.get("total")
        else ""
    )
    a = d["independent"]
    allj, warm, meas = a["all"], a["warmup"], a["measured"]
    t_end = a["trust_at_end"]
    liar_q = t_end.get(INDEPENDENT, {}).get("quarantined", 0)
    honest_t = t_end.get(HONEST, {}).get("trusted", 0)
    honest_q = t_end.get(HONEST, {}).get("quarantined", 0)
    rows.append(
        Row(
            figure=f"Wrong results accepted, independent liars, adaptive policy ({who})",
            value=float(allj["wrong_accepted"]),
            unit=f"of {allj['jobs']:,} jobs",
            goal=GOAL_WRONG,
            met=allj["wrong_accepted"] == 0 and allj["completed_without_accepted_replica"] == 0,
            note=(
                f"{allj['completed']:,} COMPLETED, {allj['error']} ERROR; "
                f"results accepted from liars' hosts: "
                f"{allj['accepted_from_liar_hosts']}; liars quarantined {liar_q} of {liars}, honest hosts "
                f"trusted {honest_t} of {workers - liars} (quarantined: {honest_q}){retried}"
            ),
        )
    )
    rows.append(
        Row(
            figure=(
                f"Attempts per job, adaptive policy, after a warm-up of {warm['jobs']:,} jobs "
                f"({meas['jobs']:,} jobs measured; independent liars, {who})"
            ),
            value=meas["attempts_per_job"],
            unit="attempts/job",
            baseline=warm["attempts_per_job"],
            baseline_unit="attempts/job",
            baseline_label="the warm-up, hosts not yet trusted",
            ratio=ratio(meas["attempts_per_job"], warm["attempts_per_job"]),
            ratio_label="measured / warm-up",
            goal=GOAL_ATTEMPTS,
            met=meas["attempts_per_job"] <= 1.3,
            note=(
                f"{meas['accepted_on_trust']:,} of {meas['completed']:,} accepted on their host's trust; "
                f"liars' share of attempts {meas['liar_share_of_attempts']:.1%} (warm-up "
                f"{warm['liar_share_of_attempts']:.1%}); {meas['error']} ERROR"
            ),
        )
    )
    for label in COLLUSION_POLICIES:
        b = d["colluding"][label]
        trust = b["trust"].get(COLLUDING, {})
        honest_out = b["trust"].get(HONEST, {}).get("quarantined", 0)
        thirds = ", ".join(
            f"{_pct(t['liar_share_of_attempts'])} -> {_pct(t['wrong_rate'])}" for t in b.get("thirds", [])
        )
        extra = ""
        if label == "adaptive":
            extra = (
                f"; colluders trusted {trust.get('trusted', 0)}, wrong accepted on trust "
                f"{b['wrong_accepted_on_trust']}, by agreement {b['wrong_by_agreement']} of "
                f"{b['decided_by_agreement']:,} ({_pct(b['wrong_rate_by_agreement'])}, "
                "against the k = 2 race)"
            )
        rows.append(
            Row(
                figure=f"Wrong results accepted, colluding liars, {label} ({who})",
                value=100 * b["wrong_rate"],
                unit="% of completed jobs",
                baseline=100 * b["theory_rate"],
                baseline_unit="%",
                baseline_label=(
                    f"theory: colluders drawn at random with f = {LIAR_SHARE:g} win the race to "
                    f"{b['k']} agreeing results" + (" (the untrusted part)" if label == "adaptive" else "")
                ),
                ratio=ratio(b["wrong_rate"], b["theory_rate"]),
                ratio_label="measured / theory",
                note=(
                    f"{b['wrong_accepted']} of {b['completed']:,}; {b['attempts_per_job']:.2f} attempts/job, "
                    f"{b['error']} ERROR; colluders' share of attempts {b['liar_share_of_attempts']:.1%} "
                    f"(theory at that share {_pct(b['theory_rate_at_observed_share'])}); colluders "
                    f"quarantined {trust.get('quarantined', 0)} of {liars}, honest hosts quarantined "
                    f"{honest_out} of {workers - liars}; by thirds of the jobs, colluders' share of attempts "
                    f"-> wrong accepted: {thirds}{extra}"
                ),
            )
        )
    c = d["cpu"]
    plain = [e["plain"]["server_cpu_ms_per_accepted_job"] for e in c["rounds"]]
    q2 = [e["quorum2"]["server_cpu_ms_per_accepted_job"] for e in c["rounds"]]
    q2_attempt = [e["quorum2"]["server_cpu_ms_per_attempt"] for e in c["rounds"]]
    pairs = [b / a_ for a_, b in zip(plain, q2, strict=True)]
    plain_s, q2_s = Spread.of(plain), Spread.of(q2)
    attempts_q2 = statistics.median(e["quorum2"]["attempts_per_job"] for e in c["rounds"])
    rows.append(
        Row(
            figure=(
                f"Server CPU per accepted job, quorum 2 ({workers} honest simulated workers x {SLOTS} slots, "
                f"{c['jobs_per_run']:,} jobs/run, SQLite)"
            ),
            value=q2_s.median,
            unit="ms CPU/job",
            spread=q2_s,
            baseline=plain_s.median,
            baseline_unit="ms CPU/job",
            baseline_label="no validation, interleaved rounds of the same run",
            ratio=statistics.median(pairs),
            ratio_label="quorum 2 / no validation, median of the rounds",
            note=(
                f"{statistics.median(q2_attempt):.3f} ms per attempt ({attempts_q2:.2f} attempts/job); "
                f"per-round ratios {', '.join(f'{p:.2f}' for p in pairs)}; from the submission to the last "
                "verdict"
            ),
        )
    )
    return rows


def _pct(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:.2f}%"


async def measure(opts: Options, where: Path) -> Record:
    raise_nofile()
    sizes = QUICK if opts.quick else FULL
    if opts.quick:
        log(
            f"quick sizes: {sizes.workers} simulated workers (not {FULL.workers}), "
            f"{sizes.warmup}+{sizes.measured} jobs "
            f"in (a), {sizes.collusion} per policy in (b), "
            f"{sizes.cpu_rounds} round of {sizes.cpu_jobs} in (c)"
        )
    details: dict[str, Any] = {
        "sizes": {
            "workers": sizes.workers,
            "liars": round(LIAR_SHARE * sizes.workers),
            "slots": SLOTS,
            "warmup_jobs": sizes.warmup,
            "measured_jobs": sizes.measured,
            "collusion_jobs": sizes.collusion,
            "cpu_jobs_per_run": sizes.cpu_jobs,
            "cpu_rounds": sizes.cpu_rounds,
        },
        "notes": NOTES,
    }
    details["independent"] = await independent_liars(where, sizes)
    details["colluding"] = {label: await colluding_liars(where, sizes, label) for label in COLLUSION_POLICIES}
    details["cpu"] = await cpu_per_job(where, sizes, opts.profile)
    errors: collections.Counter[str] = collections.Counter()
    for fleet in (
        details["independent"]["fleet"],
        *(b["fleet"] for b in details["colluding"].values()),
        details["cpu"]["fleet"],
    ):
        errors.update(fleet["errors"])
    # what the server answered the simulated workers with an error (they retried, as xwworker does)
    details["server_errors"] = {"total": sum(errors.values()), "by_request": dict(errors.most_common(10))}
    profiles = {"quorum 2 dispatch": details["cpu"].pop("profile")} if "profile" in details["cpu"] else {}
    return Record(
        benchmark=NAME,
        title="Result validation",
        command=command_line(NAME),
        quick=opts.quick,
        rows=rows_for(details),
        details=details,
        profiles=profiles,
    )


def add_options(parser: argparse.ArgumentParser) -> None:
    del parser  # no options of its own


def main() -> None:
    run_benchmark(NAME, __doc__ or "", measure, add_options)


if __name__ == "__main__":
    main()
