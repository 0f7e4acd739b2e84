"""Host requests (``xwworker request``): anyone asks, an administrator decides, the requester collects once.

The rules are tested on ``server/hostrequests.py`` with a session of the running server (no HTTP, and a
clock passed in for expiry), then through the real API as the volunteer, an administrator and others.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from client.api import XWClient
from common.enums import UserRights
from common.errors import Conflict, Forbidden, NotFound, TooManyRequests, ValidationFailed
from common.rights import PRIVATE, PUBLIC
from common.schemas import HostIn, HostRequestIn
from server import hostcreds
from server import hostrequests as hr
from server.authz import Actor
from server.db.models import Event, Host, HostRequest, User, utcnow
from server.state import SERVICES

API = "/api/v1"
PROBLEM = "application/problem+json"
DESC = HostRequestIn(name="attic-pc", os="LINUX", cpu="AMD64", cores=4, memory=8 << 30, sandbox="bwrap")


def sessions(grid: Any) -> Any:
    return grid.server.runner.app[SERVICES].sessions


async def admin_actor(session: AsyncSession) -> Actor:
    admin = (await session.execute(select(User).where(User.login == "admin"))).scalar_one()
    return Actor(admin.uid, admin.login, UserRights.SUPER_USER, admin.usergroup_uid)


async def events(grid: Any, uid: str) -> list[str]:
    async with sessions(grid)() as session:
        rows = await session.execute(select(Event.action).where(Event.object_uid == uid).order_by(Event.id))
        return list(rows.scalars())


# --- the rules, without HTTP ------------------------------------------------------------------------


def test_codes_have_one_spelling() -> None:
    code = hr.new_code()
    assert len(code) == 9 and code[4] == "-" and set(code) - {"-"} <= set(hr.CODE_ALPHABET)
    assert hr.normal_code(" k7qf-2m9d ") == hr.normal_code("K7QF2M9D") == "K7QF2M9D"
    assert hr.normal_code("OIL0-1111") == "01101111"  # read aloud or copied by hand: one spelling
    assert hr.code_digest("k7qf-2m9d") == hr.code_digest("K7QF2M9D") != hr.code_digest("K7QF2M9E")


async def test_approved_request_delivers_a_host_once(grid: Any) -> None:
    await grid.add_user("worker", UserRights.WORKER_USER)
    async with sessions(grid)() as session, session.begin():
        ticket = await hr.create(session, DESC, "192.0.2.7")
    async with sessions(grid)() as session, session.begin():
        row = await session.get(HostRequest, ticket.uid)
        assert row is not None and row.status == hr.PENDING and row.address == "192.0.2.7"
        assert ticket.secret not in (row.secret_hash, row.code_hash) and ticket.code not in row.code_hash
        assert (await hr.poll(session, ticket.uid, ticket.secret)).status == "pending"
        admin = await admin_actor(session)
        with pytest.raises(Forbidden, match="wrong code"):
            await hr.approve(session, admin, ticket.uid, "AAAA-AAAA")
    async with sessions(grid)() as session, session.begin():
        done = await hr.approve(session, admin, ticket.uid, ticket.code.lower())
        assert (done.status, done.owner, done.decided_by) == ("approved", "worker", "admin")
    async with sessions(grid)() as session, session.begin():
        state = await hr.poll(session, ticket.uid, ticket.secret)
    assert state.status == "approved" and state.owner == "worker" and state.host and state.credential
    async with sessions(grid)() as session:
        host = await session.get(Host, state.host)
        worker = (await session.execute(select(User).where(User.login == "worker"))).scalar_one()
    assert host is not None and (host.name, host.cores, host.sandbox) == ("attic-pc", 4, "bwrap")
    assert host.owner_uid == worker.uid and host.access_rights == PUBLIC  # as the worker account enrols
    parsed = hostcreds.parse(state.credential)
    assert parsed is not None and parsed[0] == host.uid and hostcreds.matches(parsed[1], host.credential_hash)
    assert await events(grid, host.uid) == ["enrol"]
    assert await events(grid, ticket.uid) == ["request", "approve", "deliver"]
    async with sessions(grid)() as session, session.begin():
        with pytest.raises(Conflict, match="already answered"):
            await hr.poll(session, ticket.uid, ticket.secret)


async def test_owner_defaults_to_the_approver_without_a_worker_account(grid: Any) -> None:
    await grid.add_user("carol")  # a standard user: her host would be private
    async with sessions(grid)() as session, session.begin():
        first = await hr.create(session, DESC, "192.0.2.7")
        second = await hr.create(session, DESC, "192.0.2.7")
    async with sessions(grid)() as session, session.begin():
        admin = await admin_actor(session)
        assert (await hr.approve(session, admin, first.uid, first.code)).owner == "admin"
        assert (await hr.approve(session, admin, second.uid, second.code, "carol")).owner == "carol"
    async with sessions(grid)() as session, session.begin():
        hosts = [await hr.poll(session, t.uid, t.secret) for t in (first, second)]
        rights = [(await session.get(Host, s.host)).access_rights for s in hosts]  # type: ignore[union-attr]
    assert rights == [PUBLIC, PRIVATE]
    async with sessions(grid)() as session, session.begin():
        third = await hr.create(session, DESC, "192.0.2.7")
        with pytest.raises(ValidationFailed, match="no user 'nobody'"):
            await hr.approve(session, admin, third.uid, third.code, "nobody")


async def test_wrong_secret_learns_nothing_and_unknown_is_404(grid: Any) -> None:
    async with sessions(grid)() as session, session.begin():
        ticket = await hr.create(session, DESC, "192.0.2.7")
        admin = await admin_actor(session)
        await hr.deny(session, admin, ticket.uid, "not one of ours")
    async with sessions(grid)() as session, session.begin():
        with pytest.raises(Forbidden) as refused:
            await hr.poll(session, ticket.uid, "x" * 43)
        assert "denied" not in refused.value.reason and "ours" not in refused.value.reason
        with pytest.raises(NotFound):
            await hr.poll(session, "f87da0c4-2324-4cb2-8622-ef81e30525a7", ticket.secret)
        state = await hr.poll(session, ticket.uid, ticket.secret)
        assert (state.status, state.reason, state.credential) == ("denied", "not one of ours", None)
        with pytest.raises(Conflict, match="is denied"):
            await hr.approve(session, admin, ticket.uid, ticket.code)
    assert await events(grid, ticket.uid) == ["request", "deny"]


async def test_requests_expire(grid: Any) -> None:
    now = utcnow()
    async with sessions(grid)() as session, session.begin():
        old = await hr.create(session, DESC, "192.0.2.7", now=now - hr.LIFETIME - timedelta(seconds=1))
        fresh = await hr.create(session, DESC, "192.0.2.7", now=now)
        admin = await admin_actor(session)
        approved = await hr.create(session, DESC, "192.0.2.7", now=now)
        await hr.approve(session, admin, approved.uid, approved.code, now=now)
    async with sessions(grid)() as session:
        pending = await hr.listing(session, admin, hr.Listing(hr.PENDING, 0, 10))
        expired = await hr.listing(session, admin, hr.Listing(hr.EXPIRED, 0, 10))
    assert [r.uid for r in pending.items] == [fresh.uid] and pending.total == 1
    assert [r.uid for r in expired.items] == [old.uid] and expired.items[0].status == "expired"
    async with sessions(grid)() as session, session.begin():
        state = await hr.poll(session, old.uid, old.secret)
        assert state.status == "expired" and "no administrator decided" in (state.reason or "")
        with pytest.raises(Conflict, match="is expired"):
            await hr.approve(session, admin, old.uid, old.code)
        later = now + hr.COLLECT_WITHIN + timedelta(seconds=1)  # approved, never collected
        state = await hr.poll(session, approved.uid, approved.secret, now=later)
        assert state.status == "expired" and "not collected" in (state.reason or "")


async def test_pending_requests_are_capped(grid: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hr, "MAX_PENDING_PER_ADDRESS", 2)
    monkeypatch.setattr(hr, "MAX_PENDING", 3)
    async with sessions(grid)() as session, session.begin():
        a = await hr.create(session, DESC, "192.0.2.7")
        await hr.create(session, DESC, "192.0.2.7")
        with pytest.raises(TooManyRequests, match=r"from 192\.0\.2\.7") as refused:
            await hr.create(session, DESC, "192.0.2.7")
        assert refused.value.retry_after == hr.RETRY_AFTER
        await hr.create(session, DESC, "198.51.100.1")
        with pytest.raises(TooManyRequests, match="already wait for an administrator"):
            await hr.create(session, DESC, "198.51.100.2")
        await hr.deny(session, await admin_actor(session), a.uid)  # a decision frees its place
        await hr.create(session, DESC, "198.51.100.2")


async def test_only_administrators_decide(grid: Any) -> None:
    async with sessions(grid)() as session, session.begin():
        ticket = await hr.create(session, DESC, "192.0.2.7")
        alice = Actor("f87da0c4-2324-4cb2-8622-ef81e30525a7", "alice", UserRights.ADVANCED_USER, None)
        with pytest.raises(Forbidden, match="not an administrator"):
            await hr.approve(session, alice, ticket.uid, ticket.code)
        with pytest.raises(Forbidden):
            await hr.deny(session, alice, ticket.uid)
        with pytest.raises(Forbidden):
            await hr.listing(session, alice, hr.Listing(None, 0, 10))


# --- through the API ----------------------------------------------------------------------------------


@pytest.fixture
async def anonymous(grid: Any) -> AsyncIterator[aiohttp.ClientSession]:
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        yield session


async def test_volunteer_without_account_gets_a_working_credential(grid: Any) -> None:
    await grid.add_user("worker", UserRights.WORKER_USER)
    volunteer: XWClient = grid.client(grid.config())  # server and CA only: no login, no certificate
    ticket = await volunteer.request_host(DESC)
    assert (await volunteer.poll_host_request(ticket.uid, ticket.secret)).status == "pending"
    [listed] = await grid.admin.host_requests()
    assert (listed.uid, listed.name, listed.address, listed.status) == (
        ticket.uid,
        "attic-pc",
        "127.0.0.1",
        "pending",
    )
    assert (
        ticket.code not in listed.model_dump_json()
        and ticket.code.replace("-", "") not in listed.model_dump_json()
    )
    with pytest.raises(Forbidden, match="wrong code"):
        await grid.admin.approve_host_request(ticket.uid, "ZZZZ-ZZZZ")
    done = await grid.admin.approve_host_request(ticket.uid, ticket.code)
    assert (done.status, done.owner) == ("approved", "worker")
    state = await volunteer.poll_host_request(ticket.uid, ticket.secret)
    assert state.status == "approved" and state.host and state.credential
    with pytest.raises(Conflict, match="answered once"):
        await volunteer.poll_host_request(ticket.uid, ticket.secret)
    # the credential is the host's own: it enrols (starts) with it and is then alive
    enrolled = await volunteer.enrol(
        HostIn(name="attic-pc", os="LINUX", cpu="AMD64"), credential=state.credential
    )
    assert enrolled.host.uid == state.host and enrolled.host.alive and enrolled.credential is None
    assert [h.uid for h in await grid.admin.hosts()] == [state.host]
    assert [r.uid for r in await grid.admin.host_requests("delivered")] == [ticket.uid]
    assert await grid.admin.host_requests() == []


async def test_deny_reaches_the_requester(grid: Any) -> None:
    volunteer: XWClient = grid.client(grid.config())
    ticket = await volunteer.request_host(DESC)
    done = await grid.admin.deny_host_request(ticket.uid, "we only take lab machines")
    assert (done.status, done.reason, done.decided_by) == ("denied", "we only take lab machines", "admin")
    state = await volunteer.poll_host_request(ticket.uid, ticket.secret)
    assert (state.status, state.reason, state.credential) == ("denied", "we only take lab machines", None)
    with pytest.raises(Conflict):
        await grid.admin.deny_host_request(ticket.uid)
    assert await grid.admin.hosts() == []


async def test_others_are_refused(grid: Any) -> None:
    volunteer: XWClient = grid.client(grid.config())
    ticket = await volunteer.request_host(DESC)
    bob = await grid.add_user("bob", UserRights.ADVANCED_USER)
    for call in (
        bob.host_requests(),
        bob.approve_host_request(ticket.uid, ticket.code),
        bob.deny_host_request(ticket.uid),
    ):
        with pytest.raises(Forbidden, match="not an administrator"):
            await call
    with pytest.raises(Forbidden, match="not the secret"):
        await volunteer.poll_host_request(ticket.uid, "A" * 43)
    with pytest.raises(NotFound):
        await volunteer.poll_host_request("f87da0c4-2324-4cb2-8622-ef81e30525a7", ticket.secret)
    # a host credential is for the worker protocol only
    await grid.add_user("worker", UserRights.WORKER_USER)
    account = grid.client(grid.config(login="worker", password="correct horse battery"))
    enrolled = await account.enrol(HostIn(name="w", os="LINUX", cpu="AMD64"))
    with pytest.raises(Forbidden, match="only good for the worker protocol"):
        await _get_as(grid, enrolled.credential or "")
    assert [r.status for r in await grid.admin.host_requests()] == ["pending"]


async def _get_as(grid: Any, credential: str) -> None:
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        headers = {"Authorization": f"Bearer {credential}"}
        async with session.get(f"{grid.url}{API}/hosts/requests", headers=headers) as resp:
            assert resp.status == 403 and resp.content_type == PROBLEM
            raise Forbidden((await resp.json(content_type=None))["detail"])


BAD_INPUT = [
    ("POST", "/hosts/requests", b"{not json", 400),
    ("POST", "/hosts/requests", b'{"name": "a/b", "os": "LINUX", "cpu": "AMD64"}', 422),
    ("POST", "/hosts/requests", b'{"name": "a", "os": "LINUX", "cpu": "AMD64", "cores": 0}', 422),
    ("POST", "/hosts/requests", b'{"name": "a", "os": "LINUX", "cpu": "AMD64", "memory": 1e30}', 422),
    ("POST", "/hosts/requests", b'{"name": "a", "os": "LINUX", "cpu": "AMD64", "project": "p"}', 422),
    ("POST", "/hosts/requests", b'{"name": "a\\u0000", "os": "LINUX", "cpu": "AMD64"}', 422),
    ("POST", "/hosts/requests", b'{"name": "a", "os": "BEOS", "cpu": "AMD64"}', 422),
    ("POST", "/hosts/requests", b"x" * 2_000_000, 413),
    ("POST", "/hosts/requests/not-a-uid/poll", b'{"secret": "xxxxxxxxxxxxxxxxxxxx"}', 404),
    ("POST", "/hosts/requests/REQ/poll", b'{"secret": "short"}', 422),
    ("POST", "/hosts/requests/REQ/poll", b'{"secret": "' + b"x" * 200 + b'"}', 422),
    ("POST", "/hosts/requests/REQ/poll", b"[]", 422),
    ("POST", "/hosts/requests/REQ/approve", b'{"code": ""}', 422),
    ("POST", "/hosts/requests/REQ/approve", b'{"code": "' + b"A" * 40 + b'"}', 422),
    ("POST", "/hosts/requests/REQ/approve", b'{"code": "AAAA-AAAA", "owner": "../x"}', 422),
    ("POST", "/hosts/requests/REQ/deny", b'{"reason": "' + b"r" * 600 + b'"}', 422),
    ("GET", "/hosts/requests?status=maybe", b"", 422),
    ("GET", "/hosts/requests?limit=0", b"", 422),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), BAD_INPUT)
async def test_bad_input_is_a_4xx_problem(
    grid: Any, anonymous: aiohttp.ClientSession, method: str, path: str, body: bytes, status: int
) -> None:
    ticket = await grid.client(grid.config()).request_host(DESC)
    token = (await grid.admin.login("admin", grid.admin_cfg.password)).access_token
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    url = f"{grid.url}{API}{path.replace('REQ', ticket.uid)}"
    async with anonymous.request(method, url, data=body or None, headers=headers) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == PROBLEM


async def test_caps_answer_429_with_retry_after(
    grid: Any, anonymous: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hr, "MAX_PENDING_PER_ADDRESS", 2)
    volunteer: XWClient = grid.client(grid.config())
    for _ in range(2):
        await volunteer.request_host(DESC)
    body = DESC.model_dump_json()
    url = f"{grid.url}{API}/hosts/requests"
    async with anonymous.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 429 and resp.content_type == PROBLEM
        assert resp.headers["Retry-After"] == str(hr.RETRY_AFTER)
    with pytest.raises(TooManyRequests):
        await volunteer.request_host(DESC)
    assert len(await grid.admin.host_requests()) == 2
