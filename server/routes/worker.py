"""The worker protocol: claim work (several jobs at once, long-polling), fetch an attempt's files,
heartbeat, report, and results (several small ones inline, or one streamed).

Every route here takes only the credential of the host in its path, and every attempt route only an
attempt that is its job's current one on that host. The rules live in ``server/scheduler/``.
"""

from __future__ import annotations

import random
import time

from aiohttp import web
from sqlalchemy import select

from common.errors import Conflict, NotFound
from common.jobstates import ACTIVE
from common.schemas import (
    Assignments,
    Heartbeat,
    HeartbeatReply,
    JobOut,
    JobReport,
    ResultsIn,
    ResultsReply,
)
from server.auth import host_allowed
from server.db.models import Attempt, Blob, Job
from server.http import Routes, read_body, reply
from server.metrics.instruments import base64_size
from server.query import QueryParam, header_sha256, integer_range
from server.routes.base import host_of, path_uid
from server.scheduler import completion
from server.scheduler.claims import MAX_CLAIM, Claimed, attempt_files, claim, fail_unrunnable
from server.scheduler.heartbeat import beat
from server.state import actor_of, services
from server.views import job_out

routes = Routes("workers")

# Above the server's longpoll a wait is shortened to it (workers may be configured longer); the bound
# here only refuses what cannot be a wait (negative, NaN, infinite: a request that never returns).
WAIT = QueryParam(
    "wait",
    "number",
    "seconds to wait for work (default and cap: the server's longpoll)",
    minimum=0,
    maximum=86400,
)
MAX = integer_range("max", "jobs to claim at most (the worker's free slots)", 1, MAX_CLAIM)
RETURN_CODE = integer_range("return_code", "the job's exit code", required=True)
MAX_RESULT_BYTES = 1 << 36
LONGPOLL_JITTER = 0.25  # a long-poll at the server's cap waits 75-100 % of it
ACTIVE_VALUES = [s.value for s in ACTIVE]


@routes.add(
    "POST",
    "/hosts/{uid}/work",
    summary="Claim up to `max` jobs to run, long-polling up to `wait` seconds (204 when none came)",
    response=Assignments,
    query=(WAIT, MAX),
    also=(204,),
)
@host_allowed
async def request_work(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    actor = actor_of(request)
    host = host_of(request)
    want = MAX.optional_integer(request) or 1
    asked = WAIT.optional_number(request)
    longest = svc.longpoll()
    wait = longest if asked is None else min(asked, longest)
    if wait >= longest:
        # the server's cap: a fleet that started together (after an outage, a restart) would otherwise
        # come back together, every long-poll period, each with a claim query
        wait *= random.uniform(1.0 - LONGPOLL_JITTER, 1.0)
    arrived = time.monotonic()
    deadline = arrived + wait
    budget = 0  # the pass-on budget of the wake-up that woke us, if one did
    # a place in the long-poll budget is taken only once the request actually waits (429 past it)
    with svc.longpolls.waiting_place() as place:

        async def claim_now() -> list[Claimed]:
            async with svc.sessions() as session, session.begin():
                claimed = await claim(session, host, actor, want, svc.catalog)
                if claimed:
                    await fail_unrunnable(session, actor, claimed)
            return claimed

        fresh = True  # this request has not looked yet (its fallback looks below always query)
        while True:
            claimed = await svc.wakeups.look(host.uid, claim_now, may_skip=fresh)
            fresh = False
            svc.liveness.seen(host.uid)
            items = [c.assignment for c in claimed if c.assignment is not None]
            if items:
                svc.metrics.claim_wait.observe(time.monotonic() - arrived)
                return reply(Assignments(items=items))
            if claimed:
                continue  # all were unrunnable (now ERROR): look for others at once
            if budget:
                svc.wakeups.pass_on(budget)  # woken for a job we may not run: let the next one try
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return web.Response(status=204)
            place.take()
            # unwoken, a parked request looks again after a while (the fallback for a missed wake-up),
            # at a jittered time so that parked requests do not look together
            recheck = svc.wakeups.recheck_after() * random.uniform(0.5, 1.0)
            budget = await svc.wakeups.waiters.wait(min(remaining, recheck))
            if not budget and recheck >= remaining:
                return web.Response(status=204)  # its time is up (the next request looks again, or parks
                # at once if nothing became claimable since this look: see server/scheduler/wakeup.py)


@routes.add(
    "GET",
    "/hosts/{uid}/attempts/{attempt}/files/{data}",
    summary="Fetch a file of an attempt this host runs",
    raw_response="application/octet-stream",
)
@host_allowed
async def attempt_file(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    host = host_of(request)
    attempt, did = path_uid(request, "attempt"), path_uid(request, "data")
    async with svc.sessions() as session:
        files = await attempt_files(session, host, attempt, svc.catalog)
        if files is None:
            raise Conflict(f"attempt {attempt} {completion.NOT_CURRENT}")
        ref = files.get(did)
        if ref is None:
            raise NotFound(f"data {did} is not a file of attempt {attempt}")
        inline = (await session.execute(select(Blob.inline).where(Blob.sha256 == ref.sha256))).scalar()
    headers = {"Content-Type": "application/octet-stream", "X-Content-SHA256": ref.sha256}
    svc.metrics.data_sent.inc(ref.size)
    if inline is not None:
        return web.Response(body=inline, headers=headers)
    return web.FileResponse(svc.store.path(ref.sha256), chunk_size=256 * 1024, headers=headers)


@routes.add(
    "POST",
    "/hosts/{uid}/alive",
    summary="Heartbeat: running attempts and their usage in, kill orders out",
    body=Heartbeat,
    response=HeartbeatReply,
)
@host_allowed
async def alive(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    host = host_of(request)
    body = await read_body(request, Heartbeat, svc.settings.max_json_bytes)
    svc.liveness.seen(host.uid)
    timeout = svc.alive_timeout()
    check = svc.liveness.due_check(host.uid, timeout)
    kill: dict[str, str] = {}
    if body.running or check:  # an idle host's heartbeat touches no table
        grace = max(5.0, svc.alive_period())
        async with svc.sessions() as session, session.begin():
            kill, _ = await beat(
                session,
                svc.liveness,
                host,
                actor,
                body,
                grace=grace,
                alive_timeout=timeout,
                check_forgotten=check,
            )
    return reply(HeartbeatReply(alive_period=svc.alive_period(), kill=kill))


async def _job_of(request: web.Request, attempt: str) -> JobOut:
    """The job an attempt is of, as it stands now."""
    async with services(request).sessions() as session:
        stmt = select(Job).join(Attempt, Attempt.job_uid == Job.uid).where(Attempt.uid == attempt)
        job = (await session.execute(stmt)).scalar_one_or_none()
    if job is None:
        raise NotFound(f"the job of attempt {attempt} no longer exists")
    return job_out(job)


@routes.add(
    "POST",
    "/hosts/{uid}/attempts/{attempt}/report",
    summary="Report an attempt that failed, gave up, or whose results are pending",
    body=JobReport,
    response=JobOut,
)
@host_allowed
async def report(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    host = host_of(request)
    attempt = path_uid(request, "attempt")
    body = await read_body(request, JobReport, svc.settings.max_json_bytes)
    async with svc.sessions() as session, session.begin():
        known = await completion.current(session, host, [attempt])
        if attempt not in known:
            raise Conflict(f"attempt {attempt} {completion.NOT_CURRENT}")
        await completion.report(session, host, actor, attempt, body)
    svc.liveness.seen(host.uid)
    return reply(await _job_of(request, attempt))


@routes.add(
    "POST",
    "/hosts/{uid}/results",
    summary="Complete several attempts with their small results inline (base64 zips)",
    body=ResultsIn,
    response=ResultsReply,
)
@host_allowed
async def results(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    host = host_of(request)
    body = await read_body(request, ResultsIn, svc.settings.max_json_bytes)
    svc.metrics.data_received.inc(sum(base64_size(r.content) for r in body.results))
    async with svc.sessions() as session, session.begin():
        answer, _ = await completion.complete_inline(session, host, actor, body.results)
    svc.liveness.seen(host.uid)
    return reply(answer)


@routes.add(
    "PUT",
    "/hosts/{uid}/attempts/{attempt}/result",
    summary="Upload an attempt's results (a zip, streamed) and complete its job",
    response=JobOut,
    raw_body="application/zip",
    query=(RETURN_CODE,),
)
@host_allowed
async def upload_result(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    host = host_of(request)
    attempt = path_uid(request, "attempt")
    return_code = RETURN_CODE.integer(request)
    declared = header_sha256(request)
    async with svc.sessions() as session:
        if attempt not in await completion.current(session, host, [attempt]):
            raise Conflict(f"attempt {attempt} {completion.NOT_CURRENT}")
    item = await svc.store.ingest(
        request.content.iter_any(), max_size=MAX_RESULT_BYTES, expect_sha256=declared
    )
    svc.metrics.data_received.inc(item.size)
    async with svc.store.lock(item.sha256):
        try:
            async with svc.sessions() as session, session.begin():
                done = await completion.complete_streamed(
                    session, svc.store, host, actor, attempt, item, return_code
                )
                if not done:
                    raise Conflict(f"attempt {attempt} {completion.NOT_CURRENT}")
        finally:
            svc.store.discard(item)
    svc.liveness.seen(host.uid)
    return reply(await _job_of(request, attempt))
