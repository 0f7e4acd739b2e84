"""Relay tickets (docs/RELAY.md): who gets which scope, checked against the public key in DIR/jwt.pub.

No relay runs here: the tickets are verified the way a relay would, with joserfc and DIR/jwt.pub.
Jobs are run by driving the worker protocol by hand on an admin host (admin hosts run everyone's jobs).
"""

from __future__ import annotations

import asyncio
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import ExpiredTokenError
from joserfc.jwk import ECKey
from joserfc.jwt import JWTClaimsRegistry

from client.api import XWClient
from client.output import render
from common.enums import UserRights
from common.errors import Conflict, Forbidden, NotFound, ValidationFailed
from common.schemas import (
    AppIn,
    ForwardAddress,
    Heartbeat,
    HostIn,
    JobIn,
    JobOut,
    JobUsage,
    TunnelTicket,
    parse_tunnel_name,
)
from server.app import start
from server.settings import load_settings

RELAY = "127.0.0.1:4999"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh3aGVwLXJlbGF5LXRlc3Qta2V5LW5vdC1yZWFs relay"


def claims(grid: Any, ticket: str) -> dict[str, Any]:
    """The claims of a ticket, verified as the relay does: DIR/jwt.pub, ES256, iss, aud, exp."""
    key = ECKey.import_key((grid.home / "jwt.pub").read_bytes())
    decoded = jwt.decode(ticket, key, algorithms=["ES256"])
    registry = JWTClaimsRegistry(
        iss={"essential": True, "value": "xwhep"},
        aud={"essential": True, "value": "relay"},
        exp={"essential": True},
        jti={"essential": True},
    )
    registry.validate(decoded.claims)
    return dict(decoded.claims)


def scope(grid: Any, t: TunnelTicket) -> list[str]:
    return list(claims(grid, t.ticket)["scope"])


async def script_app(xw: XWClient, tmp_path: Path, name: str) -> str:
    script = tmp_path / f"{name}.sh"
    script.write_text("#!/bin/sh\nsleep 60\n")
    exe = await xw.send_file(script, access_rights="1700")
    app = await xw.send_app(
        AppIn(
            name=name,
            type="script",
            binaries=[{"os": "ANY", "cpu": "ANY", "data": exe.uid}],
            access_rights="0755",  # a job's rights are its own AND its app's
        )
    )
    return app.uid


class Runner:
    """An admin host that claims jobs on demand (the worker protocol by hand)."""

    def __init__(self, grid: Any) -> None:
        self.admin: XWClient = grid.admin
        self.host = ""
        self.attempts: dict[str, str] = {}  # job uid -> its attempt on this host

    def attempt(self, job: JobOut) -> str:
        """The attempt this host runs ``job`` as (a fresh uid, matching nothing, before it runs)."""
        return self.attempts.get(job.uid, str(uuid.uuid4()))

    async def enrol(self) -> Runner:
        self.host = (await self.admin.enrol(HostIn(name="h1", os="LINUX", cpu="AMD64"))).host.uid
        return self

    async def run(self, job: JobOut) -> JobOut:
        """Claim the oldest pending job, which must be ``job``; it is RUNNING afterwards."""
        assignment = await self.admin.request_work(self.host, wait=1)
        assert assignment is not None and assignment.job.uid == job.uid
        self.attempts[job.uid] = assignment.attempt
        running = await self.admin.get_job(job.uid)
        assert running.status.value == "RUNNING"
        return running


@pytest.fixture
async def relay_grid(grid_factory: Any) -> Any:
    return await grid_factory(relays=RELAY)


async def test_jwt_pub_is_written_and_verifies_tickets(relay_grid: Any, tmp_path: Path) -> None:
    pub = relay_grid.home / "jwt.pub"
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in pub.read_text()
    alice = await relay_grid.add_user("alice")
    t = await alice.create_proxy(3000)
    assert claims(relay_grid, t.ticket)["scope"] == ["link", f"publish:{t.name}"]
    other = ECKey.generate_key("P-256")  # a key that did not sign it
    with pytest.raises(Exception, match=r"(?i)signature"):
        jwt.decode(t.ticket, other, algorithms=["ES256"])


async def test_server_start_writes_jwt_pub_into_an_existing_home(grid: Any) -> None:
    pub = grid.home / "jwt.pub"
    pub.unlink()  # a home made before relays existed
    again = await start(replace(load_settings(grid.home), port=0), migrate=False)
    try:
        assert pub.stat().st_mode & 0o777 == 0o644
        private = ECKey.import_key((grid.home / "jwt.key").read_bytes())
        assert ECKey.import_key(pub.read_bytes()).as_pem(private=False) == private.as_pem(private=False)
    finally:
        await again.aclose()


async def test_reader_gets_a_connect_ticket_for_exactly_one_port(relay_grid: Any, tmp_path: Path) -> None:
    alice = await relay_grid.add_user("alice")
    bob = await relay_grid.add_user("bob")
    runner = await Runner(relay_grid).enrol()
    app = await script_app(alice, tmp_path, "srv")
    job = await alice.submit(JobIn(app=app, listen_ports=[8080, 9090], access_rights="0744"))
    assert job.proxy_addresses == []  # not running yet
    running = await runner.run(job)
    assert running.proxy_addresses == [f"job-{job.uid}-8080", f"job-{job.uid}-9090"]

    t = await bob.job_tunnel(job.uid, 8080)  # bob may read it (0744)
    assert t.relay == RELAY and t.host_key is None and t.refused == [] and t.id is None
    assert t.name == f"job-{job.uid}-8080"
    c = claims(relay_grid, t.ticket)
    assert c["scope"] == ["link", f"connect:job-{job.uid}-8080"]
    assert c["iss"] == "xwhep" and c["aud"] == "relay"
    assert parse_tunnel_name(t.name) == ("job", job.uid, 8080)

    mine = await alice.job_tunnel(job.uid, 9090)
    assert scope(relay_grid, mine) == ["link", f"connect:job-{job.uid}-9090"]


async def test_unreadable_job_is_not_found_and_gives_no_ticket(relay_grid: Any, tmp_path: Path) -> None:
    alice = await relay_grid.add_user("alice")
    bob = await relay_grid.add_user("bob")
    runner = await Runner(relay_grid).enrol()
    job = await alice.submit(JobIn(app=await script_app(alice, tmp_path, "srv"), listen_ports=[8080]))
    await runner.run(job)
    with pytest.raises(NotFound):
        await bob.job_tunnel(job.uid, 8080)
    with pytest.raises(NotFound):
        await bob.job_tunnel("00000000-0000-4000-8000-000000000000", 8080)


async def test_undeclared_port_is_422_and_pending_job_is_409(relay_grid: Any, tmp_path: Path) -> None:
    alice = await relay_grid.add_user("alice")
    job = await alice.submit(JobIn(app=await script_app(alice, tmp_path, "srv"), listen_ports=[8080]))
    with pytest.raises(ValidationFailed, match="does not listen on port 8081"):
        await alice.job_tunnel(job.uid, 8081)
    with pytest.raises(Conflict, match="PENDING") as err:
        await alice.job_tunnel(job.uid, 8080)
    assert err.value.status == 409
    with pytest.raises(ValidationFailed, match="listen ports"):
        await alice.job_tunnel(job.uid, 0)


async def test_no_relay_configured_is_409(grid: Any, tmp_path: Path) -> None:
    alice = await grid.add_user("alice")
    runner = await Runner(grid).enrol()
    job = await alice.submit(JobIn(app=await script_app(alice, tmp_path, "srv"), listen_ports=[8080]))
    await runner.run(job)
    with pytest.raises(Conflict, match="no relay configured on this grid") as err:
        await alice.job_tunnel(job.uid, 8080)
    assert err.value.status == 409
    with pytest.raises(Conflict, match="no relay configured on this grid"):
        await alice.create_proxy(3000)
    assert await alice.proxies() == []  # nothing recorded
    with pytest.raises(Conflict, match="no relay configured on this grid"):
        await runner.admin.host_tunnels(runner.host, runner.attempt(job))


async def test_worker_ticket_publishes_listen_ports_and_only_authorised_forwards(
    relay_grid: Any, tmp_path: Path
) -> None:
    alice = await relay_grid.add_user("alice")
    bob = await relay_grid.add_user("bob")
    runner = await Runner(relay_grid).enrol()
    app = await script_app(alice, tmp_path, "srv")
    bob_app = await script_app(bob, tmp_path, "bobsrv")
    mine = await alice.create_proxy(3000)
    theirs = await bob.create_proxy(4000)
    assert mine.id and mine.name == f"proxy-{mine.id}-3000"
    # targets that nobody runs now (expected elsewhere): connect scopes do not need them running
    readable = await alice.submit(JobIn(app=app, listen_ports=[5432], expected_host="elsewhere"))
    hidden = await bob.submit(JobIn(app=bob_app, listen_ports=[6379], expected_host="elsewhere"))
    forwards = [
        ForwardAddress(address=mine.name or "", port=1234),  # alice's proxy: yes
        ForwardAddress(address=(theirs.name or "").upper(), port=1235),  # bob's proxy: refused
        ForwardAddress(address=f"job-{readable.uid}-5432", port=1236),  # alice's job: yes
        ForwardAddress(address=f"job-{hidden.uid}-6379", port=1237),  # bob's private job: refused
        ForwardAddress(address=f"job-{readable.uid}-9999", port=1238),  # not a listen port: refused
        ForwardAddress(address=f"proxy-{mine.id}-3001", port=1239),  # wrong port of the proxy
        ForwardAddress(address="relay-1#a:3000@b", port=1240),  # not an address at all
    ]
    job = await alice.submit(JobIn(app=app, listen_ports=[8080, 8081], forward_addresses=forwards))

    # before it runs, nobody gets worker tickets for it
    with pytest.raises(Conflict):
        await runner.admin.host_tunnels(runner.host, runner.attempt(job))
    await runner.run(job)

    t = await runner.admin.host_tunnels(runner.host, runner.attempt(job))
    assert t.relay == RELAY and t.name is None and t.id is None
    assert scope(relay_grid, t) == [
        "link",
        f"publish:job-{job.uid}-8080",
        f"publish:job-{job.uid}-8081",
        f"connect:{mine.name}",
        f"connect:job-{readable.uid}-5432",
    ]
    refused = dict(r.split(": ", 1) for r in t.refused)
    assert list(refused) == [
        (theirs.name or "").upper(),
        f"job-{hidden.uid}-6379",
        f"job-{readable.uid}-9999",
        f"proxy-{mine.id}-3001",
        "relay-1#a:3000@b",
    ]
    assert "readable by the job's owner alice" in refused[(theirs.name or "").upper()]
    assert "does not listen on port 9999" in refused[f"job-{readable.uid}-9999"]
    assert "publishes port 3000, not 3001" in refused[f"proxy-{mine.id}-3001"]
    assert "not a job-<uid>-<port>" in refused["relay-1#a:3000@b"]

    # bob shares his proxy with everyone: the same job may now reach it (rights are checked per ticket)
    await bob.chmod(theirs.id or "", "0744")
    again = await runner.admin.host_tunnels(runner.host, runner.attempt(job))
    assert f"connect:{theirs.name}" in scope(relay_grid, again)
    assert len(again.refused) == 4


async def test_other_workers_get_no_publish_ticket(relay_grid: Any, tmp_path: Path) -> None:
    alice = await relay_grid.add_user("alice")
    worker = await relay_grid.add_user("w", UserRights.WORKER_USER)
    runner = await Runner(relay_grid).enrol()
    idle = (await worker.enrol(HostIn(name="w1", os="LINUX", cpu="AMD64"))).host.uid
    job = await alice.submit(JobIn(app=await script_app(alice, tmp_path, "srv"), listen_ports=[8080]))
    await runner.run(job)
    with pytest.raises(Conflict, match="not a current attempt of this host"):  # the job runs elsewhere
        await worker.host_tunnels(idle, runner.attempt(job))
    with pytest.raises(Forbidden):  # the admin's host is not its own
        await worker.host_tunnels(runner.host, runner.attempt(job))
    with pytest.raises(Forbidden):  # and a worker user cannot make proxies
        await worker.create_proxy(3000)


async def test_proxy_is_an_owned_object(relay_grid: Any, tmp_path: Path) -> None:
    alice = await relay_grid.add_user("alice")
    bob = await relay_grid.add_user("bob")
    t = await alice.create_proxy(8080)
    assert t.id is not None and t.name == f"proxy-{t.id}-8080" and t.refused == []
    assert scope(relay_grid, t) == ["link", f"publish:proxy-{t.id}-8080"]
    [p] = await alice.proxies()
    assert (p.uid, p.port, p.name, p.access_rights) == (t.id, 8080, t.name, "0700")
    assert await bob.proxies() == []
    assert (await alice.find(t.id)).kind == "proxy"
    with pytest.raises(NotFound):
        await bob.find(t.id)
    events = await alice.events(object_uid=t.id)
    assert [(e.kind, e.action) for e in events] == [("proxy", "create")]
    with pytest.raises(ValidationFailed):
        await alice.create_proxy(0)
    with pytest.raises(NotFound):
        await bob.remove(t.id)
    await alice.remove(t.id)
    assert await alice.proxies() == []


async def test_tickets_expire_per_ticket_ttl(grid_factory: Any, tmp_path: Path) -> None:
    g = await grid_factory(relays=RELAY, ticket_ttl=1)
    alice = await g.add_user("alice")
    t = await alice.create_proxy(3000)
    c = claims(g, t.ticket)
    assert c["exp"] - c["iat"] == 1
    assert c["exp"] <= time.time() + 1.5
    await asyncio.sleep(max(0.0, c["exp"] - time.time()) + 1.1)
    with pytest.raises(ExpiredTokenError):
        claims(g, t.ticket)


async def test_tickets_last_five_minutes_by_default(relay_grid: Any) -> None:
    assert relay_grid.settings.ticket_ttl == 300
    bob = await relay_grid.add_user("bob")
    c = claims(relay_grid, (await bob.create_proxy(3000)).ticket)
    assert c["exp"] - c["iat"] == 300


async def test_relay_choice_and_host_key(grid_factory: Any, tmp_path: Path) -> None:
    key_file = tmp_path / "relay_host_key.pub"
    key_file.write_text(HOST_KEY + "\n")
    relays = ["10.0.0.1:2222", "10.0.0.2:2222", "10.0.0.3:2222"]
    g = await grid_factory(relays=" , ".join(relays), relay_host_key=str(key_file))
    alice = await g.add_user("alice")
    runner = await Runner(g).enrol()
    job = await alice.submit(JobIn(app=await script_app(alice, tmp_path, "srv"), listen_ports=[8080, 8081]))
    await runner.run(job)
    publish = await runner.admin.host_tunnels(runner.host, runner.attempt(job))
    assert publish.host_key == HOST_KEY and publish.relay in relays
    for port in (8080, 8081):  # both ends of each tunnel meet on the same relay
        connect = await alice.job_tunnel(job.uid, port)
        assert connect.relay == publish.relay and connect.host_key == HOST_KEY
    chosen = {(await alice.create_proxy(3000 + i)).relay for i in range(12)}
    assert chosen <= set(relays) and len(chosen) > 1  # spread over the relays

    key_file.unlink()  # configured but unreadable: refused, not silently unpinned
    with pytest.raises(Conflict, match="relay host key"):
        await alice.job_tunnel(job.uid, 8080)


async def test_heartbeat_net_counters_show_on_the_job(relay_grid: Any, tmp_path: Path) -> None:
    alice = await relay_grid.add_user("alice")
    runner = await Runner(relay_grid).enrol()
    job = await alice.submit(JobIn(app=await script_app(alice, tmp_path, "srv"), listen_ports=[8080]))
    assert (job.net_in, job.net_out) == (0, 0)
    await runner.run(job)
    beat = Heartbeat(
        running=[JobUsage(attempt=runner.attempt(job), cpu_seconds=1.0, net_in=1000, net_out=250)]
    )
    assert (await runner.admin.heartbeat(runner.host, beat)).kill == {}
    seen = await alice.get_job(job.uid)
    assert (seen.net_in, seen.net_out) == (1000, 250)
    lower = Heartbeat(running=[JobUsage(attempt=runner.attempt(job), net_in=10, net_out=5000)])
    await runner.admin.heartbeat(runner.host, lower)
    seen = await alice.get_job(job.uid)
    assert (seen.net_in, seen.net_out) == (1000, 5000)  # never goes back
    assert [j.net_out for j in await alice.jobs()] == [5000]


async def test_xml_of_a_running_work_shows_listen_port_and_proxy_address(
    relay_grid: Any, tmp_path: Path
) -> None:
    alice = await relay_grid.add_user("alice")
    runner = await Runner(relay_grid).enrol()
    job = await alice.submit(JobIn(app=await script_app(alice, tmp_path, "srv"), listen_ports=[8080]))
    pending = ET.fromstring(render("work", [job], "xml").encode())[0]
    assert pending.attrib["listenport"] == "8080" and "proxyaddr" not in pending.attrib
    running = await runner.run(job)
    text = render("work", [running], "xml")
    assert ' listenport="8080"' in text and f' proxyaddr="job-{job.uid}-8080"' in text
    work = ET.fromstring(text.encode())[0]
    assert work.attrib["proxyaddr"] == f"job-{job.uid}-8080"
    assert work.attrib["netin"] == "0"
