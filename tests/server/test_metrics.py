"""/metrics: Prometheus names, figures that move with real jobs on real workers, and who may read it."""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from common.enums import JobStatus
from common.jobstates import FINAL
from common.schemas import JobIn
from server.db.engine import make_engine, make_sessionmaker
from server.metrics.endpoint import EXPOSITION, watch
from server.metrics.instruments import OTHER_VERDICT, VERDICTS, ServerMetrics
from server.settings import load_settings
from server.validation.observers import VERDICT_OBSERVERS, note_verdicts
from tests.conftest import PASSWORD, Grid
from tests.grid.conftest import local_grid  # noqa: F401  (the fixture: a server and two real workers)
from tests.server.test_processes import cluster, setup_grid, until  # noqa: F401  (cluster: a fixture)
from tests.server.test_submission import script_app

FORBIDDEN_LABELS = {"user", "owner", "host", "worker", "login", "uid", "job"}
UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")


async def scrape(grid: Grid, token: str | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of GET /metrics, with a bearer token or none."""
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{grid.url}/metrics", ssl=ctx, headers=headers) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def samples(grid: Grid) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    status, _, text = await scrape(grid)
    assert status == 200, text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def admin_token(grid: Grid) -> str:
    return (await grid.admin.login("admin", grid.admin_cfg.password or "")).access_token


async def test_names_follow_prometheus_conventions(grid: Grid) -> None:
    alice = await grid.add_user("alice")
    await alice.jobs()  # a request with a route, so that the request counter has samples
    status, content_type, text = await scrape(grid)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    families = list(text_string_to_metric_families(text))
    names = {f.name for f in families}
    assert {"xwhep_jobs_submitted", "xwhep_jobs", "xwhep_http_requests", "xwhep_workers_alive"} <= names
    for family in families:
        assert family.name.startswith("xwhep_"), family.name
        for sample in family.samples:
            assert not FORBIDDEN_LABELS & set(sample.labels), (sample.name, sample.labels)
            if family.type == "counter" and not sample.name.endswith("_created"):
                assert sample.name.endswith("_total"), sample.name
            if family.type == "histogram":
                assert family.name.endswith("_seconds"), family.name
    assert re.search(r"^xwhep_jobs_submitted_total ", text, re.M)


async def test_counters_move_as_real_workers_run_jobs(local_grid) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    lg = local_grid
    grid: Grid = lg.grid
    alice = await grid.add_user("alice")
    ok = await lg.script_app(alice, "ok", 'echo "ok $1"\n')
    bad = await lg.script_app(alice, "bad", "exit 3\n")
    before = await samples(grid)
    good_jobs = [await alice.submit(JobIn(app=ok, args=str(i))) for i in range(5)]
    failing = await alice.submit(JobIn(app=bad, args="x"))
    uids = await alice.submit_many([JobIn(app=ok, args=f"b{i}") for i in range(4)])
    for uid in [j.uid for j in good_jobs] + [failing.uid, *uids]:
        await lg.wait_job(alice, uid, {JobStatus.COMPLETED, JobStatus.ERROR})
    await alice.get_job(good_jobs[0].uid)  # GET /jobs/{uid}: its template, not its uid, is a label
    after = await samples(grid)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("xwhep_jobs_submitted_total") == 10
    # a non-zero exit is still COMPLETED (as in XWHEP): all ten completed, none in error
    assert grew("xwhep_jobs_finished_total", outcome="completed") == 10
    assert grew("xwhep_jobs_finished_total", outcome="error") == 0
    assert grew("xwhep_job_transitions_total", trigger="claim") == 10
    assert grew("xwhep_job_queue_wait_seconds_count") == 10
    assert grew("xwhep_job_run_seconds_count") == 10
    assert grew("xwhep_claim_wait_seconds_count") >= 1  # a worker may take several jobs per request
    assert grew("xwhep_data_received_bytes_total") > 0  # the results
    assert value(after, "xwhep_workers_alive") == 2 or await _eventually(grid, "xwhep_workers_alive", 2)

    routes = {dict(labels)["route"] for name, labels in after if name == "xwhep_http_requests_total"}
    assert "/api/v1/jobs/{uid}" in routes and "/api/v1/hosts/{uid}/work" in routes
    assert not [r for r in routes if UID.search(r)], routes
    got = value(after, "xwhep_http_requests_total", method="GET", route="/api/v1/jobs/{uid}", code="2xx")
    assert got >= 1


async def _eventually(grid: Grid, name: str, want: float, **labels: str) -> bool:
    """Whether the (cached, at most 5 s old) database figure ``name`` reaches ``want`` within 8 s."""
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        if value(await samples(grid), name, **labels) == want:
            return True
        await asyncio.sleep(0.5)
    return False


async def test_jobs_by_status_match_the_api(grid: Grid, tmp_path: Path) -> None:
    alice = await grid.add_user("alice")
    app = await script_app(alice, tmp_path, "hi")
    jobs = [await alice.submit(JobIn(app=app, args=str(i))) for i in range(6)]  # no worker: PENDING
    for job in jobs[:2]:
        await alice.hold(job.uid)
    api = collections.Counter(j.status.value for j in await grid.admin.jobs())
    assert api == {"PENDING": 4, "WAITING": 2}
    for status in JobStatus:
        if status in FINAL:  # finished jobs are counted as they finish, not by an ever-growing count
            assert ("xwhep_jobs", frozenset({("status", status.value)})) not in await samples(grid)
            continue
        assert await _eventually(grid, "xwhep_jobs", api.get(status.value, 0), status=status.value), status


async def test_who_may_read_it(grid: Grid) -> None:
    alice = await grid.add_user("alice")
    user_token = (await alice.login("alice", PASSWORD)).access_token
    assert (await scrape(grid))[0] == 200  # loopback, no credentials: the default metrics_allow
    assert (await scrape(grid, await admin_token(grid)))[0] == 200  # an administrator
    status, content_type, body = await scrape(grid, user_token)  # a user, even from loopback
    assert status == 403 and content_type.startswith("application/problem+json"), body
    assert "administrators" in body
    assert (await scrape(grid, "not-a-token"))[0] == 401


async def test_an_address_outside_metrics_allow_needs_an_admin(grid_factory: Any) -> None:
    grid: Grid = await grid_factory(metrics_allow=("10.0.0.0/8",))
    status, content_type, body = await scrape(grid)
    assert status == 403 and content_type.startswith("application/problem+json")
    assert "metrics_allow" in body
    assert (await scrape(grid, await admin_token(grid)))[0] == 200
    alice = await grid.add_user("alice")
    assert (await scrape(grid, (await alice.login("alice", PASSWORD)).access_token))[0] == 403


# --- several server processes (PostgreSQL) ------------------------------------------------------------


async def _fresh(method: str, url: str, ca: Path, **kw: Any) -> tuple[int, str]:
    """One request on a connection of its own: the kernel picks the process (SO_REUSEPORT) anew."""
    ctx = ssl.create_default_context(cafile=str(ca))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, ssl=ctx)) as http:
        async with http.request(method, url, **kw) as resp:
            return resp.status, await resp.text()


async def test_two_processes_show_the_whole_servers_figures(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    server = await cluster.start("--processes", "2")
    children = server.children()
    assert len(children) == 2
    metrics_dir = Path(children[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics_dir.is_dir() and children[1].environ()["PROMETHEUS_MULTIPROC_DIR"] == str(metrics_dir)
    admin = cluster.client(server.url)
    app = await setup_grid(admin, tmp_path)
    token = (await admin.login("admin", cluster.admin_password)).access_token
    ca = cluster.home / "ca" / "ca.crt"
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(20):  # each on a new connection: the kernel spreads them over both processes
        status, body = await _fresh("POST", f"{server.url}/api/v1/jobs", ca, json={"app": app}, headers=auth)
        assert status == 201, body

    def submitted_by_process() -> dict[int, float]:
        """Each process's own count, from its own file in the shared directory."""
        found = {}
        for child in children:
            files = [str(p) for p in metrics_dir.glob(f"counter_{child.pid}.db")]
            merged = MultiProcessCollector.merge(files, accumulate=False) if files else []
            found[child.pid] = sum(
                s.value for m in merged for s in m.samples if s.name == "xwhep_jobs_submitted_total"
            )
        return found

    per_process = submitted_by_process()
    assert sum(per_process.values()) == 20 and all(per_process.values()), per_process  # both took some
    for _ in range(10):  # whichever process answers the scrape, it shows both processes' total
        status, text = await _fresh("GET", f"{server.url}/metrics", ca)
        assert status == 200, text
        assert _sample(text, "xwhep_jobs_submitted_total") == 20
        assert _sample(text, "xwhep_jobs", status="PENDING") == 20  # from the database
    served = {c.pid: _own_requests(metrics_dir, c.pid) for c in children}
    assert all(served.values()), served  # and both processes answered scrapes

    children[0].kill()  # a child killed and restarted: what it counted still counts
    await until("the supervisor restarts the child", lambda: _two_children(server, children[0].pid), 30)
    status, text = await _fresh("GET", f"{server.url}/metrics", ca)
    assert status == 200 and _sample(text, "xwhep_jobs_submitted_total") == 20, text[:2000]


async def _two_children(server: Any, gone: int) -> bool:
    pids = [c.pid for c in server.children()]
    return len(pids) == 2 and gone not in pids


def _own_requests(metrics_dir: Path, pid: int) -> float:
    files = [str(p) for p in metrics_dir.glob(f"counter_{pid}.db")]
    merged = MultiProcessCollector.merge(files, accumulate=False) if files else []
    return sum(
        s.value
        for m in merged
        for s in m.samples
        if s.name == "xwhep_http_requests_total" and s.labels.get("route") == "/metrics"
    )


def _sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def test_metrics_allow_from_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "settings.toml").write_text('metrics_allow = ["10.0.0.0/8", "::1"]\n')
    assert load_settings(home).metrics_allow == ("10.0.0.0/8", "::1")
    monkeypatch.setenv("XW_METRICS_ALLOW", "192.168.0.0/16, 127.0.0.1")
    assert load_settings(home).metrics_allow == ("192.168.0.0/16", "127.0.0.1")
    monkeypatch.setenv("XW_METRICS_ALLOW", "192.168.0.1/16")
    with pytest.raises(ValueError, match=re.escape("192.168.0.1/16")):
        load_settings(home)


async def test_frequent_scrapes_read_the_database_once_per_ttl(grid: Grid) -> None:
    figures = grid.server.runner.app[EXPOSITION].figures
    await scrape(grid)
    first = figures.reads
    for _ in range(10):
        assert (await scrape(grid))[0] == 200
    assert figures.reads == first  # the figures are younger than 5 s: no query
    figures.ttl = 0.0  # as if 5 s had passed
    await scrape(grid)
    assert figures.reads == first + 1


# --- the validator's verdicts (unit: no server) ---------------------------------------------------------


def verdict_counts(metrics: ServerMetrics) -> dict[str, float]:
    """xwhep_validation_verdicts_total by verdict, as a scrape reads it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.verdicts)
    name = "xwhep_validation_verdicts_total"
    return {v: registry.get_sample_value(name, {"verdict": v}) or 0.0 for v in (*VERDICTS, OTHER_VERDICT)}


def test_verdicts_are_counted_by_verdict_and_unknown_ones_as_other() -> None:
    metrics = ServerMetrics()
    info: dict[str, Any] = {}
    watch(info, metrics)  # as the server's start-up does
    assert metrics.verdicts in metrics.collectors()
    assert set(verdict_counts(metrics).values()) == {0.0}  # every series exists from the start
    (observer,) = info[VERDICT_OBSERVERS]
    observer({"valid": 2, "invalid": 1, "inconclusive": 1})
    observer({"valid": 1, "trusted": 3, "cancelled": 1, "failed": 2, "whatever a bug says": 4, "x" * 500: 1})
    observer({"valid": 0})
    assert verdict_counts(metrics) == {
        "valid": 3.0,
        "invalid": 1.0,
        "inconclusive": 1.0,
        "trusted": 3.0,
        "cancelled": 1.0,
        "failed": 2.0,
        "other": 5.0,
    }


async def test_verdicts_are_counted_once_their_transaction_commits(tmp_path: Path) -> None:
    metrics = ServerMetrics()
    info: dict[str, Any] = {}
    watch(info, metrics)
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'v.db'}")
    sessions = make_sessionmaker(engine, info)
    try:
        async with sessions() as session, session.begin():
            await session.execute(text("SELECT 1"))
            note_verdicts(session, {"valid": 2})
            note_verdicts(session, {"valid": 1, "invalid": 1})
            assert verdict_counts(metrics)["valid"] == 0.0  # not before the commit
        assert (verdict_counts(metrics)["valid"], verdict_counts(metrics)["invalid"]) == (3.0, 1.0)
        with pytest.raises(RuntimeError):
            async with sessions() as session, session.begin():
                await session.execute(text("SELECT 1"))
                note_verdicts(session, {"trusted": 5})
                raise RuntimeError("rolled back")
        assert verdict_counts(metrics)["trusted"] == 0.0  # a rolled-back verdict never counts
    finally:
        await engine.dispose()
