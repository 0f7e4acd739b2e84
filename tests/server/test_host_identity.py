"""Every volunteer host acts only as itself: per-host credentials, host routes, revocation.

The attack this guards against: every worker shares the ``worker`` login, so with the account's token one
could fetch the input files of a job running on another host, take its publish ticket, and complete it
with a forged result. Now the account only enrols; each host speaks with its own credential.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from client.api import XWClient
from common.enums import JobStatus, UserRights
from common.errors import Forbidden, NotFound, Unauthorized
from common.schemas import AppIn, Heartbeat, HostIn, JobIn, JobReport, JobUsage
from tests.server.test_tunnels import RELAY, claims

LINUX = {"os": "LINUX", "cpu": "AMD64"}


async def _app(xw: XWClient, tmp_path: Path) -> tuple[str, str]:
    """A public script app and a public input file; returns (app uid, input uid)."""
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\ncat input.txt\n")
    exe = await xw.send_file(script, access_rights="1755")
    (tmp_path / "input.txt").write_text("secret input of the owner\n")
    data = await xw.send_file(tmp_path / "input.txt", access_rights="1700")
    app = await xw.send_app(
        AppIn(
            name="ident",
            type="script",
            binaries=[{"os": "ANY", "cpu": "ANY", "data": exe.uid}],
            access_rights="0755",
        )
    )
    return app.uid, data.uid


class Volunteers:
    """Two volunteer machines enrolled with the one shared worker account, and the account itself."""

    def __init__(self, grid: Any, a: XWClient, b: XWClient, account: XWClient, ha: str, hb: str) -> None:
        self.grid, self.a, self.b, self.account, self.ha, self.hb = grid, a, b, account, ha, hb
        self.job = ""

    @classmethod
    async def enrol(cls, grid: Any) -> Volunteers:
        await grid.add_user("worker", UserRights.WORKER_USER)
        cfg = grid.config(login="worker", password="correct horse battery")
        a, b, account = grid.client(cfg), grid.client(cfg), grid.client(cfg)
        ea = await a.enrol(HostIn(name="alpha", **LINUX))
        eb = await b.enrol(HostIn(name="beta", **LINUX))
        assert ea.credential and eb.credential and ea.credential != eb.credential
        return cls(grid, a, b, account, ea.host.uid, eb.host.uid)


@pytest.fixture
async def world(grid_factory: Any, tmp_path: Path) -> tuple[Volunteers, str, str]:
    """Volunteers on a relay-configured grid, and a job of alice's claimed by host alpha:
    (volunteers, the attempt, the input data uid)."""
    grid = await grid_factory(relays=RELAY)
    v = await Volunteers.enrol(grid)
    alice = await grid.add_user("alice")
    app, data = await _app(alice, tmp_path)
    job = await alice.submit(JobIn(app=app, inputs=[data], listen_ports=[8080], access_rights="0700"))
    assignment = await v.a.request_work(v.ha, wait=2)
    assert assignment is not None and assignment.job.uid == job.uid
    v.job = job.uid
    return v, assignment.attempt, data


async def test_the_host_itself_can_do_its_work(world: tuple[Volunteers, str, str], tmp_path: Path) -> None:
    v, attempt, data = world
    await v.a.fetch_job_file(v.ha, attempt, data, tmp_path / "got")
    assert (tmp_path / "got").read_text() == "secret input of the owner\n"
    ticket = await v.a.host_tunnels(v.ha, attempt)
    assert claims(v.grid, ticket.ticket)["sub"] == v.ha  # the relay knows the host, not the shared account
    beat = await v.a.heartbeat(v.ha, Heartbeat(running=[JobUsage(attempt=attempt)]))
    assert beat.kill == {}


async def test_another_host_of_the_same_account_cannot_act_for_it(
    world: tuple[Volunteers, str, str], tmp_path: Path
) -> None:
    v, attempt, data = world
    impostor = v.b
    impostor.use_host(v.ha, impostor.host_credential(v.hb) or "")  # its own credential on alpha's routes
    with pytest.raises(Forbidden, match=r"host .*'s, not host"):
        await impostor.fetch_job_file(v.ha, attempt, data, tmp_path / "stolen")
    assert not (tmp_path / "stolen").exists() or (tmp_path / "stolen").read_bytes() == b""
    with pytest.raises(Forbidden):
        await impostor.host_tunnels(v.ha, attempt)
    with pytest.raises(Forbidden):
        await impostor.report(v.ha, attempt, JobReport(outcome="failed", reason="forged"))
    forged = tmp_path / "forged.zip"
    forged.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    with pytest.raises(Forbidden):
        await impostor.upload_result(v.ha, attempt, forged, 0)
    with pytest.raises(Forbidden):
        await impostor.heartbeat(v.ha, Heartbeat(running=[]))
    # and through its own host it cannot reach alpha's attempt either
    with pytest.raises(Exception, match="not a current attempt of this host"):
        await impostor.fetch_job_file(v.hb, attempt, data, tmp_path / "stolen2")
    status = (await v.grid.admin.get_job(v.job)).status
    assert status is JobStatus.RUNNING


async def test_the_shared_account_only_enrols(world: tuple[Volunteers, str, str], tmp_path: Path) -> None:
    v, attempt, data = world
    account = v.account  # holds no host credential: speaks with the worker login's token
    forged = tmp_path / "forged.zip"
    forged.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: account.fetch_job_file(v.ha, attempt, data, tmp_path / "x"),
        lambda: account.host_tunnels(v.ha, attempt),
        lambda: account.heartbeat(v.ha, Heartbeat()),
        lambda: account.request_work(v.ha, 0),
        lambda: account.upload_result(v.ha, attempt, forged, 0),
    ]
    for call in calls:
        with pytest.raises(Forbidden, match="own credential"):
            await call()
    assert (await v.grid.admin.get_job(v.job)).status is JobStatus.RUNNING


async def test_a_host_credential_is_only_good_for_the_worker_protocol(
    world: tuple[Volunteers, str, str],
) -> None:
    v, _, _ = world
    cred = v.a.host_credential(v.ha)
    tls = ssl.create_default_context(cafile=str(v.grid.settings.ca_cert))
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=tls), headers={"Authorization": f"Bearer {cred}"}
    ) as http:
        async with http.get(f"{v.grid.url}/api/v1/ping") as resp:
            assert resp.status == 200
            assert (await resp.json())["auth"] == "host"
        for method, path in (("GET", "/jobs"), ("GET", "/data"), ("POST", "/apps"), ("GET", "/hosts")):
            async with http.request(method, f"{v.grid.url}/api/v1{path}", json={}) as resp:
                assert resp.status == 403, (method, path)
                assert "worker protocol" in (await resp.json())["detail"]


async def test_revoking_a_host_ends_its_credential_and_requeues_its_job(
    world: tuple[Volunteers, str, str],
) -> None:
    v, attempt, _ = world
    hosts = {h.uid: h for h in await v.grid.admin.hosts()}
    assert hosts[v.ha].credential == "active" and hosts[v.ha].credential_issued is not None
    revoked = await v.grid.admin.revoke_host(v.ha, "stolen laptop")
    assert revoked.credential == "revoked" and revoked.revoke_reason == "stolen laptop"
    with pytest.raises(Unauthorized, match="revoked"):
        await v.a.heartbeat(v.ha, Heartbeat())
    back = await v.grid.admin.get_job(v.job)
    assert back.status is JobStatus.PENDING and "revoked" in (back.status_reason or "")
    # re-enrolling with the dead credential does not bring it back
    with pytest.raises(Unauthorized, match="revoked"):
        await v.a.enrol(HostIn(name="alpha", **LINUX), credential=v.a.host_credential(v.ha))
    # the other host is untouched and takes the job
    again = await v.b.request_work(v.hb, wait=2)
    assert again is not None and again.job.uid == v.job and again.attempt != attempt


async def test_only_the_owner_or_an_administrator_revokes(grid: Any) -> None:
    v = await Volunteers.enrol(grid)
    mallory = await grid.add_user("mallory")
    with pytest.raises(Forbidden, match="only the owner"):  # a public host: readable, not hers
        await mallory.revoke_host(v.ha)
    carol = await grid.add_user("carol")
    private = await carol.enrol(HostIn(name="carols-pc", **LINUX))
    with pytest.raises(NotFound):  # a private worker: not even visible to others
        await mallory.revoke_host(private.host.uid)
    assert (await carol.revoke_host(private.host.uid)).credential == "revoked"
    assert [h.credential for h in await grid.admin.hosts() if h.uid == v.ha] == ["active"]


async def test_re_enrolling_with_the_credential_is_the_same_host(grid: Any) -> None:
    v = await Volunteers.enrol(grid)
    fresh = grid.client(grid.config(login="worker", password="correct horse battery"))
    again = await fresh.enrol(HostIn(name="alpha-renamed", **LINUX), credential=v.a.host_credential(v.ha))
    assert again.host.uid == v.ha and again.credential is None and again.host.name == "alpha-renamed"
    # without the credential the account enrols a new host, even under a name in use
    other = await fresh.enrol(HostIn(name="alpha-renamed", **LINUX))
    assert other.host.uid not in (v.ha, v.hb) and other.credential


async def test_a_wrong_or_forged_credential_is_refused(grid: Any) -> None:
    v = await Volunteers.enrol(grid)
    good = v.a.host_credential(v.ha) or ""
    for bad in (good[:-4] + "AAAA", f"xwh1.{v.ha}.short", "xwh1.not-a-uid.secretsecretsecretsecret"):
        v.b.use_host(v.ha, bad)
        with pytest.raises(Unauthorized):
            await v.b.heartbeat(v.ha, Heartbeat())


async def test_deleting_a_host_requeues_its_job(world: tuple[Volunteers, str, str]) -> None:
    v, _, _ = world
    await v.grid.admin.remove(v.ha)
    assert (await v.grid.admin.get_job(v.job)).status is JobStatus.PENDING
    with pytest.raises(Unauthorized):
        await v.a.heartbeat(v.ha, Heartbeat())
