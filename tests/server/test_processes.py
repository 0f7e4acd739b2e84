"""Several server processes on one PostgreSQL: `xwserver run --processes N`, wake-ups across processes
(LISTEN/NOTIFY), one reaper at a time, and a process killed with SIGKILL mid-run losing nothing.

Real `xwserver run` processes on a fresh database; run under `make test-pg` (XW_TEST_DATABASE_URL).
On SQLite only the refusal of `--processes 2` is tested; the rest skips with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import os
import re
import shutil
import signal
import sys
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from client.api import XWClient
from client.config import ClientConfig
from common.config import dump_flat_toml, read_toml, write_private
from common.enums import CPU, OS, AppType, JobStatus, UserRights
from common.errors import TransportError, XWError
from common.schemas import AppIn, Binary, Heartbeat, HostIn, InlineResult, JobIn, UserIn
from server.db.models import Event, Job
from server.home import init_home
from server.scheduler import notify
from server.scheduler.leader import REAPER_KEY
from server.scheduler.wakeup import Wakeups

XWSERVER = Path(sys.executable).with_name("xwserver")
READY = re.compile(r"xwserver ready at (https://\S+)")
PASSWORD = "correct horse battery"
NEEDS_PG = (
    "needs PostgreSQL: several server processes share one; run under `make test-pg` (XW_TEST_DATABASE_URL)"
)
# short periods, so that lost hosts and forgotten attempts come back within seconds
FAST = {"alive_period": 0.5, "alive_timeout": 2.0, "leader_retry": 0.3}

T = TypeVar("T")


# --- servers -------------------------------------------------------------------------------------------


@dataclass
class ServerProc:
    """An `xwserver run` process we started (a supervisor with --processes N, or a single server)."""

    proc: asyncio.subprocess.Process
    url: str
    log: Path
    drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        if self.drain is not None:
            self.drain.cancel()
        return code


async def launch(home: Path, log: Path, *args: str) -> ServerProc:
    """Run `xwserver run --dir HOME --port 0 ARGS` until its ready line."""
    with log.open("ab") as fh:
        proc = await asyncio.create_subprocess_exec(
            XWSERVER,
            "run",
            "--dir",
            str(home),
            "--port",
            "0",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=fh,
        )
    assert proc.stdout is not None
    try:
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            if not line:
                raise AssertionError(f"xwserver exited ({await proc.wait()}):\n{log.read_text()[-3000:]}")
            match = READY.search(line.decode())
            if match:
                break
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise

    async def drain() -> None:
        assert proc.stdout is not None
        while await proc.stdout.read(65536):
            pass

    return ServerProc(proc, match.group(1), log, asyncio.create_task(drain()))


@dataclass
class Cluster:
    """A server home on a fresh PostgreSQL database, the servers started on it, and clients."""

    home: Path
    database_url: str
    admin_password: str
    tmp: Path
    servers: list[ServerProc] = field(default_factory=list)
    clients: list[XWClient] = field(default_factory=list)
    engine: AsyncEngine | None = None

    async def start(self, *args: str) -> ServerProc:
        server = await launch(self.home, self.tmp / f"server{len(self.servers)}.log", *args)
        self.servers.append(server)
        return server

    def client(self, url: str, login: str = "admin", password: str | None = None) -> XWClient:
        cfg = ClientConfig(
            server=url, ca=self.home / "ca" / "ca.crt", login=login, password=password or self.admin_password
        )
        xw = XWClient(cfg)
        self.clients.append(xw)
        return xw

    def db(self) -> AsyncEngine:
        if self.engine is None:
            self.engine = create_async_engine(self.database_url, pool_size=2)
        return self.engine

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.db().connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()

    def logs(self) -> str:
        return "\n".join(s.log_text() for s in self.servers)


@pytest.fixture
async def cluster(tmp_path: Path, database_url: str) -> AsyncIterator[Cluster]:
    if not database_url:
        print(f"skipped: {NEEDS_PG}")
        pytest.skip(NEEDS_PG)
    home = tmp_path / "home"
    await asyncio.to_thread(init_home, home, host="127.0.0.1", port=0, database_url=database_url)
    path = home / "settings.toml"
    write_private(path, dump_flat_toml({**read_toml(path), **FAST}))
    c = Cluster(home, database_url, str(read_toml(home / "admin.conf")["password"]), tmp_path)
    try:
        yield c
    finally:
        await asyncio.gather(*(xw.aclose() for xw in c.clients), return_exceptions=True)
        for server in c.servers:
            await server.stop(signal.SIGKILL)
        if c.engine is not None:
            await c.engine.dispose()


async def setup_grid(admin: XWClient, tmp: Path) -> str:
    """A submitter (alice), a worker account, and a script app; the app's uid."""
    for login, rights in (("alice", UserRights.STANDARD_USER), ("worker", UserRights.WORKER_USER)):
        await admin.create_user(
            UserIn(login=login, password=PASSWORD, email=f"{login}@example.org", rights=rights)
        )
    script = tmp / "true.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    data = await admin.send_file(script, access_rights="1755")
    app = await admin.send_app(
        AppIn(
            name="true",
            type=AppType.SCRIPT,
            binaries=[Binary(os="ANY", cpu="ANY", data=data.uid)],
            access_rights="0755",
        )
    )
    return app.uid


async def enrol(xw: XWClient, name: str) -> tuple[str, float]:
    got = await xw.enrol(HostIn(name=name, os=OS.LINUX, cpu=CPU.AMD64, cores=1))
    return got.host.uid, got.alive_period


def tiny_result() -> InlineResult:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("stdout.txt", "ok\n")
    raw = buf.getvalue()
    return InlineResult(
        attempt="00000000-0000-4000-8000-000000000000",
        return_code=0,
        content=base64.b64encode(raw).decode(),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


RESULT = tiny_result()


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout:g} s: {what}")
        await asyncio.sleep(0.1)


async def retrying(call: Callable[[], Awaitable[T]]) -> T:
    """A worker's way with a server process that died under it, or a server error: try again (another
    process answers)."""
    while True:
        try:
            return await call()
        except TransportError:
            await asyncio.sleep(0.1)
        except XWError as err:
            if err.status < 500:
                raise
            await asyncio.sleep(0.1)


async def leader_pid(c: Cluster) -> int | None:
    """The OS pid of the server process holding the reaper's lock (from its connection's name)."""
    name = await c.scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :hi AND l.objid = :lo",
        hi=REAPER_KEY >> 32,
        lo=REAPER_KEY & 0xFFFFFFFF,
    )
    return int(name.split()[1]) if name else None


# --- SQLite ------------------------------------------------------------------------------------------------


async def test_several_processes_are_refused_on_sqlite(tmp_path: Path, template_home: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(template_home, home)
    env = {k: v for k, v in os.environ.items() if k != "XW_DATABASE_URL"}
    proc = await asyncio.create_subprocess_exec(
        XWSERVER,
        "run",
        "--dir",
        str(home),
        "--processes",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and out == b""
    assert err.decode().count("\n") == 1, err
    assert err.decode().startswith(
        "Error: 2 server processes need PostgreSQL: SQLite has one writer per database file"
    )


# --- PostgreSQL --------------------------------------------------------------------------------------------


async def test_processes_share_one_port_and_write_the_home_once(cluster: Cluster) -> None:
    server = await cluster.start("--processes", "2")
    port = int(server.url.rsplit(":", 1)[1])
    assert (cluster.home / "server.url").read_text() == server.url + "\n"
    assert read_toml(cluster.home / "admin.conf")["server"] == server.url
    children = server.children()
    assert len(children) == 2
    # the kernel spreads connections over both processes: each new client is a new connection
    clients = [cluster.client(server.url) for _ in range(24)]
    assert {(await xw.ping()).login for xw in clients} == {"admin"}
    serving = {
        child.pid
        for child in children
        for conn in child.net_connections(kind="tcp")
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    }
    assert serving == {child.pid for child in children}
    assert cluster.logs().count("leader: this process now runs the reaper") == 1
    assert await server.stop() == 0
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)


async def test_a_job_submitted_on_one_process_wakes_a_worker_waiting_on_another(cluster: Cluster) -> None:
    a = await cluster.start()
    b = await cluster.start()
    app = await setup_grid(cluster.client(a.url), cluster.tmp)
    alice = cluster.client(a.url, "alice", PASSWORD)
    worker = cluster.client(b.url, "worker", PASSWORD)
    host, _ = await enrol(worker, "waiting-on-b")
    await until("both processes listen", lambda: _listening(cluster, 2), 20)

    async def one(i: int) -> float:
        waiting = asyncio.create_task(worker.claim_work(host, 10, 1))
        await asyncio.sleep(0.3)  # parked on B
        t0 = time.monotonic()
        await alice.submit(JobIn(app=app, args=str(i), max_retries=0))
        got = await waiting
        elapsed = time.monotonic() - t0
        assert len(got) == 1
        await worker.send_results(host, [RESULT.model_copy(update={"attempt": got[0].attempt})])
        return elapsed

    times = [await one(i) for i in range(5)]
    # the fallback would take 5 s (or 15 s with a healthy listener): this is the notification
    assert max(times) < 2.0, times

    # the listener's connection dies: it reconnects, and wake-ups travel again
    killed = await cluster.scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE '% notify'"
    )
    assert killed == 2
    await until("both processes listen again", lambda: _listening(cluster, 4), 20)
    assert max([await one(i) for i in range(5, 8)]) < 2.0


async def _listening(c: Cluster, times: int) -> bool:
    """Whether the servers' listeners have started LISTENing ``times`` times in all (their logs say)."""
    return c.logs().count("notify: listening") == times


async def test_notifications_are_coalesced_and_not_heard_by_their_sender(cluster: Cluster) -> None:
    """Two notifiers in this process (as if two servers): a burst of 100 wake-ups is a few NOTIFYs,
    heard by the other as 100 jobs, waking exactly as many waiters as were parked."""
    here, there = Wakeups(), Wakeups()
    sender = notify.Notifier(cluster.database_url, here, window=0.2, recheck=15.0)
    hearer = notify.Notifier(cluster.database_url, there, window=0.2, recheck=15.0)
    tasks = [asyncio.create_task(n.run()) for n in (sender, hearer)]
    try:

        async def both_listening() -> bool:
            return sender.listening and hearer.listening

        await until("both listen", both_listening, 20)
        assert there.recheck == 15.0
        parked = [asyncio.create_task(there.waiters.wait(30)) for _ in range(3)]
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        for _ in range(100):
            sender.jobs_pending(1)
            await asyncio.sleep(0.001)
        burst = time.monotonic() - t0

        async def all_heard() -> bool:
            return hearer.heard == 100

        await until("100 jobs heard", all_heard, 10)
        # one NOTIFY at once, then one per 0.2 s window while the burst lasts (~0.1 s), then the rest
        assert sender.announced == 100 and sender.sent <= 2 + int(burst / 0.2), (sender.sent, burst)
        assert sender.heard == 0  # its own NOTIFYs are not for it
        assert all(await asyncio.gather(*parked))  # each woken (budget >= 1), none timed out
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_one_reaper_at_a_time_and_another_takes_over(cluster: Cluster) -> None:
    a = await cluster.start()
    b = await cluster.start()
    app = await setup_grid(cluster.client(a.url), cluster.tmp)

    async def silent_hosts(urls: list[str], tag: str) -> list[str]:
        """Hosts that each claim one job, then say nothing more."""
        alice = cluster.client(urls[-1], "alice", PASSWORD)
        await alice.submit_many([JobIn(app=app, args=f"{tag}{i}") for i in range(len(urls))])
        hosts = []
        for i, url in enumerate(urls):
            xw = cluster.client(url, "worker", PASSWORD)
            host, _ = await enrol(xw, f"{tag}{i}")
            assert len(await xw.claim_work(host, 5, 1)) == 1
            hosts.append(host)
        return hosts

    async def lost_events(hosts: list[str]) -> dict[str, int]:
        async with cluster.db().connect() as conn:
            rows = await conn.execute(
                select(Event.object_uid, func.count())
                .where(Event.action == "lost", Event.object_uid.in_(hosts))
                .group_by(Event.object_uid)
            )
            return {uid: n for uid, n in rows.all()}

    first = await silent_hosts([a.url, a.url, b.url, b.url], "first")

    async def all_lost() -> bool:
        return len(await lost_events(first)) == len(first)

    await until("the silent hosts are lost", all_lost, 30)
    await asyncio.sleep(2)  # a second reaper, if there were one, would have acted by now
    assert await lost_events(first) == {h: 1 for h in first}
    pending = await cluster.scalar("SELECT count(*) FROM jobs WHERE status = 'PENDING'")
    assert pending == 4  # requeued once each

    leader = await leader_pid(cluster)
    assert leader in (a.pid, b.pid)
    assert cluster.logs().count("leader: this process now runs the reaper") == 1
    gone, survivor = (a, b) if leader == a.pid else (b, a)
    await gone.stop(signal.SIGKILL)

    async def taken_over() -> bool:
        return await leader_pid(cluster) == survivor.pid

    await until("the other process takes the lock", taken_over, 15)
    second = await silent_hosts([survivor.url, survivor.url], "second")

    async def second_lost() -> bool:
        return len(await lost_events(second)) == len(second)

    await until("the survivor reaps", second_lost, 30)
    assert await lost_events(second) == {h: 1 for h in second}


@dataclass
class SimWorker:
    """A worker without the sandbox: claims batches, completes them inline at once, heartbeats; a server
    process dying under it only makes it try again.

    Its heartbeats report nothing running: it holds an attempt only for the moment between its claim and
    its results. A claim whose answer was lost with a killed process is then an attempt the host does
    not report, which the server puts back after the alive timeout — what the test is about."""

    xw: XWClient
    host: str
    period: float
    accepted: int = 0
    conflicts: int = 0

    async def work(self, stop: asyncio.Event) -> None:
        beat = asyncio.create_task(self._heartbeat(stop))
        try:
            while not stop.is_set():
                got = await retrying(lambda: self.xw.claim_work(self.host, 1, 8))
                if not got:
                    continue
                results = [RESULT.model_copy(update={"attempt": a.attempt}) for a in got]
                # sent again after a process committed them and was killed before it answered, they
                # come back refused one by one (completed already: the checks below count completions)
                reply = await retrying(partial(self.xw.send_results, self.host, results))
                self.accepted += len(reply.accepted)
                self.conflicts += len(reply.refused)
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.period)
            with contextlib.suppress(XWError):  # a missed beat is no matter: the next one comes
                await self.xw.heartbeat(self.host, Heartbeat())


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_killing_one_of_two_processes_loses_no_job_and_completes_each_once(cluster: Cluster) -> None:
    jobs, workers = 300, 8
    server = await cluster.start("--processes", "2")
    app = await setup_grid(cluster.client(server.url), cluster.tmp)
    alice = cluster.client(server.url, "alice", PASSWORD)
    fleet = []
    for i in range(workers):
        xw = cluster.client(server.url, "worker", PASSWORD)
        host, period = await enrol(xw, f"sim{i}")
        fleet.append(SimWorker(xw, host, period))
    stop = asyncio.Event()
    running = [asyncio.create_task(w.work(stop)) for w in fleet]
    try:
        for part in range(3):  # submitted while the fleet works, through either process
            batch = [JobIn(app=app, args=f"{part}-{i}") for i in range(jobs // 3)]
            await retrying(partial(alice.submit_many, batch))

        async def a_third_done() -> bool:
            return sum(w.accepted for w in fleet) >= jobs // 3

        await until("a third of the jobs are done", a_third_done, 120)
        victim = server.children()[0]
        victim.kill()  # SIGKILL: no shutdown, transactions cut short

        async def all_done() -> bool:
            n = await cluster.scalar("SELECT count(*) FROM jobs WHERE status = 'COMPLETED'")
            return bool(n == jobs)

        await until("every job completed", all_done, 240)

        async def restarted() -> bool:
            return "started again" in server.log_text()  # and serves: it said it was ready

        await until("the supervisor starts the killed process again", restarted, 60)
        assert f"(pid {victim.pid}) exited (signal KILL)" in server.log_text()
        pids = [c.pid for c in server.children()]
        assert len(pids) == 2 and victim.pid not in pids
    finally:
        stop.set()
        outcomes = await asyncio.gather(*running, return_exceptions=True)
    assert [o for o in outcomes if o is not None] == []  # no simulated worker gave up
    async with cluster.db().connect() as conn:
        statuses = dict((await conn.execute(select(Job.status, func.count()).group_by(Job.status))).all())
        completions = (
            await conn.execute(
                select(Event.object_uid, func.count())
                .where(Event.action == "complete")
                .group_by(Event.object_uid)
            )
        ).all()
    assert statuses == {JobStatus.COMPLETED.value: jobs}
    assert len(completions) == jobs and {n for _, n in completions} == {1}
